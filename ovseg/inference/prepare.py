"""``prepare_model``: the copy of a model that a ``Predictor`` runs for its options.

The caller's model is never changed. Each set of options gets its own copy of the module
tree, which shares every tensor it does not convert (bf16 / fp16 image side, channels_last
convolution weights and the int8 tower are the copy's own); copies are kept weakly per
model, options and weights state. ``products_in`` and ``native_bf16`` are the bf16 rules.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref

import torch
from torch import nn

from ovseg import timing
from ovseg.inference.options import CUDA_ONLY_DTYPES, InferenceOptions
from ovseg.modeling import text_cache
from ovseg.modeling.clip_branch import fusable
from ovseg.modeling.int8 import quantize_int8


def image_side_modules(model) -> list[nn.Module]:
    """The modules that take the dtype option: backbone, pixel decoder, CLIP image tower."""
    modules = [model.clip_adapter.clip_model.visual]
    if model.sem_seg_head is not None:  # None: a CLIP-branch-only model
        modules[:0] = [model.backbone, model.sem_seg_head.pixel_decoder]
    return modules


_PREPARE_LOCK = threading.RLock()
# model -> {options and weights state -> its prepared copy}, both weak: a copy lives as long
# as a predictor uses it, and nothing here keeps a model alive
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure_copy(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A copy of ``module``'s tree of modules whose parameters and buffers are the same
    tensors: replacing a tensor or a child in the copy leaves ``module`` as it is."""
    if id(module) in memo:  # a module used twice stays one module
        return memo[id(module)]
    new = copy.copy(module)
    memo[id(module)] = new
    new.__dict__["_parameters"] = dict(module._parameters)
    new.__dict__["_buffers"] = dict(module._buffers)
    new.__dict__["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    new.__dict__["_modules"] = {
        name: None if child is None else _structure_copy(child, memo)
        for name, child in module._modules.items()
    }
    return new


def _convert_tensors(
    module: nn.Module, dtype: torch.dtype, channels_last: bool, products_only: bool = False
) -> None:
    """Give ``module``'s floating-point parameters and buffers ``dtype`` (and 4-D ones the
    channels_last layout) as new tensors; tensors already so are kept (shared).
    ``products_only``: ``dtype`` for the weights of linear layers, convolutions and attention
    input projections, fp32 for every other tensor (what ``products_in`` does in place)."""
    converted: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor, target: torch.dtype) -> torch.Tensor:
        if id(t) not in converted:
            new = t.detach()
            if t.is_floating_point() and t.dtype != target:
                new = new.to(target)
            if channels_last and new.dim() == 4:
                new = new.contiguous(memory_format=torch.channels_last)
            if new.data_ptr() == t.data_ptr() and new.dtype == t.dtype:
                converted[id(t)] = t
            elif isinstance(t, nn.Parameter):
                converted[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                converted[id(t)] = new
        return converted[id(t)]

    for sub in module.modules():
        product = isinstance(sub, (nn.Linear, nn.Conv2d))
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is None:
                    continue
                in_proj = isinstance(sub, nn.MultiheadAttention) and name.startswith("in_proj_")
                keep = not products_only or product or in_proj
                table[name] = convert(tensor, dtype if keep else torch.float32)


def _weights_state(model: nn.Module) -> tuple:
    """Identity and version of every tensor: a prepared copy is rebuilt after the caller
    changes, replaces or trains its model's weights."""
    return tuple(
        (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype)
        for t in (*model.parameters(), *model.buffers())
    )


@timing.stage("prepare")
def prepare_model(model, options: InferenceOptions):
    """The model as ``options`` run it (dtype, memory format, int8, text precision and
    cache); ``model`` itself is never changed.

    The result is a copy of ``model``'s module tree that shares every tensor it does not
    convert: with fp32 weights it shares all of them (4-D convolution weights get a
    channels_last copy when ``options.channels_last``); bf16 / fp16 give the backbone, pixel
    decoder and CLIP image tower half-precision copies (the text tower, decoder and heads
    stay shared fp32); int8 quantises the copy's CLIP image tower. Copies are kept (weakly)
    per model, option set and weights state, so predictors with the same options share one
    and one for each dtype can live side by side; a change of ``model``'s weights gives a
    new copy. The copy's methods cast inputs to each module's weight dtype, so a bf16 copy
    has fp32 outputs. ``text_dtype`` is recorded on the copy's CLIP branch
    (``clip_adapter.text_precision``), which runs the text tower accordingly (fp32, bf16
    autocast, or an int8 copy of the tower). "auto" dtypes are resolved for the model's
    device first (``InferenceOptions.resolved``).
    """
    options = options.resolved(model.device)
    for name in ("dtype", "text_dtype"):
        value = getattr(options, name)
        if value == "int8" and model.device.type != "cpu":
            raise ValueError(f"{name}='int8' runs on CPU only; use bf16 or fp16 on GPUs")
        if value in CUDA_ONLY_DTYPES and model.device.type != "cuda":
            raise ValueError(
                f"{name}={value!r} runs on CUDA only (the model is on {model.device.type}); "
                "on a CPU use bf16 (CPUs with AVX512-BF16 or AMX), int8 or fp32"
            )
    bf16 = "bf16" in (options.dtype, options.text_dtype)
    if bf16 and model.device.type == "cpu" and not native_bf16():
        warnings.warn(
            "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 runs far slower than fp32 "
            "here; use dtype fp32 or int8",
            stacklevel=2,
        )
    key = (
        options.dtype,
        options.text_dtype,
        options.int8_backend,
        options.channels_last,
        options.cuda_graphs,
        options.text_cache,
        options.text_cache_max_mb,
        options.compile,
        str(model.device),
        _weights_state(model),
    )
    with _PREPARE_LOCK:
        copies = _PREPARED.setdefault(model, weakref.WeakValueDictionary())
        prepared = copies.get(key)
        if prepared is None:
            prepared = _prepare_copy(model, options)
            copies[key] = prepared
    return prepared


def _prepare_copy(model, options: InferenceOptions):
    prepared = _structure_copy(model, {})
    clip = prepared.clip_adapter
    # bf16 on CPU: the CLIP image tower's products in bf16, its residual stream, LayerNorms
    # and embeddings in fp32 (autocast): half the feature error of an all-bf16 tower
    mixed = options.dtype == "bf16" and model.device.type == "cpu"
    clip.image_autocast = torch.bfloat16 if mixed else None
    # bf16 / fp16 on a GPU: the CLIP image tower's blocks in fewer memory passes (fused_block)
    blocks = clip.clip_model.visual.transformer.resblocks
    clip.fused_blocks = (
        options.dtype in ("bf16", "fp16")
        and model.device.type == "cuda"
        and not options.compile
        and all(fusable(block) for block in blocks)
    )
    for module in image_side_modules(prepared):
        products_only = mixed and module is clip.clip_model.visual
        _convert_tensors(module, options.torch_dtype, options.channels_last, products_only)
    if options.cuda_graphs and prepared.has_proposal_head:
        from ovseg.inference.acceleration import graph_proposals

        graph_proposals(prepared)
    if options.dtype == "int8":
        quantize_int8(clip.clip_model.visual, backend=options.int8_backend)
    clip.text_precision = options.text_dtype
    clip.text_cache_max_bytes = text_cache.max_bytes_from(options.text_cache_max_mb)
    clip.text_cache_dir = text_cache.default_folder() if options.text_cache else None
    return prepared.eval()


def products_in(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with the weights of its linear layers, convolutions and attention
    projections in ``dtype`` and every other parameter and buffer (LayerNorms, embeddings,
    prompts) in fp32, in place; run it under ``torch.autocast`` in ``dtype`` (the residual
    stream then stays fp32: a linear's ``dtype`` output added to it gives fp32)."""
    module.float()
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.to(dtype)
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "in_proj_bias"):
                p = getattr(m, name)
                if p is not None:
                    p.data = p.data.to(dtype)
    return module


def native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
    return "avx512_bf16" in flags or "amx_bf16" in flags
