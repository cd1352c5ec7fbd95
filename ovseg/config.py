"""``OVSegConfig``: every constructor argument of the model, and the official YAML translation.

This is the only place a config turns into constructor arguments: ``ovseg.build`` reads an
``OVSegConfig``; official detectron2 YAML files become one with ``config_from_official``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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
        for key in ("pixel_mean", "pixel_std", "predefined_templates"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def clip_only_default(self) -> bool:
        """The official model uses CLIP alone (on valid masks) when the ensemble weight is 0."""
        return self.clip_ensemble and self.ensemble_weight == 0


def read_official_yaml(path: str | Path) -> dict:
    """Read a detectron2-style YAML with ``yaml.safe_load``, resolving ``_BASE_`` chains."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = cfg.pop("_BASE_", None)
    if base:
        merged = read_official_yaml(path.parent / base)
        _merge(merged, cfg)
        cfg = merged
    return cfg


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def config_from_official(cfg: dict, clip_arch: ClipArch) -> OVSegConfig:
    """Translate an official config (keys under MODEL.* and INPUT) to ``OVSegConfig``.

    The CLIP architecture comes from the checkpoint's tensor shapes, never from
    ``CLIP_MODEL_NAME``. Unsupported options raise ``ValueError`` naming the key.
    """
    model = cfg.get("MODEL", {})
    inp = cfg.get("INPUT", {})
    head = model.get("SEM_SEG_HEAD", {})
    mf = model.get("MASK_FORMER", {})
    ca = model.get("CLIP_ADAPTER", {})
    name = model.get("BACKBONE", {}).get("NAME", "D2SwinTransformer")
    if name == "D2SwinTransformer":
        sw = model.get("SWIN", {})
        backbone = {
            "type": "swin",
            "embed_dim": sw.get("EMBED_DIM", 96),
            "depths": list(sw.get("DEPTHS", [2, 2, 6, 2])),
            "num_heads": list(sw.get("NUM_HEADS", [3, 6, 12, 24])),
            "window_size": sw.get("WINDOW_SIZE", 7),
            "patch_size": sw.get("PATCH_SIZE", 4),
            "mlp_ratio": sw.get("MLP_RATIO", 4.0),
            "qkv_bias": sw.get("QKV_BIAS", True),
            "patch_norm": sw.get("PATCH_NORM", True),
        }
        if sw.get("APE", False):
            raise ValueError("MODEL.SWIN.APE=True (absolute position embedding) is not supported")
    elif name == "build_resnet_deeplab_backbone":
        rn = model.get("RESNETS", {})
        if rn.get("STEM_TYPE", "deeplab") != "deeplab":
            raise ValueError(f"MODEL.RESNETS.STEM_TYPE={rn.get('STEM_TYPE')!r}; only 'deeplab'")
        if rn.get("RES4_DILATION", 1) != 1 or rn.get("RES5_DILATION", 1) != 1:
            raise ValueError("MODEL.RESNETS.RES4/RES5_DILATION other than 1 is not supported")
        backbone = {
            "type": "resnet",
            "depth": rn.get("DEPTH", 101),
            "stem_channels": rn.get("STEM_OUT_CHANNELS", 128),
            "res2_channels": rn.get("RES2_OUT_CHANNELS", 256),
            "width_per_group": rn.get("WIDTH_PER_GROUP", 64),
            "stride_in_1x1": rn.get("STRIDE_IN_1X1", False),
            "res5_multi_grid": list(rn.get("RES5_MULTI_GRID", [1, 2, 4])),
        }
    else:
        raise ValueError(
            f"MODEL.BACKBONE.NAME={name!r} is not supported; use D2SwinTransformer or "
            "build_resnet_deeplab_backbone"
        )
    if head.get("PIXEL_DECODER_NAME", "BasePixelDecoder") != "BasePixelDecoder":
        raise ValueError("only MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME=BasePixelDecoder is supported")
    if mf.get("ENC_LAYERS", 0) or head.get("TRANSFORMER_ENC_LAYERS", 0):
        raise ValueError("transformer encoder layers (ENC_LAYERS > 0) are not supported")
    if mf.get("PRE_NORM", False):
        raise ValueError("MODEL.MASK_FORMER.PRE_NORM=True is not supported")
    if ca.get("MASK_MATTING", False):
        raise ValueError("MODEL.CLIP_ADAPTER.MASK_MATTING=True is not supported")
    templates = ca.get("TEXT_TEMPLATES", "vild")
    if templates not in ("vild", "imagenet", "predefined"):
        raise ValueError(
            f"MODEL.CLIP_ADAPTER.TEXT_TEMPLATES={templates!r}; use vild, imagenet or predefined"
        )
    fill = ca.get("MASK_FILL", "mean")
    if fill not in ("mean", "zero"):
        raise ValueError(f"MODEL.CLIP_ADAPTER.MASK_FILL={fill!r}; use 'mean' or 'zero'")
    return OVSegConfig(
        backbone=backbone,
        conv_dim=head.get("CONVS_DIM", 256),
        mask_dim=head.get("MASK_DIM", 256),
        hidden_dim=mf.get("HIDDEN_DIM", 256),
        nheads=mf.get("NHEADS", 8),
        dim_feedforward=mf.get("DIM_FEEDFORWARD", 2048),
        dec_layers=mf.get("DEC_LAYERS", 6),
        num_queries=mf.get("NUM_OBJECT_QUERIES", 100),
        dropout=mf.get("DROPOUT", 0.1),
        enforce_input_proj=mf.get("ENFORCE_INPUT_PROJ", False),
        embed_hidden_dim=head.get("EMBED_HIDDEN_DIM", 1024),
        embed_layers=head.get("EMBED_LAYERS", 2),
        clip=clip_arch,
        prompt_depth=ca.get("MASK_PROMPT_DEPTH", 3),
        mask_prompt_fwd=ca.get("MASK_PROMPT_FWD", True),
        mask_fill=fill,
        mask_expand_ratio=ca.get("MASK_EXPAND_RATIO", 1.0),
        mask_threshold=ca.get("MASK_THR", 0.4),
        ensemble_weight=ca.get("CLIP_ENSEMBLE_WEIGHT", 0.7),
        clip_ensemble=ca.get("CLIP_ENSEMBLE", True),
        mode="demo" if model.get("META_ARCHITECTURE") == "OVSegDEMO" else "eval",
        text_templates=templates,
        predefined_templates=tuple(ca.get("PREDEFINED_PROMPT_TEMPLATES", ["a photo of a {}."])),
        min_size_test=inp.get("MIN_SIZE_TEST", 640),
        max_size_test=inp.get("MAX_SIZE_TEST", 2560),
        size_divisibility=mf.get("SIZE_DIVISIBILITY", 32),
        pixel_mean=tuple(model.get("PIXEL_MEAN", (123.675, 116.28, 103.53))),
        pixel_std=tuple(model.get("PIXEL_STD", (58.395, 57.12, 57.375))),
    )
