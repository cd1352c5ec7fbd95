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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ovseg.tta import Augmentation

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
        tta_min_sizes: test-time augmentation (official ``TEST.AUG``, see ``ovseg.tta``): the
            extra short-side sizes, applied to the test-resized image. None follows the
            model config (on when its ``test_aug`` is, with its sizes); ``()`` turns it off.
        tta_max_size: long-side limit of those sizes; None: the config's (3584 published).
        tta_flip: add flipped views; None: the config's (True published).
        sliding_window: run each view in tiles (``TEST.SLIDING_WINDOW``); None follows the
            config, which the official code applies only together with TTA.
        sliding_tile_size, sliding_overlap: tile side (<= 0: by the view's short side) and
            overlap; None: the config's (224 and 2/3).
    """

    fast: bool = True
    dtype: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    top_k: int | None = None
    clip_batch_size: int = 0
    tta_min_sizes: tuple[int, ...] | None = None
    tta_max_size: int | None = None
    tta_flip: bool | None = None
    sliding_window: bool | None = None
    sliding_tile_size: int | None = None
    sliding_overlap: float | None = None

    def __post_init__(self) -> None:
        if self.tta_min_sizes is not None:
            self.tta_min_sizes = tuple(int(s) for s in self.tta_min_sizes)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k}")
        if self.clip_batch_size < 0:
            raise ValueError(f"clip_batch_size must be >= 0, got {self.clip_batch_size}")

    def augmentation(self, config) -> Augmentation | None:
        """The TTA / sliding-window plan for a model ``config`` (``OVSegConfig``), or None for
        the plain single view. Options left None take the config's values."""
        sizes = self.tta_min_sizes
        if sizes is None:
            sizes = tuple(config.test_aug_min_sizes) if config.test_aug else ()
        sliding = self.sliding_window
        if sliding is None:  # the official code slides only inside TTA
            sliding = bool(config.sliding_window and sizes)
        if not sizes and not sliding:
            return None

        def pick(value, default):
            return default if value is None else value

        return Augmentation(
            min_sizes=sizes,
            max_size=pick(self.tta_max_size, config.test_aug_max_size),
            flip=pick(self.tta_flip, config.test_aug_flip) and bool(sizes),
            sliding_window=sliding,
            tile_size=pick(self.sliding_tile_size, config.sliding_tile_size),
            overlap=pick(self.sliding_overlap, config.sliding_overlap),
        )

    def without_augmentation(self) -> InferenceOptions:
        """These options with TTA and sliding window off (what each view runs with)."""
        return dataclasses.replace(self, tta_min_sizes=(), sliding_window=False)

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
