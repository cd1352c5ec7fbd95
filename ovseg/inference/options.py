"""Inference options: the fast path, bf16, channels_last, ``torch.compile`` and top-k.

``InferenceOptions()`` (the default) keeps the official fp32 outputs: empty and duplicate
binary masks are skipped (identical masks are encoded once), all crops go through CLIP in
one call, crops are made for all masks at once with tensor ops on CUDA (on a CPU the official
per-mask loop is faster), everything runs under ``torch.inference_mode``. These change
nothing but float rounding. ``fast=False`` selects the reference path: the official per-mask crop loop and
CLIP on every non-empty crop. Opt-in knobs that do change outputs: ``dtype="bf16"``,
``dtype="int8"``, ``dtype="auto"`` (the fastest path this machine runs within the agreement
targets, from one rule table: ``ovseg.inference.auto``) and ``top_k``.

int8: ``ovseg.modeling.int8``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ovseg.inference import auto
from ovseg.inference.tta import Augmentation
from ovseg.modeling import text_cache
from ovseg.modeling.int8 import INT8_BACKENDS

# the float dtype of the image side's weights per option; int8 quantises the CLIP towers'
# linear layers and keeps every other weight fp32
DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.float32,
}
AUTO = "auto"  # dtype / text_dtype: chosen per machine by ovseg.inference.auto.AUTO_RULES
CUDA_ONLY_DTYPES = ("fp16",)  # the fp16 path is made and measured for GPUs
# options that change float rounding only (or nothing): left out of the outputs' record
# (tf32 is recorded: it is the one that leaves the official fp32 arithmetic)
ROUNDING_ONLY = (
    "fast",
    "channels_last",
    "compile",
    "cuda_graphs",
    "text_cache",
    "text_cache_max_mb",
)
CPU_CLIP_BATCH = 8  # at most this many crops per CLIP image-tower call on CPU
CPU_CLIP_HIDDEN_BYTES = 14 * 2**20  # and at most this much fp32 MLP activation per call
GPU_CLIP_BATCH = 1024  # at most this many crops per call on GPUs (activation memory)


@dataclass
class InferenceOptions:
    """How a ``Predictor`` runs the model.

    Attributes:
        fast: duplicate-mask skipping, batched crops on CUDA (False: the reference path).
        dtype: "fp32" (official), "bf16", "fp16" or "int8", for the image side. bf16 and
            fp16: the backbone, pixel decoder and CLIP image tower get bf16 / fp16 weights
            (autocast alone leaves most of the time in fp32 on CPU); on a CPU the CLIP image
            tower keeps its residual stream, LayerNorms and embeddings in fp32 and runs its
            products in bf16 under autocast (``products_in``; feature error 0.4% against
            0.9% all-bf16, round five); on a GPU the tower's blocks run through
            ``ovseg.modeling.clip_branch.fused_block`` (fewer memory passes, same
            computation up to rounding). fp16 runs on CUDA only
            (the authors' Hugging Face space runs CLIP under fp16 autocast on GPU). int8: the linear layers of the CLIP
            image tower are quantised (``quantize_int8``; CPU only), the rest stays fp32.
            The transformer decoder, classification and fusion stay fp32 in all cases.
            Only CPUs with native bf16 (AVX512-BF16 or AMX) run bf16 fast; elsewhere it is
            far slower than fp32 (``native_bf16``). "auto": the fastest of these that meets
            the agreement targets on this machine (``ovseg.inference.auto.AUTO_RULES``,
            measured; ``resolved`` turns it into an explicit dtype).
        int8_backend: "auto" (default: fbgemm where this PyTorch has it, else torchao),
            "fbgemm" or "torchao" (``ovseg.modeling.int8``); with dtype "auto" the rule
            table's backend.
        text_dtype: the text tower's precision, "fp32" (default, whatever ``dtype``; "auto"
            when ``dtype`` is "auto" and this is left None), "auto" (the fastest precision
            whose text features stay within cosine 0.9999 of fp32 here), "bf16"
            or "fp16" (autocast; fp16 on CUDA only) or "int8" (a quantised copy of the tower). Text features are made
            once per vocabulary and kept on disk, while their precision decides most of
            the disagreement with fp32: measured with random weights, int8 image + int8
            text kept 85% of the fp32 labels, int8 image + fp32 text 98%
            (``benchmarks/README.md``). A lower text precision only makes the first query
            of a new vocabulary faster.
        channels_last: convolutional parts in channels_last memory format.
        compile: ``torch.compile`` the CLIP image tower's residual blocks (one compile of the
            block's code serves all of them, dynamic batch; the first call is slow:
            ``ovseg.inference.acceleration.compile_clip_blocks``).
        cuda_graphs: replay the proposal model (backbone, pixel decoder, decoder) from CUDA
            graphs, one recorded per input size (``GraphedProposals``): one launch instead of
            thousands, for one image at a time on a GPU. CUDA only; each size recorded holds
            its own memory (at most 4 kept).
        top_k: keep only the k proposals with the highest proposal score (max class
            probability of the proposal branch) before the CLIP branch; None keeps all.
        clip_batch_size: crops per CLIP call; 0: all crops in one call; None (default): on
            a CPU with the fast path, as many as keep the MLP's activations within 14 MiB,
            at most 8 (fp32 and int8: 6 for ViT-B/16, 3 for ViT-L/14; bf16, half the bytes:
            8 and 6; the activations stay in cache; ViT-B
            8 per call ran 1.2x the speed of 100 at once in fp32, 1.4x in int8; ViT-L int8
            3 per call 1.1-1.25x 8 per call on 16 crops alone, within the noise end to end);
            on a GPU with the fast path at most 1024 (the crops of ~10 images of
            ``Predictor.predict_batch``: ViT-L/14 bf16 needs ~2 GiB of MLP activations per
            1024), else all in one call.
            int8 quantises activations per call, so this choice changes int8 outputs a
            little; fp32 and bf16 outputs change only by rounding.
        tta: test-time augmentation (official ``TEST.AUG``, see ``ovseg.inference.tta``) on
            (True), off (False), or as the model config says (None: on when its
            ``test_aug`` is).
        tta_min_sizes: the TTA short-side sizes, applied to the test-resized image; giving
            them turns TTA on unless ``tta`` is False. None: the config's sizes.
        tta_max_size: long-side limit of those sizes; None: the config's (3584 published).
        tta_flip: add flipped views; None: the config's (True published).
        sliding_window: run each view in tiles (``TEST.SLIDING_WINDOW``); None follows the
            config, which the official code applies only together with TTA.
        sliding_tile_size, sliding_overlap: tile side (<= 0: by the view's short side) and
            overlap; None: the config's (224 and 2/3).
        tf32: let CUDA convolutions and matmuls use TF32 inside ovseg's calls. False
            (default): fp32 work runs in IEEE fp32 as the official computation, whatever
            the process-wide PyTorch setting (PyTorch's own default allows TF32 in cuDNN
            convolutions, which moved 0.04% of the official fixture's pixels on an H200;
            ``ovseg.modeling.precision``). The caller's setting is restored after each
            call. No effect on CPUs.
        text_cache: keep class text features on disk under ``ovseg_home()/text-features``
            (keyed by text-tower weights, templates, precision and names), so a vocabulary
            seen before skips the text tower, also in a new process; False: memory only.
        text_cache_max_mb: bound of that folder and of the model's memory cache of text
            features, least recently used evicted first (``ovseg.modeling.text_cache``);
            None: ``$OVSEG_TEXT_CACHE_MAX_MB``, else 256.
        granularity: demo mode's default mask selection when ``predict`` gets none, in
            [0, 1]: lower keeps more masks per class. None: the authors' SAM space's 0.8
            with SAM proposals, 1 (each class's best mask, the official demo) otherwise.
    """

    fast: bool = True
    dtype: str = "fp32"
    text_dtype: str | None = None  # None: "auto" when dtype is "auto", else "fp32"
    int8_backend: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    top_k: int | None = None
    clip_batch_size: int | None = None
    tta: bool | None = None
    tta_min_sizes: tuple[int, ...] | None = None
    tta_max_size: int | None = None
    tta_flip: bool | None = None
    sliding_window: bool | None = None
    sliding_tile_size: int | None = None
    sliding_overlap: float | None = None
    text_cache: bool = True
    text_cache_max_mb: float | None = None
    tf32: bool = False
    granularity: float | None = None

    def __post_init__(self) -> None:
        if self.text_cache_max_mb is not None:
            text_cache.max_bytes_from(self.text_cache_max_mb)  # refuses < 0 and NaN
        if self.granularity is not None and not 0.0 <= self.granularity <= 1.0:
            raise ValueError(f"granularity must be in [0, 1], got {self.granularity}")
        if self.tta_min_sizes is not None:
            self.tta_min_sizes = tuple(int(s) for s in self.tta_min_sizes)
        if self.text_dtype is None:
            self.text_dtype = AUTO if self.dtype == AUTO else "fp32"
        accepted = sorted(DTYPES) + [AUTO]
        if self.dtype not in accepted:
            raise ValueError(f"dtype must be one of {accepted}, got {self.dtype!r}")
        if self.text_dtype not in accepted:
            raise ValueError(f"text_dtype must be one of {accepted}, got {self.text_dtype!r}")
        if self.int8_backend not in INT8_BACKENDS:
            raise ValueError(
                f"int8_backend must be one of {list(INT8_BACKENDS)}, got {self.int8_backend!r}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k}")
        if self.clip_batch_size is not None and self.clip_batch_size < 0:
            raise ValueError(f"clip_batch_size must be >= 0, got {self.clip_batch_size}")

    def augmentation(self, config) -> Augmentation | None:
        """The TTA / sliding-window plan for a model ``config`` (``OVSegConfig``), or None for
        the plain single view. Options left None take the config's values."""
        on = self.tta
        if on is None:
            on = bool(self.tta_min_sizes) or (self.tta_min_sizes is None and config.test_aug)
        sizes = self.tta_min_sizes if self.tta_min_sizes is not None else config.test_aug_min_sizes
        sizes = tuple(sizes) if on else ()
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

    def record(self) -> dict:
        """The options that shape the outputs, JSON-ready (``PredictorSpec.record``): every
        field except ``ROUNDING_ONLY`` ones, so a new option is recorded by default."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name not in ROUNDING_ONLY:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def resolved(self, device: torch.device | str) -> InferenceOptions:
        """These options with "auto" replaced by the dtypes ``ovseg.inference.auto.choose``
        picks for ``device`` on this machine (unchanged when nothing is "auto")."""
        if AUTO not in (self.dtype, self.text_dtype):
            return self
        rule = auto.choose(device)
        picked = self.dtype == AUTO
        return dataclasses.replace(
            self,
            dtype=rule.dtype if picked else self.dtype,
            text_dtype=rule.text_dtype if self.text_dtype == AUTO else self.text_dtype,
            int8_backend=rule.backend if picked and rule.dtype == "int8" else self.int8_backend,
        )

    def choice(self, device: torch.device | str) -> dict:
        """What runs on ``device`` with these options, JSON-ready: ``cpu_capabilities`` (the
        flags ``auto`` reads), ``chosen`` ("dtype/backend" of the image side, e.g.
        "int8/torchao"), ``text_dtype``, and ``requested`` (the dtype asked for)."""
        final = self.resolved(device)
        return {
            "requested": self.dtype,
            "cpu_capabilities": auto.capabilities(device),
            "chosen": auto.chosen(final.dtype, final.int8_backend),
            "text_dtype": final.text_dtype,
        }

    def without_augmentation(self) -> InferenceOptions:
        """These options with TTA and sliding window off (what each view runs with)."""
        return dataclasses.replace(self, tta=False, sliding_window=False)

    def clip_batch(self, device: torch.device | str, arch=None) -> int:
        """Crops per CLIP call on ``device`` (``clip_batch_size`` with None resolved) for a
        CLIP image tower of ``arch`` (a ``ClipArch``; None: ``CPU_CLIP_BATCH``)."""
        if self.clip_batch_size is not None:
            return self.clip_batch_size
        if not self.fast:
            return 0
        if torch.device(device).type != "cpu":
            return GPU_CLIP_BATCH
        if arch is None:
            return CPU_CLIP_BATCH
        item = 2 if self.dtype in ("bf16", "fp16") else 4  # int8 returns fp32 activations
        hidden = (arch.grid**2 + 1) * 4 * arch.vision_width * item  # bytes per crop
        return max(1, min(CPU_CLIP_BATCH, CPU_CLIP_HIDDEN_BYTES // hidden))

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == AUTO:
            raise ValueError("dtype 'auto' has no torch dtype until resolved(device)")
        return DTYPES[self.dtype]

    @property
    def crop_method(self) -> str:
        return "fast" if self.fast else "reference"
