"""int8 on PyTorch's dynamically quantised ``nn.Linear`` (fbgemm, the x86 engine).

``torch.ao.nn.quantized.dynamic.Linear`` keeps its weights as a quantised tensor
(``torch.quantize_per_channel``), an API PyTorch marks as deprecated; the kernel itself
(``torch.ops.quantized.linear_dynamic``) quantises the input per tensor while packing it and
writes fp32 directly, with no int32 intermediate. On both CPUs measured so far it ran the CLIP
image tower faster than torchao's ``_int_mm`` path (benchmarks/README.md, round five), so
``ovseg.modeling.int8.quantize_int8(backend="fbgemm")`` still uses it where this PyTorch
has it (``available``); torchao is the maintained path and the fallback.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn.utils import skip_init


def available() -> bool:
    """Whether this PyTorch still has the dynamically quantised linear and an x86 engine."""
    try:
        from torch.ao.nn.quantized.dynamic import Linear  # noqa: F401
    except ImportError:
        return False
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def quantize_linears(module: nn.Module, full_range: bool | None = None) -> nn.Module:
    """Swap every ``nn.Linear`` (exact type) of ``module`` for PyTorch's dynamically quantised
    one, in place: int8 weights per output channel, activations quantised per call (8 bits
    when ``full_range``, else PyTorch's 7; None: as ``full_range_ok`` measures)."""
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm") if e in engines), None)
    if engine is None:
        raise RuntimeError(f"no x86 int8 engine in this PyTorch build (engines: {engines})")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():  # torch 2.14 marks quantised tensors as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        if full_range is None:
            full_range = full_range_ok()
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:  # exact type, as quantize_dynamic's lookup
                    setattr(parent, name, dynamic_int8_linear(child, full_range))
    for block in module.modules():
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "c_fc"):
            # open_clip reads the cast dtype from c_fc.weight, a method once quantised
            mlp.c_fc.int8_original_dtype = torch.float32
    return module


def _full_range_class():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeDynamicLinear(DynamicLinear):
        """PyTorch's dynamic int8 linear with activations on the full 8-bit range (its
        default, ``reduce_range``, is 7 bits: x86 kernels without VNNI add pairs of u8 x s8
        products in int16, which 8-bit activations can overflow)."""

        def forward(self, x):
            packed = self._packed_params._packed_params
            return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)

        def _get_name(self):
            return "FullRangeDynamicQuantizedLinear"

    return FullRangeDynamicLinear


FullRangeDynamicLinear = _full_range_class() if available() else None


@functools.cache
def full_range_ok() -> bool:
    """Whether fbgemm's kernel takes 8-bit activations without saturating here (every u8 x s8
    pair at the top of both ranges must multiply right; see ``int8.int8_full_range``)."""
    layer = skip_init(nn.Linear, 64, 8, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    packed = dynamic_int8_linear(layer)._packed_params._packed_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = torch.ops.quantized.linear_dynamic(torch.ones(4, 64), packed, reduce_range=False)
    return bool(((y - 64.0).abs() < 6.4).all())


def dynamic_int8_linear(linear: nn.Linear, full_range: bool = False) -> nn.Module:
    """``torch.ao.nn.quantized.dynamic.Linear.from_float`` under ``per_channel_dynamic_qconfig``
    (what ``quantize_dynamic`` does; the same module, tested bit-equal), without its
    throwaway full-size packing of an empty weight. ``full_range``: the same weights in a
    ``FullRangeDynamicLinear``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    observer = per_channel_dynamic_qconfig.weight()
    weight = linear.weight.detach().float()
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
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
