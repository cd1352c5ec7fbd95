"""int8 inference of the CLIP towers on CPU: two backends, one entry point.

``quantize_int8(module, backend)`` replaces each ``nn.MultiheadAttention`` by
``SelfAttention`` (the same computation with both projections as ``nn.Linear``; open_clip's
attention keeps its input projection as a raw parameter that quantisation would skip), then
gives every ``nn.Linear`` int8 weights (one scale per output channel) and int8 activations
quantised per call. That covers ~97% of the CLIP tower's FLOPs (the patch-embedding
convolution, the attention products and the final projection stay float).

- ``"torchao"``: torchao's ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``
  (PyTorch's maintained quantisation): activations quantised per row (per token), an int8 x
  int8 -> int32 ``torch._int_mm`` (oneDNN, VNNI where present), then both scales.
- ``"fbgemm"``: PyTorch's dynamically quantised ``nn.Linear`` (``ovseg.modeling.int8_fbgemm``;
  quantised-tensor weights, an API PyTorch deprecates): activations per tensor, quantised
  while packing, fp32 written by the kernel. Measured faster on the CLIP tower on both CPUs
  of round five (benchmarks/README.md), with the same error (1.0% relative, 8 bits on VNNI).
- ``"auto"`` (``int8_backend``): fbgemm while this PyTorch has it, else torchao.

Activations use the full 8-bit range unless the backend's kernel saturates on it here
(measured once per process: x86 kernels without VNNI add pairs of u8 x s8 products in
int16), where 7 bits are used (PyTorch's ``reduce_range``, torchao's ``reduce_range``).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

INT8_BACKENDS = ("auto", "fbgemm", "torchao")


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention with its projections as ``nn.Linear``.

    Same computation (scaled dot-product attention over ``heads`` heads, additive or boolean
    ``attn_mask``), but quantisation can reach the projections. Self-attention only (query,
    key and value the same tensor), no dropout, no attention weights returned.
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


def use_self_attention(module: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` inside ``module`` by ``SelfAttention``, in
    place (same results; the projections become ``nn.Linear``)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, SelfAttention(child))
    return module


def int8_backend(backend: str = "auto") -> str:
    """The backend ``backend`` means here: "auto" is fbgemm where this PyTorch still has it,
    else torchao."""
    from ovseg.modeling import int8_fbgemm

    if backend not in INT8_BACKENDS:
        raise ValueError(f"int8 backend must be one of {INT8_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "fbgemm" if int8_fbgemm.available() else "torchao"
    return backend


def quantize_int8(
    module: nn.Module, full_range: bool | None = None, backend: str = "auto"
) -> nn.Module:
    """int8 dynamic quantisation of ``module``'s linear layers, in place (CPU inference).

    Replaces each ``nn.MultiheadAttention`` by ``SelfAttention``, makes the module fp32, then
    gives every ``nn.Linear`` (exact type) int8 weights and per-call int8 activations on
    ``backend`` ("torchao", "fbgemm" or "auto", see the module docstring). ``full_range``:
    8-bit activations (True), 7 bits (False), or as this CPU's kernel allows (None).
    """
    backend = int8_backend(backend)
    use_self_attention(module)
    module.float()
    if backend == "fbgemm":
        from ovseg.modeling.int8_fbgemm import quantize_linears

        return quantize_linears(module, full_range)
    quantize_, config = _torchao()
    if full_range is None:
        full_range = int8_full_range()
    quantize_(
        module,
        config(set_inductor_config=False, reduce_range=not full_range),
        filter_fn=lambda m, _name: type(m) is nn.Linear,
    )
    return module


def is_int8_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer with int8 weights (either backend)."""
    if isinstance(getattr(module, "_packed_params", None), nn.Module):  # fbgemm's
        return True
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and type(weight).__name__ == "Int8Tensor"


def int8_activation_bits(backend: str = "auto") -> int:
    """8 where ``backend``'s kernel takes full-range activations here, else 7."""
    if int8_backend(backend) == "fbgemm":
        from ovseg.modeling.int8_fbgemm import full_range_ok

        return 8 if full_range_ok() else 7
    return 8 if int8_full_range() else 7


@functools.cache
def int8_full_range() -> bool:
    """Whether torchao's int8 kernel here takes 8-bit activations without saturating.

    Measured, not guessed from CPU flags: a product whose every pair is at the top of both
    ranges (all-ones input and weight quantise to 127, 255 once shifted to u8 as oneDNN's u8 x
    s8 kernels take it: each pair sums to 64,770, past int16) must come out right (64, within
    the 10% that rules out saturation). Kernels that add pairs in int16 (AVX2, AVX512 without
    VNNI) give about half; VNNI kernels accumulate in int32."""
    layer = skip_init(nn.Linear, 64, 8, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        quantized = quantize_int8(nn.Sequential(layer), full_range=True, backend="torchao")
        y = quantized(torch.ones(4, 64))
    return bool(((y - 64.0).abs() < 6.4).all())


@functools.cache
def _torchao():
    """(``quantize_``, ``Int8DynamicActivationInt8WeightConfig``), imported on first use
    (torchao imports ``torch._dynamo``; its import-time notice about an Enum is silenced)."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:
        raise ImportError(
            "dtype='int8' needs torchao (pip install torchao, or pip install ovseg[int8])"
        ) from e
    finally:
        logger.setLevel(level)
    return quantize_, Int8DynamicActivationInt8WeightConfig
