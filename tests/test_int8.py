"""int8 inference (``InferenceOptions(dtype="int8")``): what it replaces and how close it is."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovseg import InferenceOptions
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


def _emulated_int8_linear(layer: nn.Linear, x: torch.Tensor, bits: int) -> torch.Tensor:
    """What an int8 dynamic linear must compute, by hand: the input quantised symmetrically
    per row to ``bits`` in float32 (scale = max|x| / ((2^bits - 1) / 2), x * (1 / scale) rounded
    to nearest even, clamped), the layer's int8 weights and per-channel scales, an exact
    integer product (int64), both scales and the bias in float64."""
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax - 1
    rows = x.reshape(-1, x.shape[-1]).float()
    scale = rows.abs().amax(1, keepdim=True) / ((qmax - qmin) / 2)
    scale = scale.clamp(min=torch.finfo(torch.float32).eps)
    xq = torch.round(rows * (1.0 / scale)).clamp(qmin, qmax).long()
    w = layer.weight
    product = xq @ w.qdata.long().T  # exact: int64
    y = product.double() * scale.double() * w.scale.double().reshape(1, -1)
    if layer.bias is not None:
        y = y + layer.bias.double()
    return y.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("full_range", [False, True])
@torch.no_grad()
def test_torchao_int8_linear_equals_hand_computation(full_range):
    """quantize_int8 on torchao computes the int8 product exactly, the kernel included
    (oneDNN's u8 x s8 with VNNI here): per-row 8-bit (or 7-bit) activations times per-channel
    int8 weights, checked against an exact integer computation, and the weights are the
    float ones within half a step."""
    from ovseg.modeling.int8 import int8_full_range, is_int8_linear

    if full_range and not int8_full_range():
        pytest.skip("this CPU's int8 kernel saturates on 8-bit activations (no VNNI)")
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32, bias=False))
    with torch.no_grad():
        float_model[0].weight[3] = 0.0  # an all-zero row (the scale's eps floor)
    ours = quantize_int8(copy.deepcopy(float_model), full_range=full_range, backend="torchao")
    bits = 8 if full_range else 7
    x = torch.randn(5, 7, 64) * 3
    hidden = x
    for i in (0, 2):
        assert is_int8_linear(ours[i])
        w = ours[i].weight
        step = w.scale.reshape(-1, 1)
        assert (w.qdata.float() * step - float_model[i].weight).abs().le(step / 2 + 1e-7).all()
        expected = _emulated_int8_linear(ours[i], hidden, bits)
        got = ours[i](hidden)
        # float32 scales and accumulation order: agreement to float32 rounding
        assert (got.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
        hidden = F.gelu(got) if i == 0 else got
    # a planted defect the comparison catches: 7-bit activations where 8 were asked
    if full_range:
        other = _emulated_int8_linear(ours[0], x, 7)
        assert (ours[0](x).double() - other).abs().max() > 1e-3 * other.abs().max()


@pytest.mark.parametrize("full_range", [False, True])
@torch.no_grad()
def test_fbgemm_int8_linear_equals_torch_quantize_dynamic(full_range):
    """The fbgemm backend builds each layer itself (no throwaway packing): the result is what
    PyTorch's own ``quantize_dynamic`` with the per-channel qconfig gives, bit for bit; with
    full-range activations, what PyTorch's kernel gives on those weights without
    ``reduce_range``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from ovseg.modeling import int8_fbgemm

    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32, bias=False))
    with torch.no_grad():
        float_model[0].weight[3] = 0.0  # an all-zero row (the scale's eps floor)
    ours = quantize_int8(copy.deepcopy(float_model), full_range=full_range, backend="fbgemm")
    theirs = quantize_dynamic(copy.deepcopy(float_model), {nn.Linear: per_channel_dynamic_qconfig})
    kind = int8_fbgemm.FullRangeDynamicLinear if full_range else type(theirs[0])
    for i in (0, 2):
        assert type(ours[i]) is kind and isinstance(ours[i], type(theirs[i]))
        (w, b), (w_ref, b_ref) = ours[i]._weight_bias(), theirs[i]._weight_bias()
        assert torch.equal(w.int_repr(), w_ref.int_repr())
        assert torch.equal(w.q_per_channel_scales(), w_ref.q_per_channel_scales())
        assert (b is None) == (b_ref is None) and (b is None or torch.equal(b, b_ref))
    x = torch.randn(5, 7, 64) * 3
    if not full_range:
        assert torch.equal(ours(x), theirs(x))
    else:
        packed = theirs[0]._packed_params._packed_params
        hidden = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
        assert torch.equal(ours[0](x), hidden)


@pytest.mark.parametrize("backend", ["torchao", "fbgemm"])
@torch.no_grad()
def test_int8_activation_range_never_saturates(backend):
    """Whatever this CPU's kernel, the range quantize_int8 picks multiplies the worst case
    (every u8 x s8 pair at the top of both ranges) right; where it picks 7 bits, 8 bits
    really do saturate there (why PyTorch and torchao reduce the range)."""
    from ovseg.modeling.int8 import int8_activation_bits

    def worst_case(full_range):
        layer = nn.Linear(64, 8, bias=False)
        layer.weight.fill_(1.0)
        quantized = quantize_int8(nn.Sequential(layer), full_range=full_range, backend=backend)
        return quantized(torch.ones(4, 64))

    assert (worst_case(None) - 64).abs().max() < 1.5  # 7 bits: 63 / 63.5 of each factor
    if int8_activation_bits(backend) == 7:
        assert (worst_case(True) - 64).abs().min() > 16


@pytest.mark.parametrize("backend", ["torchao", "fbgemm"])
@torch.no_grad()
def test_quantize_int8_reaches_every_linear_layer(official_tiny, backend):
    from ovseg.modeling.int8 import is_int8_linear

    model = copy.deepcopy(official_tiny[0])
    visual = quantize_int8(model.clip_adapter.clip_model.visual, backend=backend)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in visual.modules())
    assert not any(type(m) is nn.Linear and not is_int8_linear(m) for m in visual.modules())
    int8 = [m for m in visual.modules() if is_int8_linear(m)]
    assert len(int8) == 4 * len(visual.transformer.resblocks)  # in, out, fc, proj


# int8 quantisation steps are 1/127 of a row's (or channel's) range. Measured on official-tiny,
# CLIP features (unit vectors) / CLIP class probabilities off by 0.037 / 0.006 with 8-bit
# activations (AVX512-VNNI), 0.084 / 0.032 with 7-bit ones (AVX2: ONEDNN_MAX_CPU_ISA=AVX2).
INT8_FEATURE_TOL, INT8_PROB_TOL = 0.15, 0.05


@pytest.mark.parametrize("backend", ["fbgemm", "torchao"])
@torch.no_grad()
def test_int8_clip_branch_and_fusion_against_official(official_tiny, backend):
    """Where int8 matters: the CLIP branch. The int8 tower on the official crops, then the
    Predictor's own crops and fused scores, against the fixture with the bounds its
    probability error implies (``fused_bounds``). Switching the CLIP branch off (4x its
    bound) or using CLIP alone, or a tower without deep mask prompts (features off by 1.4),
    fails; the old argmax-agreement bar let all of them pass."""
    import json

    from ovseg import Predictor
    from tests.conftest import OFFICIAL_TINY
    from tests.official_compare import assert_within, check_clip_tower, fused_bounds

    model, out, image, names = official_tiny
    meta = json.loads((OFFICIAL_TINY / "meta.json").read_text())
    # text tower fp32
    options = InferenceOptions(dtype="int8", int8_backend=backend, text_cache=False)
    predictor = Predictor(copy.deepcopy(model), options=options)
    check_clip_tower(predictor.model, out, INT8_FEATURE_TOL, INT8_PROB_TOL)
    predictor.set_model_input(image.permute(1, 2, 0).numpy(), image.shape[1:])  # its own size
    clip = predictor.clip_features()
    assert torch.equal(clip.valid, out["clip.valid_flag"].bool())  # proposals stay fp32
    ensemble, alone, clip_alone = fused_bounds(out, meta["clip_ensemble_weight"], INT8_PROB_TOL)
    seg = predictor.predict(names)
    assert_within(seg.sem_seg, out["sem_seg"], ensemble, "int8 ensemble")
    only = predictor.predict(names, clip_only=True)
    assert_within(only.sem_seg, clip_alone, alone, "int8 CLIP alone")


@torch.no_grad()
def test_int8_text_tower_against_official(official_tiny):
    """``text_dtype="int8"``: the official class features within the int8 bound of this
    CPU's kernel (measured 0.095 with 8-bit activations, 0.31 with 7-bit ones), and every
    valid mask's CLIP class the official one (probabilities within 0.05 / 0.35: measured
    0.016 / 0.32, where 7-bit text features cost most)."""
    from ovseg import Predictor
    from ovseg.modeling.int8 import int8_activation_bits
    from tests.official_compare import check_clip_tower

    model, out, _, names = official_tiny
    options = InferenceOptions(dtype="int8", text_dtype="int8", text_cache=False)
    quantized = Predictor(copy.deepcopy(model), options=options).model
    text = quantized.encode_text(names)
    assert quantized.clip_adapter.last_text_stats["precision"] == "int8"
    full = int8_activation_bits("torchao") == 8  # the text copy is on torchao
    distance = (text - out["text.class_features"]).norm(dim=-1).max().item()
    assert distance <= (0.15 if full else 0.4), distance
    check_clip_tower(quantized, out, INT8_FEATURE_TOL, 0.05 if full else 0.35, text)
