"""Model registry: variant name -> ``OVSegConfig``, and ``build_model(name, checkpoint=None)``."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ovseg.config import OVSegConfig
from ovseg.modeling.clip_branch import ClipArch, MaskAdaptedCLIP
from ovseg.modeling.ovseg import OVSeg, SemSegHead
from ovseg.modeling.pixel_decoder import PixelDecoder
from ovseg.modeling.resnet import ResNetDeepLab
from ovseg.modeling.swin import SwinTransformer
from ovseg.modeling.transformer_decoder import OpenVocabPredictor

VIT_L14 = ClipArch(
    embed_dim=768,
    image_size=224,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    text_width=768,
    text_layers=12,
)
VIT_B16 = ClipArch(
    embed_dim=512,
    image_size=224,
    patch_size=16,
    vision_width=768,
    vision_layers=12,
    text_width=512,
    text_layers=12,
)
SWIN_B = {
    "type": "swin",
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": 12,
    "patch_size": 4,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "patch_norm": True,
}
R101C = {
    "type": "resnet",
    "depth": 101,
    "stem_channels": 128,
    "res2_channels": 256,
    "width_per_group": 64,
    "stride_in_1x1": False,
    "res5_multi_grid": [1, 2, 4],
}


def swinb_vitl14_config() -> OVSegConfig:
    """Swin-B + ViT-L/14, the released ``ovseg_swinbase_vitL14_ft_mpt.pth``."""
    return OVSegConfig(backbone=dict(SWIN_B), embed_hidden_dim=1024, clip=VIT_L14)


def r101c_vitb16_config() -> OVSegConfig:
    """ResNet-101c + ViT-B/16, the released ``ovseg_R101c_vitB16_ft_mpt.pth``."""
    return OVSegConfig(
        backbone=dict(R101C),
        embed_hidden_dim=1024,
        clip=VIT_B16,
        mask_threshold=0.5,
        min_size_test=512,
        max_size_test=2048,
    )


def tiny_config() -> OVSegConfig:
    """Same architecture as Swin-B + ViT, tiny sizes (the official-fixture configuration)."""
    return OVSegConfig(
        backbone={
            **SWIN_B,
            "embed_dim": 16,
            "depths": [2, 2, 2, 2],
            "num_heads": [2, 2, 4, 8],
            "window_size": 7,
        },
        conv_dim=64,
        mask_dim=64,
        hidden_dim=64,
        nheads=4,
        dim_feedforward=128,
        dec_layers=3,
        num_queries=10,
        min_size_test=320,  # small test-time size keeps smoke runs and tests fast
        max_size_test=1280,
        embed_hidden_dim=64,
        clip=ClipArch(
            embed_dim=32,
            image_size=224,
            patch_size=16,
            vision_width=128,
            vision_layers=3,
            text_width=64,
            text_layers=2,
        ),
    )


MODELS = {
    "ovseg-swinB-vitL14": swinb_vitl14_config,
    "ovseg-R101c-vitB16": r101c_vitb16_config,
    "ovseg-test-tiny": tiny_config,
}
RANDOM_OK = {"ovseg-test-tiny"}

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
}  # variants that may be built with seeded random weights


def list_models() -> list[str]:
    return list(MODELS)


def sam_demo_clip_config(clip: ClipArch, prompt_depth: int = 0) -> OVSegConfig:
    """A CLIP-branch-only model with the authors' SAM demo settings (facebook/ov-seg space).

    No backbone or MaskFormer head: proposals come from a generator (SAM) and CLIP alone
    classifies them. As the space does: the image's longer side is resized to 1280, crops are
    the official masked crops (CLIP-mean fill, tight box, 224 px bicubic), the CLIP image
    tower runs without mask prompts (``mask_prompt_fwd=False``; prompts in the file are kept
    in the model), and each class is encoded with the one template "a photo of {}".
    """
    return OVSegConfig(
        backbone=None,
        clip=clip,
        prompt_depth=prompt_depth,
        mask_prompt_fwd=False,
        text_templates="photo",
        mask_threshold=0.5,  # SAM masks are binary
        ensemble_weight=0.0,  # CLIP alone
        min_size_test=1280,  # with max 1280: the longer side becomes 1280
        max_size_test=1280,
    )


def build_clip_only(clip_weights: str | Path, config: OVSegConfig | None = None) -> OVSeg:
    """A CLIP-branch-only ``OVSeg`` holding the CLIP in ``clip_weights`` (any layout that
    ``ovseg.checkpoints.clip_state_dict`` accepts), for external proposal generators.

    Args:
        clip_weights: e.g. the authors' ``ovseg_clip_l_9a1909.pth`` (``ovseg download
            ovseg-clip-vitL14``), an OpenAI CLIP, or an OVSeg checkpoint (its CLIP part).
        config: settings; default ``sam_demo_clip_config`` for the file's architecture. Its
            ``clip`` and ``prompt_depth`` are set from the file.
    """
    from dataclasses import replace

    from ovseg import checkpoints

    sd = checkpoints.read_clip_weights(clip_weights)
    arch = ClipArch.from_state_dict(sd)
    depth = checkpoints.clip_prompt_depth(sd)
    config = sam_demo_clip_config(arch, depth) if config is None else config
    config = replace(config, backbone=None, clip=arch, prompt_depth=depth)
    model = build_ovseg(config)
    checkpoints.load_clip_weights(model, clip_weights)
    name = Path(clip_weights).name
    model.provenance = dict(RELEASED_PROVENANCE.get(name, {}))
    model.provenance.setdefault("provenance", f"CLIP weights from {name}")
    return model.eval()


INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "zeros_",
    "ones_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside, ``torch.nn.init`` functions leave tensors as allocated (uninitialised).

    For models whose every parameter and persistent buffer is loaded right after (random
    init of a full-size model costs several times the load). Buffers computed without
    ``torch.nn.init`` (e.g. attention masks) are made as usual. Not thread-safe.
    """
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_ovseg(config: OVSegConfig, init: bool = True) -> OVSeg:
    """Construct an ``OVSeg`` (random weights) from a config: the one config -> modules step.

    ``config.backbone`` None builds a CLIP-branch-only model (no backbone, no MaskFormer head).
    ``init=False``: parameters are left uninitialised (``skip_init``), for a caller that
    loads every weight next (``ovseg.checkpoints``).
    """
    if not init:
        with skip_init():
            return build_ovseg(config)
    if config.backbone is None:
        clip = MaskAdaptedCLIP(config.clip, config.prompt_depth)
        return OVSeg(None, None, clip, config).eval()
    bb = dict(config.backbone)
    kind = bb.pop("type")
    if kind == "swin":
        backbone = SwinTransformer(**bb)
    elif kind == "resnet":
        backbone = ResNetDeepLab(**bb)
    else:
        raise ValueError(f"backbone type must be 'swin' or 'resnet', got {kind!r}")
    channels = [backbone.out_channels[f"res{i}"] for i in range(2, 6)]
    head = SemSegHead(
        PixelDecoder(channels, config.conv_dim, config.mask_dim),
        OpenVocabPredictor(
            channels[-1],
            config.hidden_dim,
            config.nheads,
            config.dim_feedforward,
            config.dec_layers,
            config.num_queries,
            config.mask_dim,
            config.clip.embed_dim,
            config.embed_hidden_dim,
            config.embed_layers,
            config.dropout,
            config.enforce_input_proj,
        ),
    )
    clip = MaskAdaptedCLIP(config.clip, config.prompt_depth)  # after the head: seeded inits
    return OVSeg(backbone, head, clip, config).eval()


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
    from ovseg import checkpoints, hub
    from ovseg.pretrained import is_pretrained_folder, parse_hf_ref

    ref = parse_hf_ref(str(name))
    if ref is not None or is_pretrained_folder(name):
        if checkpoint is not None:
            raise ValueError(f"{name} carries its own weights; do not give a checkpoint too")
        if ref is None:
            return OVSeg.from_pretrained(str(name))
        return OVSeg.from_pretrained(ref[0], revision=ref[1])
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
