"""Official detectron2 YAML configs -> ``OVSegConfig`` (``config_from_official``)."""

from __future__ import annotations

from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.config import OVSegConfig
from ovseg.weights.official_yaml import with_official_defaults


def config_from_official(cfg: dict, clip_arch: ClipArch) -> OVSegConfig:
    """Translate an official config (keys under MODEL.*, INPUT and TEST) to ``OVSegConfig``.

    A key ``cfg`` omits takes its official default (``ovseg.weights.official_yaml.OFFICIAL_DEFAULTS``:
    detectron2 ``get_cfg`` + ``add_deeplab_config`` + ``add_ovseg_config``), so a raw published
    file and its resolved dump give the same config. The CLIP architecture comes from the
    checkpoint's tensor shapes, never from ``CLIP_MODEL_NAME``. Unsupported options raise
    ``ValueError`` naming the key.
    """
    cfg = with_official_defaults(cfg)
    model, inp, test = cfg["MODEL"], cfg["INPUT"], cfg["TEST"]
    head, mf, ca = model["SEM_SEG_HEAD"], model["MASK_FORMER"], model["CLIP_ADAPTER"]
    name = model["BACKBONE"]["NAME"]
    if name == "D2SwinTransformer":
        sw = model["SWIN"]
        backbone = {
            "type": "swin",
            "embed_dim": sw["EMBED_DIM"],
            "depths": list(sw["DEPTHS"]),
            "num_heads": list(sw["NUM_HEADS"]),
            "window_size": sw["WINDOW_SIZE"],
            "patch_size": sw["PATCH_SIZE"],
            "mlp_ratio": float(sw["MLP_RATIO"]),
            "qkv_bias": sw["QKV_BIAS"],
            "patch_norm": sw["PATCH_NORM"],
        }
        _require(sw, "MODEL.SWIN", APE=False, QK_SCALE=None, NORM_INDICES=None, PROJECTION=False)
        _require_features(sw, "MODEL.SWIN.OUT_FEATURES")
    elif name == "build_resnet_deeplab_backbone":
        rn = model["RESNETS"]
        _require(
            rn,
            "MODEL.RESNETS",
            STEM_TYPE="deeplab",
            RES4_DILATION=1,
            RES5_DILATION=1,
            NUM_GROUPS=1,
            NORM="FrozenBN",
        )
        if any(rn["DEFORM_ON_PER_STAGE"]):
            raise ValueError(
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE (deformable convs) is not supported"
            )
        _require_features(rn, "MODEL.RESNETS.OUT_FEATURES")
        backbone = {
            "type": "resnet",
            "depth": rn["DEPTH"],
            "stem_channels": rn["STEM_OUT_CHANNELS"],
            "res2_channels": rn["RES2_OUT_CHANNELS"],
            "width_per_group": rn["WIDTH_PER_GROUP"],
            "stride_in_1x1": rn["STRIDE_IN_1X1"],
            "res5_multi_grid": list(rn["RES5_MULTI_GRID"]),
        }
    else:
        raise ValueError(
            f"MODEL.BACKBONE.NAME={name!r} is not supported; use D2SwinTransformer or "
            "build_resnet_deeplab_backbone"
        )
    _require(head, "MODEL.SEM_SEG_HEAD", PIXEL_DECODER_NAME="BasePixelDecoder", NORM="GN")
    _require_features(head, "MODEL.SEM_SEG_HEAD.IN_FEATURES", key="IN_FEATURES")
    if mf["ENC_LAYERS"] or head["TRANSFORMER_ENC_LAYERS"]:
        raise ValueError("transformer encoder layers (ENC_LAYERS > 0) are not supported")
    _require(mf, "MODEL.MASK_FORMER", PRE_NORM=False, TRANSFORMER_IN_FEATURE="res5")
    _require(mf["TEST"], "MODEL.MASK_FORMER.TEST", SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE=False)
    _require(ca, "MODEL.CLIP_ADAPTER", MASK_MATTING=False, REGION_RESIZED=True)
    templates = ca["TEXT_TEMPLATES"]
    if templates not in ("vild", "imagenet", "predefined"):
        raise ValueError(
            f"MODEL.CLIP_ADAPTER.TEXT_TEMPLATES={templates!r}; use vild, imagenet or predefined"
        )
    fill = ca["MASK_FILL"]
    if fill not in ("mean", "zero"):
        raise ValueError(f"MODEL.CLIP_ADAPTER.MASK_FILL={fill!r}; use 'mean' or 'zero'")
    _require(inp, "INPUT", FORMAT="RGB")
    if test["DENSE_CRF"]:
        raise ValueError(
            "TEST.DENSE_CRF=True (CRF post-processing with pydensecrf) is not supported"
        )
    aug = test["AUG"]
    return OVSegConfig(
        backbone=backbone,
        conv_dim=head["CONVS_DIM"],
        mask_dim=head["MASK_DIM"],
        hidden_dim=mf["HIDDEN_DIM"],
        nheads=mf["NHEADS"],
        dim_feedforward=mf["DIM_FEEDFORWARD"],
        dec_layers=mf["DEC_LAYERS"],
        num_queries=mf["NUM_OBJECT_QUERIES"],
        dropout=float(mf["DROPOUT"]),
        enforce_input_proj=mf["ENFORCE_INPUT_PROJ"],
        embed_hidden_dim=head["EMBED_HIDDEN_DIM"],
        embed_layers=head["EMBED_LAYERS"],
        clip=clip_arch,
        prompt_depth=ca["MASK_PROMPT_DEPTH"],
        mask_prompt_fwd=ca["MASK_PROMPT_FWD"],
        mask_fill=fill,
        mask_expand_ratio=float(ca["MASK_EXPAND_RATIO"]),
        mask_threshold=float(ca["MASK_THR"]),
        ensemble_weight=float(ca["CLIP_ENSEMBLE_WEIGHT"]),
        clip_ensemble=ca["CLIP_ENSEMBLE"],
        mode="demo" if model["META_ARCHITECTURE"] == "OVSegDEMO" else "eval",
        text_templates=templates,
        predefined_templates=tuple(ca["PREDEFINED_PROMPT_TEMPLATES"]),
        min_size_test=inp["MIN_SIZE_TEST"],
        max_size_test=inp["MAX_SIZE_TEST"],
        size_divisibility=mf["SIZE_DIVISIBILITY"],
        pixel_mean=tuple(float(v) for v in model["PIXEL_MEAN"]),
        pixel_std=tuple(float(v) for v in model["PIXEL_STD"]),
        test_aug=aug["ENABLED"],
        test_aug_min_sizes=tuple(int(v) for v in aug["MIN_SIZES"]),
        test_aug_max_size=aug["MAX_SIZE"],
        test_aug_flip=aug["FLIP"],
        sliding_window=test["SLIDING_WINDOW"],
        sliding_tile_size=test["SLIDING_TILE_SIZE"],
        sliding_overlap=float(test["SLIDING_OVERLAP"]),
    )


def _require(node: dict, prefix: str, **expected) -> None:
    """Raise ``ValueError`` naming the first key of ``node`` that differs from ``expected``."""
    for key, value in expected.items():
        if node[key] != value:
            raise ValueError(f"{prefix}.{key}={node[key]!r} is not supported; only {value!r}")


def _require_features(node: dict, name: str, key: str = "OUT_FEATURES") -> None:
    if list(node[key]) != ["res2", "res3", "res4", "res5"]:
        raise ValueError(
            f"{name}={list(node[key])} is not supported; the head needs "
            "['res2', 'res3', 'res4', 'res5']"
        )
