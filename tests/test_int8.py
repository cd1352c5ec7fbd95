"""int8 inference (``InferenceOptions(dtype="int8")``): what it replaces and how close it is."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovseg import InferenceOptions
from ovseg.inference import SelfAttention, prepare_model, quantize_int8


@torch.no_grad()
def test_self_attention_equals_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(3, 9, 64)
    causal = torch.full((9, 9), float("-inf")).triu(1)
    for mask in (None, causal):
        expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        got, weights = SelfAttention(mha)(x, x, x, need_weights=False, attn_mask=mask)
        assert weights is None and (got - expected).abs().max() < 1e-5


@torch.no_grad()
def test_quantize_int8_reaches_every_linear_layer(official_tiny):
    model = copy.deepcopy(official_tiny[0])
    visual = quantize_int8(model.clip_adapter.clip_model.visual)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in visual.modules())
    plain = [n for n, m in visual.named_modules() if type(m) is nn.Linear]
    assert plain == []  # all replaced by dynamically quantised linears
    dynamic = [m for m in visual.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(dynamic) == 4 * len(visual.transformer.resblocks)  # in, out, fc, proj


@torch.no_grad()
def test_int8_clip_features_close_to_official(official_tiny):
    model, out, _, _ = official_tiny
    model = copy.deepcopy(model)
    quantize_int8(model.clip_adapter.clip_model.visual)
    feats = model.clip_adapter.encode_masked(
        out["clip.regions_normalized_224"], out["clip.region_masks_224"].float()
    )
    cosine = (F.normalize(feats, dim=-1) * out["clip.image_features_normalized"]).sum(-1)
    assert cosine.min() > 0.99


@pytest.mark.parametrize("text_dtype", ["fp32", "int8"])
@torch.no_grad()
def test_int8_model_agrees_with_official_fixture(official_tiny, text_dtype):
    """The official fixture's trained-like weights at its own input size (no test resize)."""
    model, out, image, names = official_tiny
    options = InferenceOptions(dtype="int8", text_dtype=text_dtype, text_cache=False)
    model = prepare_model(copy.deepcopy(model), options)
    agreement = (model(image, names).argmax(0) == out["sem_seg_argmax"]).float().mean()
    assert agreement >= 0.98
    assert model.clip_adapter.last_text_stats["precision"] == text_dtype
