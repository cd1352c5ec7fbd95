"""``ovseg train-clip``: adapt CLIP to masked crops (MPT, FT, MPT+FT) on mined pairs."""

from __future__ import annotations

from ovseg.cli._training import add_training_args, train_config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-clip",
        help="mask prompt tuning / fine-tuning of CLIP on mined mask-noun pairs",
        description="Train CLIP's mask prompts (mpt), its image tower (ft), or prompts on an "
        "FT checkpoint (mpt+ft) on pairs from `ovseg mine`. Paper defaults: AdamW, cosine, "
        "5 epochs, MPT lr 2e-2 wd 0, FT lr 5e-6 wd 0.2, global batch 256 (reach it with "
        "--batch-size x --accum-steps x processes). Multi-process: torchrun --nproc_per_node N "
        "-m ovseg train-clip ... An --out folder holding a checkpoint is resumed.",
    )
    parser.add_argument("--mode", required=True, choices=["mpt", "ft", "mpt+ft"])
    parser.add_argument(
        "--pairs", required=True, help="mining output folder (pairs.jsonl + shards)"
    )
    parser.add_argument("--init", required=True, help="starting model (.safetensors, ovseg format)")
    parser.add_argument("--prompt-depth", type=int, default=None,
                        help="deep prompt depth for MPT (default: the model's, 3)")  # fmt: skip
    add_training_args(parser, {"batch_size": 32, "epochs": 5.0, "schedule": "cosine"})
    parser.set_defaults(func=run)


def run(args) -> int:
    from ovseg.train.clip_adaptation import RECIPES, train_clip

    config = train_config_from_args(args, RECIPES[args.mode])
    train_clip(args.pairs, args.init, args.mode, config, prompt_depth=args.prompt_depth)
    return 0
