"""``ovseg train-proposals``: train the proposal model with MaskFormer's set criterion."""

from __future__ import annotations

import json
import os

from ovseg.cli._training import add_training_args

# option dest -> recipe setting (options left unset keep the recipe's value)
RECIPE_OPTIONS = {
    "dataset": "dataset", "crop": "crop", "min_size_train": "min_size_train",
    "max_size_train": "max_size_train", "single_category_max_area": "single_category_max_area",
    "color_aug_ssd": "color_aug_ssd", "flip": "flip", "pad_to": "pad_to",
    "freeze_at": "freeze_at", "drop_path_rate": "drop_path_rate",
    "backbone_lr_mult": "backbone_lr_mult", "weight_decay_norm": "weight_decay_norm",
    "weight_decay_embed": "weight_decay_embed", "deep_supervision": "deep_supervision",
    "no_object_weight": "no_object_weight", "mask_weight": "mask_weight",
    "dice_weight": "dice_weight", "class_weight": "class_weight",
    "mask_loss_resolution": "mask_loss_resolution", "augment": "augment",
    "short_side": "short_side", "scale_range": "scale_range",
    "lr": "lr", "weight_decay": "weight_decay", "schedule": "schedule",
    "warmup_steps": "warmup_steps", "warmup_factor": "warmup_factor", "grad_clip": "grad_clip",
    "max_steps": "max_steps",
}  # fmt: skip


# TrainConfig fields taken from the options as they are
LOOP_ARGS = ("precision", "device", "seed", "num_workers", "log_every", "checkpoint_every",
             "keep_checkpoints", "eval_every")  # fmt: skip


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ValueError(f"--set takes KEY=VALUE (VALUE in JSON), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers) -> None:
    from ovseg.train.recipes import PROPOSAL_RECIPES

    parser = subparsers.add_parser(
        "train-proposals",
        help="train the proposal model (MaskFormer set loss) on a semantic-segmentation set",
        description="Train backbone, pixel decoder and open-vocabulary decoder with Hungarian "
        "matching, CE (down-weighted no-object), focal and dice losses; classes are CLIP text "
        "embeddings of the dataset's names. Every setting comes from --recipe (the official "
        "configs; --print-recipe lists them with their sources) unless given here. Data: any "
        "`ovseg eval` reader (--dataset NAME), or a folder with classes.txt and "
        "{train,val}/{images,labels} index PNGs (255 ignore). "
        "Multi-process: torchrun --nproc_per_node N -m ovseg train-proposals ...",
    )
    parser.add_argument(
        "--recipe",
        choices=list(PROPOSAL_RECIPES),
        default="swinB-coco-stuff",
        help="official recipe the defaults come from (default %(default)s)",
    )
    parser.add_argument(
        "--print-recipe", action="store_true", help="print every setting and its source, exit"
    )
    parser.add_argument("--data", help="dataset root")
    parser.add_argument(
        "--dataset",
        help="reader: a name of `ovseg eval` (coco-stuff-171, camvid, ade20k-150, ...) or "
        "'folder' (ROOT/classes.txt + ROOT/{train,val}/{images,labels}, any names)",
    )
    start = parser.add_argument_group("starting model (default: the recipe's, from scratch)")
    start.add_argument("--model", help="architecture to train from scratch, e.g. ovseg-test-tiny")
    start.add_argument("--init", help="ovseg .safetensors checkpoint to continue from")
    start.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="OVSegConfig override with --model, e.g. --set num_queries=50",
    )
    start.add_argument(
        "--clip-weights",
        help="CLIP for the text side: OpenAI/OpenCLIP weights, or an ovseg .safetensors "
        "checkpoint whose CLIP is copied",
    )
    aug = parser.add_argument_group("augmentation (default: the recipe's)")
    aug.add_argument("--crop", type=int, help="square crop (INPUT.CROP.SIZE)")
    aug.add_argument(
        "--min-size-train", type=int, nargs="+", help="short-side choices (INPUT.MIN_SIZE_TRAIN)"
    )
    aug.add_argument("--max-size-train", type=int, help="long-side limit (INPUT.MAX_SIZE_TRAIN)")
    aug.add_argument("--single-category-max-area", type=float)
    aug.add_argument(
        "--no-color-aug", dest="color_aug_ssd", action="store_const", const=False,
        help="no ColorAugSSD (INPUT.COLOR_AUG_SSD False)",
    )  # fmt: skip
    aug.add_argument("--flip", choices=["horizontal", "none"])
    aug.add_argument(
        "--pad-to",
        type=int,
        help="pad to exactly this size (SIZE_DIVISIBILITY; default: the crop size, as in the "
        "official configs)",
    )
    aug.add_argument(
        "--augment",
        choices=["official", "simple-scale"],
        help="simple-scale: our variant, short side x U(--scale-range), no size limit, no "
        "colour augmentation",
    )
    aug.add_argument("--short-side", type=int, help="simple-scale: short side before scaling")
    aug.add_argument("--scale-range", type=float, nargs=2, help="simple-scale: scale range")
    loss = parser.add_argument_group("loss and parameters (default: the recipe's)")
    loss.add_argument(
        "--no-deep-supervision", dest="deep_supervision", action="store_const", const=False
    )
    for flag in ("--no-object-weight", "--mask-weight", "--dice-weight", "--class-weight"):
        loss.add_argument(flag, type=float)
    loss.add_argument(
        "--mask-loss-resolution",
        choices=["image", "quarter"],
        help="image: official (predictions upsampled to the padded image); quarter: our "
        "cheaper variant (targets downsampled to the 1/4 mask logits)",
    )
    loss.add_argument("--backbone-lr-mult", type=float, help="SOLVER.BACKBONE_MULTIPLIER")
    loss.add_argument("--weight-decay-norm", type=float, help="SOLVER.WEIGHT_DECAY_NORM")
    loss.add_argument("--weight-decay-embed", type=float, help="SOLVER.WEIGHT_DECAY_EMBED")
    loss.add_argument("--freeze-at", type=int, help="ResNet stages frozen (FREEZE_AT)")
    loss.add_argument("--drop-path-rate", type=float, help="Swin stochastic depth")
    loss.add_argument("--warmup-factor", type=float, help="SOLVER.WARMUP_FACTOR")
    ev = parser.add_argument_group("validation (oracle mIoU, mask recall, mIoU on ROOT/val)")
    ev.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: none)")
    ev.add_argument("--eval-images", type=int, default=None, help="first N val images (all)")
    ev.add_argument("--eval-short-side", type=int, default=256)
    # None: the recipe's value (global batch / processes, max steps, lr, schedule, clipping)
    add_training_args(
        parser,
        {"batch_size": None, "epochs": None, "schedule": None, "warmup_steps": None},
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from ovseg.train.proposal_training import recipe_train_config, resolve_settings
    from ovseg.train.recipes import PROPOSAL_RECIPES, format_recipe

    given = {s: getattr(args, d) for d, s in RECIPE_OPTIONS.items() if getattr(args, d, None) is not None}  # fmt: skip
    if args.epochs is not None and args.max_steps is None:
        given["max_steps"] = None  # train by epochs
    if args.model or args.init:
        given["model"] = args.model or f"init:{args.init}"
    settings = resolve_settings(args.recipe, **{k: v for k, v in given.items() if k != "model"})
    given["pad_to"] = settings["pad_to"]  # follows --crop unless given (shown as changed)
    main = os.environ.get("RANK", "0") == "0"
    table = PROPOSAL_RECIPES[args.recipe] | {
        k: (v, "ours: --augment simple-scale") for k, v in settings.items()
        if k not in PROPOSAL_RECIPES[args.recipe]
    }  # fmt: skip
    if args.print_recipe:
        print(format_recipe(table, given))
        return 0
    if not args.out or not args.data:
        raise ValueError("--out and --data are required (except with --print-recipe)")
    if main:
        print(f"recipe {args.recipe}:\n{format_recipe(table, given)}", flush=True)
    settings["max_steps"] = args.max_steps if "max_steps" in given else settings["max_steps"]
    config = recipe_train_config(
        settings,
        args.out,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        accum_steps=args.accum_steps,
        batch_size=args.batch_size,
        epochs=args.epochs,
        progress=not args.no_progress,
        **{k: getattr(args, k) for k in LOOP_ARGS},
    )
    from ovseg.train.proposal_training import train_proposals

    path = train_proposals(
        args.data,
        config,
        recipe=args.recipe,
        model_name=args.model,
        init=args.init,
        overrides=dict(_override(s) for s in args.set),
        clip_weights=args.clip_weights,
        eval_images=args.eval_images,
        eval_short_side=args.eval_short_side,
        **{k: v for k, v in given.items() if k not in ("model", "max_steps")},
    )
    if main:
        print(json.dumps({"model": str(path)}))
    return 0
