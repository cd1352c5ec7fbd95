"""Named variants with their weights: ``build_model(name, checkpoint=None)`` and
``build_clip_only(clip_weights)``.

The loading half of the variant registry: which released file a variant reads, what its model
card says, and which variants may run on seeded random weights. The configs themselves are
``ovseg.modeling.variants``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from ovseg.modeling.build import build_ovseg
from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.config import OVSegConfig
from ovseg.modeling.ovseg import OVSeg
from ovseg.modeling.variants import MODELS, list_models, sam_demo_clip_config
from ovseg.weights import checkpoints, hub
from ovseg.weights.pretrained import is_pretrained_folder, load_from_hub, parse_hf_ref

RANDOM_OK = {"ovseg-test-tiny"}  # variants that may be built with seeded random weights

_OVSEG_RECIPE = (
    "proposal model: MaskFormer trained on COCO-Stuff-171 with CLIP-space class embeddings; "
    "CLIP: image tower fine-tuned (lr 5e-6, wd 0.2), then mask prompts (depth 3) tuned "
    "(lr 2e-2, 5 epochs) on mask-category pairs mined from COCO captions (Liang et al., 2023)"
)
# Released checkpoint file -> what a model card says about it (results: the paper's, mIoU)
RELEASED_PROVENANCE = {
    "ovseg_swinbase_vitL14_ft_mpt.pth": {
        "provenance": "official OVSeg release ovseg_swinbase_vitL14_ft_mpt.pth (facebookresearch/ov-seg)",
        "recipe": _OVSEG_RECIPE,
        "license": "CC BY-NC 4.0",
        "eval_results": {
            "ADE20K-847 mIoU (paper)": 9.0,
            "Pascal Context-459 mIoU (paper)": 12.4,
            "ADE20K-150 mIoU (paper)": 29.6,
            "Pascal Context-59 mIoU (paper)": 55.7,
            "Pascal VOC-20 mIoU (paper)": 94.5,
        },
    },
    "ovseg_R101c_vitB16_ft_mpt.pth": {
        "provenance": "official OVSeg release ovseg_R101c_vitB16_ft_mpt.pth (facebookresearch/ov-seg)",
        "recipe": _OVSEG_RECIPE,
        "license": "CC BY-NC 4.0",
        "eval_results": {
            "ADE20K-847 mIoU (paper)": 7.1,
            "Pascal Context-459 mIoU (paper)": 11.0,
            "ADE20K-150 mIoU (paper)": 24.8,
            "Pascal Context-59 mIoU (paper)": 53.3,
            "Pascal VOC-20 mIoU (paper)": 92.6,
        },
    },
    "ovseg_clip_l_9a1909.pth": {
        "provenance": "the mask-adapted CLIP ViT-L/14 of the authors' SAM demo (facebook/ov-seg space)",
        "recipe": _OVSEG_RECIPE,
        "license": "CC BY-NC 4.0",
    },
}


def build_clip_only(clip_weights: str | Path, config: OVSegConfig | None = None) -> OVSeg:
    """A CLIP-branch-only ``OVSeg`` holding the CLIP in ``clip_weights`` (any layout that
    ``ovseg.checkpoints.clip_state_dict`` accepts), for external proposal generators.

    Args:
        clip_weights: e.g. the authors' ``ovseg_clip_l_9a1909.pth`` (``ovseg download
            ovseg-clip-vitL14``), an OpenAI CLIP, or an OVSeg checkpoint (its CLIP part).
        config: settings; default ``sam_demo_clip_config`` for the file's architecture. Its
            ``clip`` and ``prompt_depth`` are set from the file.
    """
    sd = checkpoints.read_clip_weights(clip_weights)
    arch = ClipArch.from_state_dict(sd)
    depth = checkpoints.clip_prompt_depth(sd)
    config = sam_demo_clip_config(arch, depth) if config is None else config
    config = dataclasses.replace(config, backbone=None, clip=arch, prompt_depth=depth)
    model = build_ovseg(config)
    checkpoints.load_clip_weights(model, clip_weights)
    name = Path(clip_weights).name
    model.provenance = dict(RELEASED_PROVENANCE.get(name, {}))
    model.provenance.setdefault("provenance", f"CLIP weights from {name}")
    return model.eval()


def build_model(
    name: str | Path, checkpoint: str | Path | None = None, cache_converted: bool = False
) -> OVSeg:
    """Build the named variant in eval mode.

    Args:
        name: one of ``list_models()``; or ``hf://owner/repo[@revision]`` or a folder, both
            written by ``OVSeg.save_pretrained`` (read with ``OVSeg.from_pretrained``).
        checkpoint: weights for a named variant: our ``.safetensors`` format or an official
            ``.pth``/``.pt``. None: the cached released weights (``ovseg download NAME``);
            ``ovseg-test-tiny`` alone falls back to seeded random weights, with a warning.
        cache_converted: keep a safetensors copy of a legacy-format ``.pth`` (one that
            cannot be memory-mapped) in the cache folder and read that on later calls
            (``checkpoints.read_state_dict(cache=True)``).
    """
    ref = parse_hf_ref(str(name))
    if ref is not None or is_pretrained_folder(name):
        if checkpoint is not None:
            raise ValueError(f"{name} carries its own weights; do not give a checkpoint too")
        if ref is None:
            return OVSeg.from_pretrained(str(name))
        return load_from_hub(*ref)
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; available: {list_models()}, hf://OWNER/REPO[@REVISION], "
            "or a folder written by save_pretrained"
        )
    if checkpoint is None:
        cached = hub.find_cached(name)
        if cached is not None:
            checkpoint = cached
        elif name in RANDOM_OK:
            warnings.warn(
                f"{name}: no checkpoint given, using seeded random weights (for tests and "
                "smoke runs only; its outputs mean nothing)",
                stacklevel=2,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_ovseg(MODELS[name]())
            model.random_weights = True  # shown by `ovseg serve`'s page as a warning
            model.provenance = {"provenance": "seeded random weights (tests only)"}
            return model
        else:
            raise FileNotFoundError(
                f"no weights for {name!r} in the Hugging Face cache or {hub.ovseg_home()}: run "
                f"`ovseg download {name}` or pass checkpoint=PATH (CLI: --checkpoint PATH)"
            )
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        return checkpoints.load_checkpoint(path)
    sd = checkpoints.read_state_dict(path, cache=cache_converted)
    model = build_ovseg(MODELS[name](), init=False)
    checkpoints.load_official_state_dict(model, sd, source=path, assign=True)
    checkpoints.note_weights_origin(model, path)
    model.provenance = dict(RELEASED_PROVENANCE.get(path.name, {}))
    model.provenance.setdefault("provenance", f"official-format checkpoint {path.name}")
    return model
