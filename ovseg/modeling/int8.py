"""Dynamic int8 quantisation of the CLIP towers (CPU inference).

``quantize_int8``: PyTorch's dynamic quantisation (``torch.ao.quantization``,
x86/fbgemm engine): every ``nn.Linear`` of the CLIP towers gets int8 weights (per output
channel) and int8 activations quantised per call: on 7 bits, PyTorch's default, unless this
CPU's kernel takes 8 without saturating (measured once per process, ``int8_full_range``: VNNI
CPUs), which halves the activation error. open_clip's attention is an
``nn.MultiheadAttention`` whose input projection is a raw parameter that dynamic quantisation
skips (and whose output projection is marked non-quantisable), so each one is first replaced
by ``SelfAttention``, the same computation with both projections as ``nn.Linear``. That
covers ~97% of the CLIP tower's FLOPs (the patch-embedding convolution, the attention
products and the final projection stay fp32).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.nn.utils import skip_init


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention with its projections as ``nn.Linear``.

    Same computation (scaled dot-product attention over ``heads`` heads, additive or boolean
    ``attn_mask``), but dynamic quantisation can reach the projections. Self-attention only
    (query, key and value the same tensor), no dropout, no attention weights returned.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SelfAttention replaces plain self-attention only")
        d = mha.embed_dim
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        bias = mha.in_proj_bias is not None
        like = {"device": mha.in_proj_weight.device, "dtype": mha.in_proj_weight.dtype}
        # no random init: every weight is copied next
        self.in_proj = skip_init(nn.Linear, d, 3 * d, bias=bias, **like)
        self.out_proj = skip_init(nn.Linear, d, d, bias=mha.out_proj.bias is not None, **like)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        """(B, L, D) (batch_first, else (L, B, D)) -> ((B, L, D), None), like the module it
        replaces with ``need_weights=False``."""
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("SelfAttention takes key = value = query")
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, d = x.shape
        qkv = self.in_proj(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def quantize_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of ``module``'s linear layers, in place (CPU inference).

    Replaces each ``nn.MultiheadAttention`` by ``SelfAttention``, then swaps every
    ``nn.Linear`` for PyTorch's dynamically quantised one (int8 weights per output channel,
    activations quantised per call on the x86 engine, fbgemm where x86 is missing).
    """
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
    if engine is None:
        raise RuntimeError(f"no int8 engine in this PyTorch build (engines: {engines})")
    torch.backends.quantized.engine = engine
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, SelfAttention(child))
    module.float()
    with warnings.catch_warnings():  # torch 2.14 marks quantised tensors as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        full_range = int8_full_range()
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:  # exact type, as quantize_dynamic's lookup
                    setattr(parent, name, _dynamic_int8_linear(child, full_range))
    for block in module.modules():
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "c_fc"):
            # open_clip reads the cast dtype from c_fc.weight, a method once quantised
            mlp.c_fc.int8_original_dtype = torch.float32
    return module


class FullRangeDynamicLinear(DynamicLinear):
    """PyTorch's dynamic int8 linear with activations on the full 8-bit range.

    ``torch.ao``'s module quantises activations to 7 bits (``reduce_range=True``): x86 kernels
    without VNNI add pairs of u8 x s8 products in int16, which 8-bit activations can overflow.
    Kernels that accumulate in int32 (VNNI) do not overflow, and the 8th bit halves the
    quantisation error. ``quantize_int8`` uses this module only where ``int8_full_range()``
    has measured that the kernel does not saturate.
    """

    def forward(self, x):
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)

    def _get_name(self):
        return "FullRangeDynamicQuantizedLinear"


@functools.cache
def int8_full_range() -> bool:
    """Whether this CPU's int8 linear kernel takes 8-bit activations without saturating.

    Measured, not guessed from CPU flags: a product whose every u8 x s8 pair is at the top of
    both ranges (all-ones input and weight quantise to 255 and 127: each pair sums to 64,770,
    past int16) must come out right (64, within the 10% that rules out saturation). With int16
    pair sums (AVX2, AVX512 without VNNI) it comes out about half (32.3 measured on AVX2);
    with int32 accumulation (VNNI) right."""
    layer = skip_init(nn.Linear, 64, 8, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    packed = _dynamic_int8_linear(layer)._packed_params._packed_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = torch.ops.quantized.linear_dynamic(torch.ones(4, 64), packed, reduce_range=False)
    return bool(((y - 64.0).abs() < 6.4).all())


def _dynamic_int8_linear(linear: nn.Linear, full_range: bool = False) -> nn.Module:
    """``torch.ao.nn.quantized.dynamic.Linear.from_float`` under ``per_channel_dynamic_qconfig``
    (what ``quantize_dynamic`` does; the same module, tested bit-equal), without its
    throwaway full-size packing of an empty weight (a third of the time for a large tower).
    ``full_range``: the same weights in a ``FullRangeDynamicLinear``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    observer = per_channel_dynamic_qconfig.weight()
    weight = linear.weight.detach().float()
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    qweight = torch.quantize_per_channel(
        weight, scale.double(), zero_point.long(), observer.ch_axis, observer.dtype
    )
    if (observer.quant_min, observer.quant_max) != (-128, 127):  # a clamp would be needed
        raise RuntimeError("unexpected int8 weight range from per_channel_dynamic_qconfig")
    kind = FullRangeDynamicLinear if full_range else DynamicLinear
    quantized = kind(1, 1, dtype=torch.qint8)  # a 1x1 placeholder packing
    quantized.in_features, quantized.out_features = linear.in_features, linear.out_features
    bias = None if linear.bias is None else linear.bias.detach().float()
    quantized.set_weight_bias(qweight, bias)
    return quantized
