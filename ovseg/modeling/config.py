"""``OVSegConfig``: every constructor argument of the model.

``ovseg.modeling.build.build_ovseg`` is the only place a config turns into modules. Official
detectron2 YAML files become an ``OVSegConfig`` with ``ovseg.weights.official_config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ovseg.modeling.clip_branch import ClipArch


@dataclass
class OVSegConfig:
    # backbone: {"type": "swin", ...SwinTransformer kwargs} or {"type": "resnet", ...}; None:
    # no backbone and no MaskFormer head (CLIP branch only, for external proposal generators)
    backbone: dict | None = field(default_factory=lambda: {"type": "swin"})
    # pixel decoder
    conv_dim: int = 256
    mask_dim: int = 256
    # transformer decoder and class head
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    num_queries: int = 100
    dropout: float = 0.1
    enforce_input_proj: bool = False
    embed_hidden_dim: int = 1024
    embed_layers: int = 2
    # CLIP branch
    clip: ClipArch = field(default_factory=ClipArch)
    prompt_depth: int = 3
    mask_prompt_fwd: bool = True
    mask_fill: str = "mean"  # "mean" (CLIP mean * 255) or "zero"
    mask_expand_ratio: float = 1.0
    # inference defaults (per-call overridable in the predictor)
    mask_threshold: float = 0.4
    ensemble_weight: float = 0.7
    clip_ensemble: bool = True
    mode: str = "eval"  # "eval" (OVSeg semantic inference) or "demo" (OVSegDEMO)
    # class-name prompts: "vild" (official default), "imagenet" (80), "predefined", or "photo"
    # ("a photo of {}", the authors' SAM demo space)
    text_templates: str = "vild"
    predefined_templates: tuple = ("a photo of a {}.",)
    min_size_test: int = 640
    max_size_test: int = 2560
    size_divisibility: int = 32
    pixel_mean: tuple = (123.675, 116.28, 103.53)
    pixel_std: tuple = (58.395, 57.12, 57.375)
    # test-time augmentation (official TEST.AUG) and sliding window (TEST.SLIDING_*); the
    # defaults are those of the published configs (off)
    test_aug: bool = False
    test_aug_min_sizes: tuple = (256, 384, 512, 640, 768, 896)
    test_aug_max_size: int = 3584
    test_aug_flip: bool = True
    sliding_window: bool = False
    sliding_tile_size: int = 224
    sliding_overlap: float = 2 / 3.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OVSegConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown OVSegConfig fields {unknown}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("clip"), dict):
            d["clip"] = ClipArch(**d["clip"])
        for key in ("pixel_mean", "pixel_std", "predefined_templates", "test_aug_min_sizes"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def clip_only_default(self) -> bool:
        """The official model uses CLIP alone (on valid masks) when the ensemble weight is 0."""
        return self.clip_ensemble and self.ensemble_weight == 0
