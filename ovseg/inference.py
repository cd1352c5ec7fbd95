"""Inference options: the fast path, bf16, channels_last, ``torch.compile`` and top-k.

``InferenceOptions()`` (the default) keeps the official fp32 outputs: empty and duplicate
binary masks are skipped (identical masks are encoded once), all crops go through CLIP in
one call, crops are made for all masks at once with tensor ops on CUDA (on a CPU the official
per-mask loop is faster), everything runs under ``torch.inference_mode``. These change
nothing but float rounding. ``fast=False`` selects the reference path: the official per-mask crop loop and
CLIP on every non-empty crop. Opt-in knobs that do change outputs: ``dtype="bf16"`` and
``top_k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class InferenceOptions:
    """How a ``Predictor`` runs the model.

    Attributes:
        fast: duplicate-mask skipping, batched crops on CUDA (False: the reference path).
        dtype: "fp32" (official) or "bf16": the backbone, pixel decoder and CLIP image tower
            get bf16 weights (autocast alone leaves most of the time in fp32 on CPU); the
            transformer decoder, text tower, classification and fusion stay fp32.
        channels_last: convolutional parts in channels_last memory format.
        compile: ``torch.compile`` the backbone and the CLIP image tower (first call slow).
        top_k: keep only the k proposals with the highest proposal score (max class
            probability of the proposal branch) before the CLIP branch; None keeps all.
        clip_batch_size: crops per CLIP call (0: all crops in one call).
    """

    fast: bool = True
    dtype: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    top_k: int | None = None
    clip_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k}")
        if self.clip_batch_size < 0:
            raise ValueError(f"clip_batch_size must be >= 0, got {self.clip_batch_size}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def crop_method(self) -> str:
        return "fast" if self.fast else "reference"


def image_side_modules(model) -> list[nn.Module]:
    """The modules that take the dtype option: backbone, pixel decoder, CLIP image tower."""
    modules = [model.clip_adapter.clip_model.visual]
    if model.sem_seg_head is not None:  # None: a CLIP-branch-only model
        modules[:0] = [model.backbone, model.sem_seg_head.pixel_decoder]
    return modules


def prepare_model(model, options: InferenceOptions):
    """Apply ``options`` to ``model`` in place (dtype, memory format) and return it.

    The model's other parts are untouched; its methods cast inputs to each module's weight
    dtype, so a bf16 model keeps working everywhere, with fp32 outputs.
    """
    for module in image_side_modules(model):
        module.to(options.torch_dtype)
        if options.channels_last:
            module.to(memory_format=torch.channels_last)
    return model.eval()


def compiled(fn: Callable, options: InferenceOptions) -> Callable:
    """``torch.compile(fn)`` when ``options.compile``, else ``fn`` (dynamic shapes)."""
    return torch.compile(fn, dynamic=True) if options.compile else fn
