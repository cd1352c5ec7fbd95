"""``ovseg train-clip``: adapt CLIP to masked crops (MPT, FT, MPT+FT) on mined pairs."""

from __future__ import annotations

import json
import os

from ovseg.cli._training import add_training_args, train_config_from_args

RECIPE_NAMES = ("mpt-vitL14", "mpt-vitB16", "ft-vitL14", "ft-vitB16",
                "mpt+ft-vitL14", "mpt+ft-vitB16")  # fmt: skip


# (flag, choices, default, help): the official value first; None means the recipe's
VARIANTS = (
    ("--loss", ["contrastive", "vocabulary-ce"], None,
     "vocabulary-ce: cross-entropy over every noun of the pairs folder instead of the "
     "official in-batch contrastive loss"),
    ("--logit-scale", ["learned", "fixed-100"], None,
     "fixed-100: a constant 100 (as inference) instead of CLIP's learned, clamped logit scale"),
    ("--text", ["raw", "vild-templates"], None,
     "vild-templates: the 14 ViLD templates instead of the raw noun"),
    ("--augment", ["official", "none"], "official",
     "none: the stored crops, no random resized crop"),
    ("--mask-rule", ["official", "nearest"], None,
     "nearest: resample the stored mask with nearest neighbour instead of the official "
     "'pixels that differ from the fill' rule"),
    ("--decay", ["official", "uniform"], None,
     "uniform: weight decay on every tensor, not only matrices"),
)  # fmt: skip


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-clip",
        help="mask prompt tuning / fine-tuning of CLIP on mined mask-noun pairs",
        description="Train CLIP's mask prompts (mpt), its image tower (ft), or prompts on an "
        "FT checkpoint (mpt+ft) on pairs from `ovseg mine`, with the official ov-seg recipe "
        "(--recipe; default: the mode's recipe for the init's CLIP, ViT-B/16 or ViT-L/14). "
        "--print-recipe shows every value and its source. The recipe's batch is the official "
        "global batch (per GPU x 4 GPUs), split over the processes. Multi-process: torchrun "
        "--nproc_per_node N -m ovseg train-clip ... An --out folder holding a checkpoint is "
        "resumed.",
    )
    parser.add_argument("--mode", choices=["mpt", "ft", "mpt+ft"],
                        help="what trains (default: the recipe's mode)")  # fmt: skip
    parser.add_argument("--recipe", choices=RECIPE_NAMES, default=None,
                        help="official recipe (default: MODE-vitB16 for a patch-16 CLIP, "
                        "else MODE-vitL14)")  # fmt: skip
    parser.add_argument("--print-recipe", action="store_true",
                        help="print the recipe's values (JSON) and exit")  # fmt: skip
    parser.add_argument("--pairs", help="mining output folder (pairs.jsonl + shards)")
    parser.add_argument("--init", help="starting model (.safetensors, ovseg format)")
    parser.add_argument("--prompt-depth", type=int, default=None,
                        help="deep prompt depth for MPT (default: the recipe's, 3)")  # fmt: skip
    v = parser.add_argument_group("departures from the official recipe (our variants)")
    for flag, choices, default, text in VARIANTS:
        v.add_argument(flag, choices=choices, default=default, help=text)
    v.add_argument("--adam-betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
                   help="AdamW betas (recipe: 0.9 0.98; torch's default: 0.9 0.999)")  # fmt: skip
    v.add_argument("--adam-eps", type=float, default=None,
                   help="AdamW eps (recipe: 1e-6; torch's default: 1e-8)")  # fmt: skip
    none = {"batch_size": None, "epochs": None, "schedule": None, "warmup_steps": None}
    add_training_args(parser, none)  # None: the recipe's value
    parser.set_defaults(func=run)


def resolve_recipe(args):
    """The recipe named by --recipe, or the mode's for the init's CLIP."""
    from ovseg.train.clip_recipes import default_recipe, get_recipe

    if args.recipe:
        recipe = get_recipe(args.recipe)
        if args.mode and args.mode != recipe.mode:
            raise SystemExit(f"--mode {args.mode} contradicts --recipe {args.recipe}")
        return recipe
    if not args.mode:
        raise SystemExit("give --mode or --recipe")
    patch = 14
    if args.init:
        from ovseg.weights.checkpoints import read_metadata

        config = json.loads(read_metadata(args.init).get("config", "{}"))
        patch = config.get("clip", {}).get("patch_size", 14)
    return get_recipe(default_recipe(args.mode, patch))


def recipe_groups(recipe, init: str) -> dict:
    """{group: {"weight_decay", "names"}} of the recipe's optimizer groups for ``init``."""
    from ovseg.train.clip_adaptation import prepare_for_mode
    from ovseg.train.clip_recipes import official_param_groups
    from ovseg.weights.checkpoints import load_checkpoint

    model = load_checkpoint(init)
    learned = recipe.logit_scale == "learned"
    prepare_for_mode(model, recipe.mode, recipe.prompt_depth or None, train_logit_scale=learned)
    clip = model.clip_adapter.clip_model
    groups = official_param_groups(clip, recipe.weight_decay, recipe.mask_weight_decay)
    return {g["group"]: {"weight_decay": g["weight_decay"], "names": g["names"]} for g in groups}


def run(args) -> int:
    from dataclasses import replace

    from ovseg.train.clip_adaptation import ClipOptions, train_clip

    recipe = resolve_recipe(args)
    if args.print_recipe:
        shown = recipe.describe()
        if args.init:  # the groups of this model, name by name
            shown["param_groups"] = recipe_groups(recipe, args.init)
        print(json.dumps(shown, indent=1))
        return 0
    missing = [f"--{n}" for n in ("pairs", "init", "out") if not getattr(args, n)]
    if missing:
        raise SystemExit(f"train-clip needs {', '.join(missing)}")
    overrides = {
        k: getattr(args, a)
        for k, a in (
            ("loss", "loss"),
            ("logit_scale", "logit_scale"),
            ("text", "text"),
            ("decay", "decay"),
            ("prompt_depth", "prompt_depth"),
        )  # fmt: skip
        if getattr(args, a) is not None
    }
    options = ClipOptions.from_recipe(recipe, **overrides)
    if args.augment == "none":
        options = replace(options, augment=None)
    elif args.mask_rule:
        options = replace(options, augment=replace(options.augment, mask_rule=args.mask_rule))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size is None:
        if recipe.global_batch % world:
            raise SystemExit(
                f"the recipe's global batch {recipe.global_batch} does not split over {world} "
                "processes; pass --batch-size"
            )
        args.batch_size = recipe.global_batch // world
    for name, value in (("epochs", recipe.epochs), ("schedule", recipe.schedule),
                        ("warmup_steps", recipe.warmup_steps)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, value)
    config = train_config_from_args(args, {"lr": recipe.lr, "weight_decay": recipe.weight_decay})
    config.adam_betas = tuple(args.adam_betas or recipe.adam_betas)
    config.adam_eps = recipe.adam_eps if args.adam_eps is None else args.adam_eps
    config.warmup_mode = "open_clip"  # official warmup: lr * (step + 1) / warmup_steps
    train_clip(args.pairs, args.init, recipe.mode, config, options)
    return 0
