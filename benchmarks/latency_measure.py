"""The measuring half of ``latency.py``: the image, the masks, one run of the pipeline stage by
stage, FLOPs, matmul peaks, and how close a fast run is to the fp32 reference.

``latency.py`` (the command) reads the arguments, builds the models and writes the report.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.inference.options import DTYPES
from ovseg.modeling.classify import ClipImageFeatures, classify
from ovseg.modeling.fusion import fusion_settings, proposal_class_probs, semantic_fusion
from ovseg.modeling.proposals import Proposals

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STAGES = ("backbone_proposals", "crops", "clip", "fusion")
# A pixel's fp32 decision has a clear margin when its best class score beats the second by
# at least this fraction of the best (benchmarks/README.md, round five, says why 5%)
CLEAR_MARGIN = 0.05
NOISE = 0.01  # the calibration: Gaussian noise of 1% of each feature's norm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_photo(index: int = 0) -> np.ndarray:
    """A real photo (H, W, 3) uint8 from ../shared/data, or seeded noise when absent."""
    photos = sorted((DATA / "ade20k-150-sample").rglob("*.jpg")) + sorted(
        (DATA / "coco-mini").rglob("*.jpg")
    )
    if photos:
        from PIL import Image

        return np.array(Image.open(photos[index % len(photos)]).convert("RGB"))
    return np.random.default_rng(index).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def ade150_names() -> list[str]:
    """The 150 ADE20K class names ovseg evaluates with (``ade20k_150.txt``, the official list).

    Before 2026-12-03 this read ``objectInfo150.csv`` from ../shared/data, whose first synonyms
    repeat one name ("screen"), and fell back to "class 0".."class 149": earlier rounds' text
    figures are for those placeholder names."""
    from ovseg.data.datasets.base import load_names

    return list(load_names("ade20k_150.txt"))


def random_box_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, h, w) float {0, 1}: a filled ellipse inside a random box, per mask."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.arange(h)[:, None].float(), torch.arange(w)[None].float()
    out = torch.zeros(n, h, w)
    for i in range(n):
        bh = int(torch.randint(8, h + 1, (1,), generator=g))
        bw = int(torch.randint(8, w + 1, (1,), generator=g))
        y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
        cy, cx, ry, rx = y0 + bh / 2, x0 + bw / 2, bh / 2, bw / 2
        out[i] = (((ys + 0.5 - cy) / ry) ** 2 + ((xs + 0.5 - cx) / rx) ** 2 <= 1).float()
    return out


class PeakRSS:
    """Peak resident memory (bytes) of this process while the context is open (sampled)."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PipelineRun:
    """One image through ``run_pipeline``: the label map (H, W) at the original size, the
    stage times (seconds) with counts, the (V, C) CLIP features of the valid masks in mask
    order, and what the fusion needs to be rerun on other features (``labels_from``)."""

    label: torch.Tensor
    times: dict
    features: torch.Tensor
    sem_seg: torch.Tensor  # (K, H, W) scores at the original size
    proposals: Proposals
    valid: torch.Tensor


def fuse(model, proposals, features, valid, text, original_size) -> torch.Tensor:
    """(K, H, W) scores at ``original_size`` from (V, C) CLIP features of the valid masks:
    classification, ensemble, semantic fusion, bilinear resize (the official eval path)."""
    clip = ClipImageFeatures(features, valid)
    probs, masks = classify(
        model.clip_adapter, proposals, clip, text, fusion_settings(model.config)
    )
    sem_seg = semantic_fusion(probs, masks)
    return F.interpolate(sem_seg[None], size=original_size, mode="bilinear")[0]


def run_pipeline(
    model, image, names, text, options, masks_override, original_size, top_k=None
) -> PipelineRun:
    """One image through the pipeline, stage by stage (``STAGES``)."""
    device = model.device
    times = {}
    t = time.perf_counter()
    proposals = model.propose(image)
    if masks_override is not None:
        proposals = Proposals(masks_override.to(device), proposals.embeddings)
    text_void = model.clip_adapter.with_void(text)
    if top_k is not None and top_k < len(proposals):
        logits = model.clip_adapter.similarity_logits(proposals.embeddings, text_void)
        keep = proposal_class_probs(logits).amax(1).topk(top_k).indices.sort().values
        proposals = Proposals(proposals.masks[keep], proposals.embeddings[keep])
    sync(device)
    times["backbone_proposals"] = time.perf_counter() - t

    t = time.perf_counter()
    crops, valid, inverse = model.clip_crops(image, proposals.masks, fast=options.fast)
    sync(device)
    times["crops"] = time.perf_counter() - t

    t = time.perf_counter()
    batch = options.clip_batch(device, model.clip_adapter.arch)
    features = model.encode_crops(crops, batch_size=batch)
    if inverse is not None:
        features = features[inverse]
    sync(device)
    times["clip"] = time.perf_counter() - t

    t = time.perf_counter()
    sem_seg = fuse(model, proposals, features, valid, text, original_size)
    label = sem_seg.argmax(0).cpu()
    sync(device)
    times["fusion"] = time.perf_counter() - t
    times["crops_encoded"] = int(crops.crops.shape[0])
    times["masks_valid"] = int(valid.sum())
    return PipelineRun(label, times, features.float().cpu(), sem_seg.cpu(), proposals, valid)


def clear_margin(sem_seg: torch.Tensor, margin: float = CLEAR_MARGIN) -> torch.Tensor:
    """(H, W) bool: pixels whose best score beats the second best by ``margin`` of the best."""
    top = sem_seg.topk(2, dim=0).values
    return (top[0] - top[1]) >= margin * top[0].abs()


def closeness(fast: PipelineRun, reference: PipelineRun) -> dict:
    """How close a fast run is to the reference run of the same image: argmax agreement,
    the cosine between their crop embeddings (min, mean), and the agreement on the pixels
    whose reference decision has a clear margin (with their share)."""
    cosine = F.cosine_similarity(fast.features.float(), reference.features.float(), dim=-1)
    clear = clear_margin(reference.sem_seg)
    same = fast.label == reference.label
    return {
        "argmax_agreement_with_reference": float(same.float().mean()),
        "embedding_cosine_min": float(cosine.min()),
        "embedding_cosine_mean": float(cosine.mean()),
        "clear_margin": CLEAR_MARGIN,
        "clear_margin_pixel_share": float(clear.float().mean()),
        "clear_margin_agreement": float(same[clear].float().mean()) if clear.any() else None,
    }


def noise_calibration(model, reference: PipelineRun, text, original_size, seed=0) -> dict:
    """The agreement proxy's sensitivity: the reference's features plus Gaussian noise of
    ``NOISE`` of each feature's norm, through the same fusion; agreement overall and on the
    clear-margin pixels (what a feature error of that size costs with these weights)."""
    g = torch.Generator().manual_seed(seed)
    feats = reference.features
    noise = torch.randn(feats.shape, generator=g) / feats.shape[-1] ** 0.5
    noisy = feats + NOISE * feats.norm(dim=-1, keepdim=True) * noise
    with torch.inference_mode():
        sem_seg = fuse(
            model, reference.proposals, noisy.to(model.device), reference.valid, text, original_size
        )
    label = sem_seg.argmax(0).cpu()
    same = label == reference.label
    clear = clear_margin(reference.sem_seg)
    return {
        "noise": NOISE,
        "argmax_agreement": float(same.float().mean()),
        "clear_margin_agreement": float(same[clear].float().mean()) if clear.any() else None,
        "embedding_cosine_min": float(F.cosine_similarity(noisy, feats, dim=-1).min()),
    }


def count_flops(model, image_hw: tuple[int, int], crops: int, queries: int, classes: int) -> dict:
    """FLOPs of one image (FlopCounterMode on a meta-device copy: nothing is computed).

    nn.MultiheadAttention's fused inference kernel hides its matmuls from the counter, so it
    is switched off while counting. Returns per-stage counts and ``total``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    cfg = meta.config
    div = cfg.size_divisibility
    h, w = (-(-x // div) * div for x in image_hw)
    s = cfg.clip.image_size
    counts = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode():
            for name, fn in (
                (
                    "backbone_proposals",
                    lambda: meta.proposal_outputs(torch.zeros(1, 3, h, w, device="meta")),
                ),
                (
                    "clip",
                    lambda: meta.clip_adapter.encode_masked(
                        torch.zeros(crops, 3, s, s, device="meta"),
                        torch.zeros(crops, 1, s, s, device="meta"),
                    ),
                ),
            ):
                counter = FlopCounterMode(display=False)
                with counter:
                    fn()
                counts[name] = counter.get_total_flops()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts["fusion"] = 2 * queries * classes * image_hw[0] * image_hw[1]  # the einsum
    counts["total"] = sum(counts.values())
    return counts


def summarize(runs: list[dict], peak_memory: int) -> dict:
    """Median stage and end-to-end times over runs of ``run_pipeline``."""
    stages = {k: statistics.median(r[k] for r in runs) for k in STAGES}
    e2e = statistics.median(sum(r[k] for k in STAGES) for r in runs)
    extra = {k: runs[-1][k] for k in ("crops_encoded", "masks_valid")}
    return {"end_to_end_s": e2e, "stages": stages, "peak_memory_bytes": peak_memory, **extra}


def one_run(fn, device) -> tuple[PipelineRun, int]:
    """(the ``PipelineRun``, peak memory in bytes) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        run = fn()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss.peak
    return run, peak


def measure(fn, repeats: int, warmup: int, device):
    """Run ``fn`` warmup + repeats times; (last ``PipelineRun``, median stage times and peak
    memory)."""
    for _ in range(warmup):
        fn()
    runs, peak = [], 0
    for _ in range(repeats):
        out, p = one_run(fn, device)
        runs.append(out.times)
        peak = max(peak, p)
    return out, summarize(runs, peak)


def measure_interleaved(fast, reference, repeats, ref_repeats, warmup, device, dtype):
    """Fast and reference runs alternated (so both see the same machine load), matmul peaks
    measured between them (the best is kept). Returns (fast_out, fast, ref_out, ref, peak)."""
    peaks = [matmul_peak(dtype, device)]
    if dtype == "int8":  # the parts that stay fp32 are floored by the fp32 peak
        fp32_peaks = [matmul_peak("fp32", device)]
    for _ in range(warmup):
        fast()
    fast_runs, ref_runs, fast_peak, ref_peak = [], [], 0, 0
    fast_out = ref_out = None
    for i in range(max(repeats, ref_repeats)):
        if i < ref_repeats:
            ref_out, p = one_run(reference, device)
            ref_runs.append(ref_out.times)
            ref_peak = max(ref_peak, p)
            print("reference run", json.dumps(ref_out.times), flush=True)
        peaks.append(matmul_peak(dtype, device))
        if dtype == "int8":
            fp32_peaks.append(matmul_peak("fp32", device))
        if i < repeats:
            fast_out, p = one_run(fast, device)
            fast_runs.append(fast_out.times)
            fast_peak = max(fast_peak, p)
            print("fast run", json.dumps(fast_out.times), flush=True)
    peaks.append(matmul_peak(dtype, device))
    result = {"best": max(peaks), "all": peaks}
    if dtype == "int8":
        result.update(fp32_best=max(fp32_peaks), fp32_all=fp32_peaks)
    return (
        fast_out,
        summarize(fast_runs, fast_peak),
        ref_out,
        summarize(ref_runs, ref_peak),
        result,
    )


def matmul_peak(dtype: str, device: torch.device) -> float:
    """Best measured FLOP/s of a square matmul in ``dtype`` ("fp32", "bf16", "int8") on
    ``device``. int8: the kernel ``dtype="int8"`` runs, a dynamically quantised
    ``nn.Linear`` (``ovseg.modeling.int8.quantize_int8``: int8 weights, activations quantised
    per call), on an n x n fp32 input."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    if dtype == "int8":
        from ovseg.modeling.int8 import quantize_int8

        linear = quantize_int8(torch.nn.Sequential(torch.nn.Linear(n, n, bias=False)))
        product = lambda: linear(a)  # noqa: E731
    else:
        a = a.to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        product = lambda: a @ b  # noqa: E731
    best = float("inf")
    with torch.inference_mode():
        for i in range(8):
            sync(device)
            t = time.perf_counter()
            product()
            sync(device)
            if i:
                best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
