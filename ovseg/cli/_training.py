"""Options shared by ``ovseg train-clip`` and ``ovseg train-proposals``."""

from __future__ import annotations

import argparse


def add_training_args(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Loop options; ``defaults`` fills in the recipe of the command (lr, schedule, ...)."""
    g = parser.add_argument_group("training loop")
    # required for training; each command checks it in run(), since --print-recipe needs none
    g.add_argument("--out", help="run folder: logs, checkpoints, model.safetensors (required)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=defaults.get("batch_size", 8),
        help="per process, per micro-step (global = this x accum x processes)",
    )
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation micro-steps")
    g.add_argument("--epochs", type=float, default=defaults.get("epochs", 1.0))
    g.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps to train (overrides --epochs)"
    )
    g.add_argument("--lr", type=float, default=None, help="base learning rate (default: recipe)")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="AdamW weight decay (default: recipe)"
    )
    g.add_argument(
        "--schedule",
        choices=["cosine", "poly", "constant"],
        default=defaults.get("schedule", "cosine"),
    )
    g.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 0))
    g.add_argument("--grad-clip", type=float, default=defaults.get("grad_clip"))
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 autocast on CPU, fp16 AMP on CUDA",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--checkpoint-every", type=int, default=200)
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    # fmt: skip


def train_config_from_args(args: argparse.Namespace, recipe: dict, eval_every: int = 0):
    """A ``TrainConfig`` from the parsed options, recipe values where none was given."""
    from ovseg.train.trainer import TrainConfig

    return TrainConfig(
        out_dir=args.out,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=recipe["lr"] if args.lr is None else args.lr,
        weight_decay=recipe["weight_decay"] if args.weight_decay is None else args.weight_decay,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        num_workers=args.num_workers,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        eval_every=eval_every,
        progress=not args.no_progress,
    )
