"""The official CLIP-adaptation recipes (MPT, FT, MPT+FT) as data, and the official
weight-decay rule.

Every value cites where the official release sets it. Paths are relative to
``open_clip_training/`` of facebookresearch/ov-seg (commit 36f49d49):

- ``FT_L``: ``src/scripts/coco_proposal_1cap_finetune_VitL.sh``
- ``FT_B``: ``src/scripts/coco_proposal_1cap_finetune_VitB.sh``
- ``MPT_L``: ``src/scripts/coco_proposal_1cap_mask_prompt_tuning_VitL.sh``
- ``PARAMS``: ``src/training/params.py`` (defaults, ``get_default_params`` for ViTs)
- ``MAIN``: ``src/training/main.py`` / ``main_mask_prompt_tuning.py`` (optimizer, groups)
- ``TRAIN``: ``src/training/train.py`` (loss, logit-scale clamp)
- ``SCHED``: ``src/training/scheduler.py``; ``TRANSFORM``: ``src/open_clip/transform.py``
- ``DATA``: ``src/training/data.py`` (``CsvDataset``: the raw caption is tokenized)
- ``MODEL``: ``src/open_clip/model.py`` (``lock_image_tower``, ``loc_text_tower``)

The official MPT script starts from an FT checkpoint (its ``--pretrained`` is an FT run's
``epoch_5.pt``; README: "after you obtain the finetuned CLIP ... additional mask prompt
tuning"), so it is the recipe of ``mpt+ft``; ``mpt`` uses the same values from the original
CLIP. There is no official ViT-B/16 MPT script: ``mpt-vitB16`` / ``mpt+ft-vitB16`` take the
ViT-L/14 MPT script's values (marked "inferred").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

# substrings of a parameter name that exclude it from weight decay (MAIN: ``exclude``)
NO_DECAY_SUBSTRINGS = ("bn", "ln", "bias", "logit_scale")
NO_DECAY_RULE = "ndim < 2 or name contains 'bn', 'ln', 'bias' or 'logit_scale'"
LOGIT_SCALE_MAX = math.log(100)  # TRAIN: logit_scale.clamp_(0, ln 100) after every step


def no_decay(name: str, param: nn.Parameter) -> bool:
    """The official rule: no weight decay for gains, biases, 1-d tensors and the logit scale.

    ``name`` is relative to the open_clip ``CLIP`` model (``visual.ln_pre.weight``, ...).
    """
    return param.ndim < 2 or any(s in name for s in NO_DECAY_SUBSTRINGS)


def official_param_groups(clip: nn.Module, weight_decay: float, mask_weight_decay: float):
    """AdamW groups of the trainable CLIP parameters, as MAIN builds them.

    Returns ``[no-decay (wd 0), mask prompts (mask_weight_decay), rest (weight_decay)]``,
    empty groups left out. Each group carries ``names`` (for inspection) and its own
    ``weight_decay``. In the official MPT, ``mask_embedding`` is its own group with
    ``--mask_wd``; its "multi" lr multiplier is never read by the scheduler, so all groups
    share one lr.
    """
    groups = {"no_decay": [], "mask_prompts": [], "decay": []}
    for name, p in clip.named_parameters():
        if not p.requires_grad:
            continue
        if no_decay(name, p):
            groups["no_decay"].append((name, p))
        elif "mask_embedding" in name:
            groups["mask_prompts"].append((name, p))
        else:
            groups["decay"].append((name, p))
    decay = {"no_decay": 0.0, "mask_prompts": mask_weight_decay, "decay": weight_decay}
    return [
        {
            "params": [p for _, p in items],
            "names": [n for n, _ in items],
            "weight_decay": decay[key],
            "group": key,
        }
        for key, items in groups.items()
        if items
    ]


def uniform_param_groups(clip: nn.Module, weight_decay: float):
    """Our earlier variant: one group, the same weight decay on every trainable tensor."""
    items = [(n, p) for n, p in clip.named_parameters() if p.requires_grad]
    return [
        {
            "params": [p for _, p in items],
            "names": [n for n, _ in items],
            "weight_decay": weight_decay,
            "group": "all",
        }
    ]


@dataclass(frozen=True)
class ClipRecipe:
    """One official recipe; ``sources`` names where each value comes from."""

    name: str
    mode: str
    model: str
    lr: float
    weight_decay: float
    mask_weight_decay: float
    adam_betas: tuple[float, float]
    adam_eps: float
    warmup_steps: int
    schedule: str
    epochs: float
    batch_per_gpu: int
    gpus: int
    image_size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    interpolation: str
    mask_rule: str
    loss: str
    logit_scale: str
    text: str
    prompt_depth: int
    trains: str
    frozen: str
    decay: str
    precision: str
    init: str
    sources: dict = field(default_factory=dict, compare=False)

    @property
    def global_batch(self) -> int:
        """Contrastive batch: the official loss gathers the features of every GPU."""
        return self.batch_per_gpu * self.gpus

    def describe(self) -> dict:
        """Every value (and the derived ones), for ``--print-recipe``."""
        out = asdict(self)
        sources = out.pop("sources")
        out["global_batch"] = self.global_batch
        out["warmup"] = (
            f"linear: lr * (step + 1) / {self.warmup_steps} for step < {self.warmup_steps}"
        )
        out["cosine"] = "0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))) * lr"
        out["no_decay_rule"] = NO_DECAY_RULE
        out["logit_scale_clamp"] = "[0, ln 100] after every optimizer step"
        out["sources"] = sources
        return out


_COMMON = dict(
    adam_betas=(0.9, 0.98),
    adam_eps=1e-6,
    warmup_steps=100,
    schedule="cosine",
    epochs=5.0,
    gpus=4,
    image_size=224,
    crop_scale=(0.9, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    interpolation="bicubic",
    mask_rule="official",
    loss="contrastive",
    logit_scale="learned",
    text="raw",
    decay="official",
    precision="amp",
)
_COMMON_SOURCES = {
    "adam_betas": "PARAMS get_default_params('ViT-*'): beta1 0.9, beta2 0.98",
    "adam_eps": "PARAMS get_default_params('ViT-*'): eps 1e-6",
    "warmup_steps": "scripts: --warmup 100; SCHED _warmup_lr: lr * (step + 1) / warmup",
    "schedule": "MAIN cosine_lr over epochs x batches per epoch (SCHED)",
    "epochs": "scripts: --epoch 5 (argparse prefix of --epochs)",
    "gpus": "scripts: torchrun --nproc_per_node 4; loss.py ClipLoss gathers all GPUs",
    "image_size": "open_clip model configs ViT-L-14 / ViT-B-16: image_size 224",
    "crop_scale": "PARAMS --scale_min 0.9 --scale_max 1.0; TRANSFORM RandomResizedCrop",
    "crop_ratio": "TRANSFORM RandomResizedCrop default ratio (3/4, 4/3)",
    "interpolation": "TRANSFORM RandomResizedCrop(interpolation=BICUBIC)",
    "mask_rule": "TRANSFORM Maskget: region = pixels != (124, 116, 103) after the crop",
    "loss": "TRAIN ClipLoss: (CE(image->text) + CE(text->image)) / 2 over the batch",
    "logit_scale": "MODEL CLIP.logit_scale, exp'd in forward; TRAIN clamps to [0, ln 100]",
    "text": "DATA CsvDataset: tokenize([str(caption)]), no template",
    "decay": f"MAIN exclude: {NO_DECAY_RULE} -> weight decay 0",
    "precision": "scripts: --precision amp",
    "weight_decay": "PARAMS --wd default 0.2 (scripts do not set it)",
}


def _ft(name: str, model: str, batch: int, script: str) -> ClipRecipe:
    return ClipRecipe(
        name=name,
        mode="ft",
        model=model,
        lr=5e-6,
        weight_decay=0.2,
        mask_weight_decay=0.0,
        batch_per_gpu=batch,
        prompt_depth=0,
        trains="clip_model.visual.* (no prompts) and clip_model.logit_scale",
        frozen="text tower (--lock-text: transformer, token/positional embedding, ln_final, "
        "text_projection)",
        init="the original CLIP (--pretrained openai)",
        sources=_COMMON_SOURCES
        | {
            "lr": f"{script}: --lr 0.000005",
            "batch_per_gpu": f"{script}: --batch-size {batch}",
            "model": f"{script}: --model {model}",
            "prompt_depth": f"{script}: no --mask-emb-depth (main.py, no prompts)",
            "trains": "MODEL loc_text_tower leaves visual.* and logit_scale trainable",
            "init": f"{script}: --pretrained openai",
        },
        **_COMMON,
    )


def _mpt(name: str, mode: str, model: str, inferred: bool) -> ClipRecipe:
    script = "MPT_L" + (" (inferred: no official ViT-B/16 MPT script)" if inferred else "")
    return ClipRecipe(
        name=name,
        mode=mode,
        model=model,
        lr=0.05,
        weight_decay=0.2,
        mask_weight_decay=0.0,
        batch_per_gpu=32,
        prompt_depth=3,
        trains="clip_model.visual.mask_embedding, and clip_model.logit_scale during "
        "training only (restored in the written model; its trained value is in the metadata)",
        frozen="every other CLIP weight (--lock-image --lock-image-unlocked-groups 0, --lock-text)",
        init="an FT checkpoint" if mode == "mpt+ft" else "the original CLIP",
        sources=_COMMON_SOURCES
        | {
            "lr": f"{script}: --lr 0.05",
            "mask_weight_decay": f"{script}: --mask_wd 0.0 (group of mask_embedding)",
            "batch_per_gpu": f"{script}: --batch-size 32",
            "model": f"{script}: --model ViT-L-14",
            "prompt_depth": f"{script}: --with-mask --mask-emb-depth 3",
            "trains": "MODEL VisualTransformer.lock(0) unfreezes only mask_embedding; "
            "neither lock touches logit_scale, so the official MPT trains it too",
            "init": f"{script}: --pretrained <FT run>/epoch_5.pt"
            if mode == "mpt+ft"
            else "paper: MPT alone starts from the original CLIP",
        },
        **_COMMON,
    )


RECIPES: dict[str, ClipRecipe] = {
    r.name: r
    for r in (
        _mpt("mpt-vitL14", "mpt", "ViT-L-14", inferred=False),
        _mpt("mpt-vitB16", "mpt", "ViT-B-16", inferred=True),
        _ft("ft-vitL14", "ViT-L-14", 32, "FT_L"),
        _ft("ft-vitB16", "ViT-B-16", 128, "FT_B"),
        _mpt("mpt+ft-vitL14", "mpt+ft", "ViT-L-14", inferred=False),
        _mpt("mpt+ft-vitB16", "mpt+ft", "ViT-B-16", inferred=True),
    )
}


def default_recipe(mode: str, patch_size: int) -> str:
    """The recipe of ``mode`` for a CLIP with this patch size (16: ViT-B/16, else ViT-L/14)."""
    return f"{mode}-{'vitB16' if patch_size == 16 else 'vitL14'}"


def get_recipe(name: str) -> ClipRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown CLIP recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
