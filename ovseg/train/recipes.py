"""The official proposal-model training recipes, as data.

Each recipe maps a setting to ``(value, source)``. The source is the official config key
it comes from (``SOLVER.BASE_LR``, read from ``configs/<file>.yaml`` of ov-seg 36f49d49, on
top of the defaults of ``add_deeplab_config`` + ``add_ovseg_config``), or ``code: ...``
naming the official code that fixes it. ``tests/test_train_recipes.py`` checks every
config-sourced value against the official configs.

``ovseg train-proposals --recipe NAME`` trains with these values; any option given on the
command line overrides its value (``--print-recipe`` shows which).
"""

from __future__ import annotations

SWIN_MIN_SIZES = [int(x * 0.1 * 640) for x in range(5, 21)]  # the YAML's eval expression

_COMMON = {
    "dataset": ("coco-stuff-171", "DATASETS.TRAIN = coco_2017_train_stuff_sem_seg"),
    "global_batch": (32, "SOLVER.IMS_PER_BATCH"),
    "max_steps": (120000, "SOLVER.MAX_ITER"),
    "schedule": ("poly", "SOLVER.LR_SCHEDULER_NAME = WarmupPolyLR"),
    "poly_power": (0.9, "SOLVER.POLY_LR_POWER"),
    "warmup_steps": (1500, "SOLVER.WARMUP_ITERS"),
    "warmup_factor": (1e-6, "SOLVER.WARMUP_FACTOR"),
    "weight_decay_norm": (0.0, "SOLVER.WEIGHT_DECAY_NORM"),
    "weight_decay_embed": (0.0, "SOLVER.WEIGHT_DECAY_EMBED"),
    "grad_clip": (0.01, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE (CLIP_TYPE full_model)"),
    "adam_betas": ((0.9, 0.999), "code: train_net.py builds torch.optim.AdamW(params, BASE_LR)"),
    "adam_eps": (1e-8, "code: train_net.py (torch.optim.AdamW default)"),
    "deep_supervision": (True, "MODEL.MASK_FORMER.DEEP_SUPERVISION"),
    "no_object_weight": (0.1, "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT"),
    "class_weight": (1.0, "code: mask_former_model.py (weight_dict loss_ce = 1)"),
    "mask_weight": (20.0, "MODEL.MASK_FORMER.MASK_WEIGHT"),
    "dice_weight": (1.0, "MODEL.MASK_FORMER.DICE_WEIGHT"),
    "mask_loss_resolution": ("image", "code: criterion.py loss_masks upsamples predictions"),
    "min_size_sampling": ("choice", "INPUT.MIN_SIZE_TRAIN_SAMPLING"),
    "single_category_max_area": (1.0, "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA"),
    "color_aug_ssd": (True, "INPUT.COLOR_AUG_SSD"),
    "flip": ("horizontal", "INPUT.RANDOM_FLIP"),
    "image_pad_value": (128, "code: mask_former_semantic_dataset_mapper.py F.pad(value=128)"),
    "label_pad_value": (255, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE"),
}

PROPOSAL_RECIPES: dict[str, dict[str, tuple]] = {
    "swinB-coco-stuff": {
        "config": ("ovseg_swinB_vitL_bs32_120k.yaml", "configs/"),
        "model": ("ovseg-swinB-vitL14", "MODEL.BACKBONE.NAME = D2SwinTransformer, ViT-L/14"),
        **_COMMON,
        "lr": (6e-5, "SOLVER.BASE_LR"),
        "weight_decay": (0.01, "SOLVER.WEIGHT_DECAY"),
        "backbone_lr_mult": (1.0, "SOLVER.BACKBONE_MULTIPLIER"),
        "freeze_at": (0, "MODEL.BACKBONE.FREEZE_AT"),
        "drop_path_rate": (0.3, "MODEL.SWIN.DROP_PATH_RATE"),
        "min_size_train": (SWIN_MIN_SIZES, "INPUT.MIN_SIZE_TRAIN"),
        "max_size_train": (2560, "INPUT.MAX_SIZE_TRAIN"),
        "crop": (640, "INPUT.CROP.SIZE"),
        "pad_to": (640, "INPUT.SIZE_DIVISIBILITY"),
    },
    "R101c-coco-stuff": {
        "config": ("ovseg_R101c_vitB_bs32_120k.yaml", "configs/"),
        "model": ("ovseg-R101c-vitB16", "MODEL.BACKBONE.NAME = build_resnet_deeplab_backbone"),
        **_COMMON,
        "lr": (2e-4, "SOLVER.BASE_LR"),
        "weight_decay": (1e-4, "SOLVER.WEIGHT_DECAY"),
        "backbone_lr_mult": (0.1, "SOLVER.BACKBONE_MULTIPLIER"),
        "freeze_at": (2, "MODEL.BACKBONE.FREEZE_AT"),
        "drop_path_rate": (0.0, "code: no stochastic depth in the ResNet"),
        "min_size_train": ([800], "INPUT.MIN_SIZE_TRAIN"),
        "max_size_train": (1333, "INPUT.MAX_SIZE_TRAIN"),
        "crop": (512, "INPUT.CROP.SIZE"),
        "pad_to": (512, "INPUT.SIZE_DIVISIBILITY"),
    },
}


def get_recipe(name: str) -> dict:
    """``{setting: value}`` of the named recipe."""
    if name not in PROPOSAL_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {list(PROPOSAL_RECIPES)}")
    return {k: v for k, (v, _) in PROPOSAL_RECIPES[name].items()}


def format_recipe(recipe: dict, overrides: dict | None = None) -> str:
    """One line per setting: ``name = value  [source]``; ``overrides`` (setting -> value)
    are shown as ``value (recipe: old)  [changed on the command line]``."""
    overrides = overrides or {}
    width = max(len(k) for k in recipe)
    lines = []
    for key, (value, source) in recipe.items():
        if key in overrides and overrides[key] != value:
            text = f"{overrides[key]!r} (recipe: {value!r})"
            source = "changed on the command line"
        else:
            text = repr(value)
        lines.append(f"{key:<{width}} = {text}  [{source}]")
    return "\n".join(lines)
