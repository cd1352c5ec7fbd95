"""The model variants: architecture constants and one ``OVSegConfig`` per named variant.

Construction only: ``MODELS`` maps a variant name to the function that makes its config, and
``ovseg.modeling.build.build_ovseg`` turns a config into modules. Where weights come from is
``ovseg.weights``' business.
"""

from __future__ import annotations

from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.config import OVSegConfig

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


def list_models() -> list[str]:
    return list(MODELS)


def sam_demo_clip_config(clip: ClipArch, prompt_depth: int = 0) -> OVSegConfig:
    """A CLIP-branch-only model with the authors' SAM demo settings (facebook/ov-seg space).

    No backbone or MaskFormer head: proposals come from a generator (SAM) and CLIP alone
    classifies them, in demo mode by default (with SAM masks: the space's fusion). As the space
    does: the image's longer side is resized to 1280 (by the SAM generator's ``long_side``, with
    the space's truncation; other generators get ``min = max = 1280``, rounded), crops are
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
        min_size_test=1280,  # with max 1280: the longer side becomes 1280 (rounded; the SAM
        max_size_test=1280,  # generator resizes by the space's own rule, truncated)
        mode="demo",  # predict() follows the space's demo by default
    )
