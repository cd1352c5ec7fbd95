"""int8 inference (``InferenceOptions(dtype="int8")``): what it replaces and how close it is."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovseg import InferenceOptions
from ovseg.inference.options import prepare_model
from ovseg.modeling.int8 import SelfAttention, quantize_int8


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


@pytest.mark.parametrize("full_range", [False, True])
@torch.no_grad()
def test_int8_linear_equals_torch_quantize_dynamic(monkeypatch, full_range):
    """quantize_int8 builds each layer itself (no throwaway packing): the result is what
    PyTorch's own ``quantize_dynamic`` with the per-channel qconfig gives, bit for bit; with
    full-range activations, what PyTorch's kernel gives on those weights without
    ``reduce_range``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from ovseg.modeling import int8 as inference

    monkeypatch.setattr(inference, "int8_full_range", lambda: full_range)
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32, bias=False))
    with torch.no_grad():
        float_model[0].weight[3] = 0.0  # an all-zero row (the scale's eps floor)
    ours = quantize_int8(copy.deepcopy(float_model))
    theirs = quantize_dynamic(copy.deepcopy(float_model), {nn.Linear: per_channel_dynamic_qconfig})
    kind = inference.FullRangeDynamicLinear if full_range else type(theirs[0])
    for i in (0, 2):
        assert type(ours[i]) is kind and isinstance(ours[i], type(theirs[i]))
        assert (ours[i].in_features, ours[i].out_features) == (
            theirs[i].in_features,
            theirs[i].out_features,
        )
        (w, b), (w_ref, b_ref) = ours[i]._weight_bias(), theirs[i]._weight_bias()
        assert torch.equal(w.int_repr(), w_ref.int_repr())
        assert torch.equal(w.q_per_channel_scales(), w_ref.q_per_channel_scales())
        assert torch.equal(w.q_per_channel_zero_points(), w_ref.q_per_channel_zero_points())
        assert (b is None) == (b_ref is None) and (b is None or torch.equal(b, b_ref))
    x = torch.randn(5, 7, 64) * 3
    if not full_range:
        assert torch.equal(ours(x), theirs(x))
    else:
        packed = theirs[0]._packed_params._packed_params
        hidden = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
        assert torch.equal(ours[0](x), hidden)


@torch.no_grad()
def test_int8_activation_range_never_saturates():
    """Whatever this CPU's kernel, the range quantize_int8 picks multiplies the worst case
    (every u8 x s8 pair at the top of both ranges) right; where it picks 7 bits, 8 bits
    really do saturate there (why PyTorch reduces the range)."""
    from ovseg.modeling.int8 import int8_full_range

    layer = nn.Linear(64, 8, bias=False)
    layer.weight.fill_(1.0)
    quantized = quantize_int8(nn.Sequential(layer))[0]
    x = torch.ones(4, 64)
    assert (quantized(x) - 64).abs().max() < 1.0
    if not int8_full_range():
        packed = quantized._packed_params._packed_params
        saturated = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
        assert (saturated - 64).abs().min() > 16


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
