"""Latency of one 640-px image through a full-size OVSeg variant, fast path vs reference.

    PYTHONPATH=. python benchmarks/latency.py --model ovseg-swinB-vitL14 --dtype bf16 \\
        --json out.json [--device cpu|cuda] [--repeats 3] [--top-k 30]

Random weights (``build_ovseg(MODELS[name]())``, seed 0), no checkpoint needed. The image is
a real photo from ../shared/data when present (else seeded noise), resized to a 640-px
short side. Random weights give few non-empty masks, so by default (``--masks boxes``) the
proposal model runs as usual and its masks are then replaced by ``--num-masks`` seeded
random ellipses in random boxes (all valid, all distinct): the CLIP branch sees 100 crops of
realistic sizes. ``--masks model`` keeps the model's own masks.

Stages, each timed per run (median over ``--repeats`` runs after ``--warmup``):
``backbone_proposals`` (backbone, pixel decoder, decoder, mask upsampling), ``crops``
(binarise, skip empty/duplicate masks, masked crops), ``clip`` (CLIP image tower with mask
prompts), ``fusion`` (classification, ensemble, semantic fusion, resize back). Text features
are cached per vocabulary, so they are outside the end-to-end time (``text_s``: first call, in
``--text-dtype``, fp32 by default as in the product).

Reported in the JSON (seconds): ``end_to_end_s`` (fast path, chosen dtype), ``reference_s``
(fp32 reference path: per-mask crop loop, CLIP on every crop, official computation),
``floor_s`` (FLOPs of the fast path, counted with FlopCounterMode, over the matmul peak of the
same dtype measured in this run), ``stages`` and more.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from ovseg.data.transforms import resize_shortest_edge  # noqa: E402
from ovseg.inference.options import DTYPES, InferenceOptions, native_bf16, prepare_model  # noqa: E402
from ovseg.modeling.classify import ClipImageFeatures, classify  # noqa: E402
from ovseg.modeling.fusion import fusion_settings, proposal_class_probs, semantic_fusion  # noqa: E402
from ovseg.modeling.int8 import int8_full_range  # noqa: E402
from ovseg.modeling.proposals import Proposals  # noqa: E402
from ovseg.modeling.text_cache import default_folder as default_text_cache  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STAGES = ("backbone_proposals", "crops", "clip", "fusion")


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


def run_pipeline(model, image, names, text, options, masks_override, original_size, top_k=None):
    """One image through the pipeline, stage by stage. Returns (label map, stage times)."""
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
    clip = ClipImageFeatures(features, valid)
    probs, masks = classify(
        model.clip_adapter, proposals, clip, text, fusion_settings(model.config)
    )
    sem_seg = semantic_fusion(probs, masks)
    sem_seg = F.interpolate(sem_seg[None], size=original_size, mode="bilinear")[0]
    label = sem_seg.argmax(0).cpu()
    sync(device)
    times["fusion"] = time.perf_counter() - t
    times["crops_encoded"] = int(crops.crops.shape[0])
    times["masks_valid"] = int(valid.sum())
    return label, times


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


def one_run(fn, device) -> tuple[torch.Tensor, dict, int]:
    """(output, stage times, peak memory in bytes) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        out, times = fn()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss.peak
    return out, times, peak


def measure(fn, repeats: int, warmup: int, device):
    """Run ``fn`` warmup + repeats times; median stage times, peak memory, last output."""
    for _ in range(warmup):
        out, _ = fn()
    runs, peak = [], 0
    for _ in range(repeats):
        out, times, p = one_run(fn, device)
        runs.append(times)
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
            ref_out, times, p = one_run(reference, device)
            ref_runs.append(times)
            ref_peak = max(ref_peak, p)
            print("reference run", json.dumps(times), flush=True)
        peaks.append(matmul_peak(dtype, device))
        if dtype == "int8":
            fp32_peaks.append(matmul_peak("fp32", device))
        if i < repeats:
            fast_out, times, p = one_run(fast, device)
            fast_runs.append(times)
            fast_peak = max(fast_peak, p)
            print("fast run", json.dumps(times), flush=True)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument(
        "--text-dtype",
        default="fp32",
        choices=sorted(DTYPES),
        help="text tower precision of the fast path (default fp32, as the product)",
    )
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reference-repeats", type=int, default=1)
    parser.add_argument("--masks", default="boxes", choices=["boxes", "model"])
    parser.add_argument(
        "--num-masks", type=int, default=0, help="masks for --masks boxes (0: one per query)"
    )
    parser.add_argument("--top-k", type=int, default=30, help="0 skips the top-k measurement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--photo", type=int, default=0, help="index of the photo to use")
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="run bf16 even on a CPU without native bf16 (very slow; refused otherwise)",
    )
    parser.add_argument(
        "--flops-only", action="store_true", help="print the FLOP counts (100 crops) and exit"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    emulated = device.type == "cpu" and not native_bf16()
    if emulated and "bf16" in (args.dtype, args.text_dtype) and not args.allow_emulated_bf16:
        capability = torch.backends.cpu.get_cpu_capability()
        error = (
            f"this CPU has no native bf16 (AVX512-BF16 or AMX; capability {capability}): "
            "PyTorch emulates bf16 here, measured at 0.3-0.9 GFLOP/s for matmuls and "
            "convolutions against 85-160 in fp32, so one image would take tens of minutes "
            "and the bf16 figures would mean nothing; pass --allow-emulated-bf16 to run anyway"
        )
        print(f"latency.py: {error}", file=sys.stderr)
        write_json(
            Path(args.json),
            {
                "model": args.model,
                "dtype": args.dtype,
                "device": "cpu",
                "cpu_capability": capability,
                "error": error,
            },
        )
        return 2
    torch.manual_seed(0)
    reference_model = (
        ovseg.build_ovseg(ovseg.modeling.variants.MODELS[args.model]()).to(device).eval()
    )
    model = copy.deepcopy(reference_model)
    # the text tower runs once, outside the end-to-end time; no disk cache, so text_s is a
    # real first encoding in this dtype
    options = InferenceOptions(
        dtype=args.dtype, text_dtype=args.text_dtype, compile=args.compile, text_cache=False
    )
    prepare_model(model, options)
    if args.compile:
        model.backbone.compile(dynamic=True)
        # encode_masked uses the tower's blocks directly: compile the method itself
        clip = model.clip_adapter
        clip.encode_masked = torch.compile(clip.encode_masked, dynamic=True)
    prepare_model(reference_model, InferenceOptions(fast=False, channels_last=False))

    photo = load_photo(args.photo)
    cfg = model.config
    resized = resize_shortest_edge(photo, cfg.min_size_test, cfg.max_size_test)
    image = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).to(device)
    h, w = image.shape[-2:]
    num_masks = args.num_masks or cfg.num_queries
    if args.masks == "boxes" and num_masks != cfg.num_queries:
        raise ValueError(f"--num-masks must equal the {cfg.num_queries} queries of {args.model}")
    override = random_box_masks(num_masks, h, w) if args.masks == "boxes" else None
    names = ade150_names()
    if args.flops_only:
        counts = count_flops(reference_model, (h, w), cfg.num_queries, cfg.num_queries, len(names))
        print(json.dumps(counts))
        return 0
    t = time.perf_counter()
    with torch.inference_mode():
        text = model.encode_text(names)
    text_s = time.perf_counter() - t
    # the reference uses fp32 text features (the text tower follows the dtype since int8/bf16
    # text); the on-disk cache makes later benchmark runs skip this fp32 encoding
    reference_model.clip_adapter.text_cache_dir = default_text_cache()
    with torch.inference_mode():
        reference_text = reference_model.encode_text(names)
    original = photo.shape[:2]

    def fast(top_k=None):
        with torch.inference_mode():
            return run_pipeline(model, image, names, text, options, override, original, top_k)

    def reference():
        with torch.no_grad():
            return run_pipeline(
                reference_model,
                image,
                names,
                reference_text,
                InferenceOptions(fast=False),
                override,
                original,
            )

    print(
        f"{args.model} {args.dtype} on {device}, image {h}x{w}, threads {torch.get_num_threads()}"
    )
    fast_label, fast_stats, ref_label, ref_stats, peaks = measure_interleaved(
        fast,
        reference,
        args.repeats,
        args.reference_repeats,
        args.warmup,
        device,
        args.dtype,
    )
    peak = peaks["best"]
    flop_counts = count_flops(
        reference_model, (h, w), fast_stats["crops_encoded"], cfg.num_queries, len(names)
    )
    flops = flop_counts["total"]
    if args.dtype == "int8":
        # int8 covers the CLIP tower's linear layers; the rest runs at the fp32 peak
        floor_s = flop_counts["clip"] / peak + (flops - flop_counts["clip"]) / peaks["fp32_best"]
    else:
        floor_s = flops / peak
    print("fast", json.dumps(fast_stats), "\nreference", json.dumps(ref_stats), flush=True)
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "text_dtype": args.text_dtype,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # int8: activations on 8 bits where the kernel does not saturate (VNNI), else 7
        "int8_activation_bits": (8 if int8_full_range() else 7) if args.dtype == "int8" else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "image_hw": [h, w],
        "masks": args.masks,
        "num_masks": num_masks,
        "vocabulary_size": len(names),
        "end_to_end_s": fast_stats["end_to_end_s"],
        "images_per_s": 1.0 / fast_stats["end_to_end_s"],
        "stages": fast_stats["stages"],
        "peak_memory_bytes": fast_stats["peak_memory_bytes"],
        "crops_encoded": fast_stats["crops_encoded"],
        "masks_valid": fast_stats["masks_valid"],
        "reference_s": ref_stats["end_to_end_s"],
        "reference_stages": ref_stats["stages"],
        "reference_peak_memory_bytes": ref_stats["peak_memory_bytes"],
        "speedup_over_reference": ref_stats["end_to_end_s"] / fast_stats["end_to_end_s"],
        "flops": flops,
        "flops_by_stage": flop_counts,
        "matmul_peak_flops_per_s": peak,
        "matmul_peaks_measured": peaks["all"],
        "floor_s": floor_s,
        "ratio_to_floor": fast_stats["end_to_end_s"] / floor_s,
        "argmax_agreement_with_reference": float((fast_label == ref_label).float().mean()),
        "text_s": text_s,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "compile": args.compile,
    }
    if args.dtype == "int8":
        result["fp32_matmul_peak_flops_per_s"] = peaks["fp32_best"]
        result["fp32_matmul_peaks_measured"] = peaks["fp32_all"]
    if args.top_k:
        # the model is warm already; no extra warm-up for the top-k runs
        top_label, top_stats = measure(lambda: fast(args.top_k), args.repeats, 0, device)
        result["top_k"] = {
            "k": args.top_k,
            "end_to_end_s": top_stats["end_to_end_s"],
            "stages": top_stats["stages"],
            "speedup_over_all": fast_stats["end_to_end_s"] / top_stats["end_to_end_s"],
            "argmax_agreement_with_all": float((top_label == fast_label).float().mean()),
        }
    write_json(Path(args.json), result)
    print(json.dumps(result, indent=1))
    return 0


def write_json(path: Path, result: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    sys.exit(main())
