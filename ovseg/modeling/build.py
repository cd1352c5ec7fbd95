"""``build_ovseg(config)``: the one place an ``OVSegConfig`` becomes modules.

Building never reads weights; loaders (``ovseg.weights``) call the builder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ovseg.modeling.clip_branch import MaskAdaptedCLIP
from ovseg.modeling.config import OVSegConfig
from ovseg.modeling.ovseg import OVSeg, SemSegHead
from ovseg.modeling.pixel_decoder import PixelDecoder
from ovseg.modeling.resnet import ResNetDeepLab
from ovseg.modeling.swin import SwinTransformer
from ovseg.modeling.transformer_decoder import OpenVocabPredictor

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
    loads every weight next (``ovseg.weights.checkpoints``).
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
