"""Images per second through a full-size OVSeg variant, several images per batch.

    PYTHONPATH=. python benchmarks/throughput.py --model ovseg-swinB-vitL14 --device cuda \\
        --variants bf16 bf16+graphs fp16+graphs --batch-sizes 1 8 16 32 --images 64 \\
        --json out.json

Random weights (seed 0) and the inputs of ``latency.py``: ``--images`` copies of one photo
resized to the model's test size, each with 100 seeded random ellipses for masks (one of
``--mask-sets`` sets; ``latency.py --masks boxes``), the 150 ADE-20K names. A variant is a
dtype with optional ``+graphs`` (``InferenceOptions(cuda_graphs=True)``), ``+compile``
(``compile=True``), ``+unfused`` (open_clip's own CLIP blocks instead of ``fused_block``) and
``@sizes`` (its own batch sizes). Each batch runs the batched image side:

- ``proposals``: ``OVSeg.propose_batch`` (one backbone / decoder batch: all inputs have the
  same padded size), then the masks replaced by the ellipses;
- ``crops``: ``OVSeg.clip_crops_many`` (binarise, skip empty and duplicate masks, the crops of
  all images in shared chunks);
- ``clip``: the CLIP image tower on all crops (calls of at most ``GPU_CLIP_BATCH``);
- ``fusion``: per image, classification, ensemble, semantic fusion, resize back, argmax, and
  the label map copied to the host (as ``latency.py``).

Reported per variant and batch size: images/s (median over ``--repeats`` passes over all the
images, after one warm-up pass, which records CUDA graphs or compiles), seconds per image per
stage, peak device memory, and the argmax agreement of each image's label map with the same
variant at batch size 1 (float rounding only: 1.0 expected). Per variant: FLOPs per image
(``latency_measure.count_flops``), the matmul peak of its dtype (a 8192^3 product, CUDA events,
median of 10), the floor per image and its images/s ceiling. ``segmentation_s``: seconds to
make the ``Segmentation`` that ``Predictor.predict_batch`` returns from one image's (K, H, W)
scores (argmax on the device, the scores copied to the host), which it adds per image on top
of the figures above.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.latency import write_json  # noqa: E402
from benchmarks.latency_measure import (  # noqa: E402
    ade150_names,
    count_flops,
    cpu_name,
    fuse,
    load_photo,
    random_box_masks,
    sync,
)
from ovseg.data.transforms import resize_shortest_edge  # noqa: E402
from ovseg.inference.acceleration import compile_clip_blocks  # noqa: E402
from ovseg.inference.options import DTYPES, InferenceOptions  # noqa: E402
from ovseg.inference.prepare import prepare_model  # noqa: E402
from ovseg.inference.segmentation import Segmentation  # noqa: E402
from ovseg.modeling.precision import ieee_fp32  # noqa: E402
from ovseg.modeling.proposals import Proposals  # noqa: E402

STAGES = ("proposals", "crops", "clip", "fusion")


def parse_variant(text: str) -> dict:
    """A variant: "bf16+graphs+compile@1,32" -> {"dtype": "bf16", "cuda_graphs": True,
    "compile": True, "batch_sizes": [1, 32]} (without "@": the --batch-sizes)."""
    name, _, sizes = text.partition("@")
    dtype, *flags = name.split("+")
    try:
        batch_sizes = [int(v) for v in sizes.split(",")] if sizes else None
    except ValueError:
        batch_sizes = []
    if (
        dtype not in DTYPES
        or dtype == "int8"
        or set(flags) - {"graphs", "compile", "unfused"}
        or (batch_sizes is not None and (not batch_sizes or min(batch_sizes) < 1))
    ):
        raise argparse.ArgumentTypeError(
            "a variant is fp32, bf16 or fp16 with optional +graphs, +compile, +unfused and "
            f"@batch,sizes, got {text!r}"
        )
    return {
        "dtype": dtype,
        "cuda_graphs": "graphs" in flags,
        "compile": "compile" in flags,
        "unfused": "unfused" in flags,
        "batch_sizes": batch_sizes,
    }


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 8192) -> float:
    """Median FLOP/s of an n^3 product of random ``dtype`` matrices (CUDA events on a GPU)."""
    if device.type != "cuda":
        n = min(n, 1024)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for i in range(12):
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - t
        if i >= 2:
            times.append(seconds)
    return 2 * n**3 / statistics.median(times)


def run_batch(model, images, masks, text, original, batch_size_clip) -> tuple[list, dict]:
    """One batch through the image side; returns (label maps on the host, stage seconds)."""
    device = model.device
    times = {}
    t = time.perf_counter()
    proposals = model.propose_batch(images)
    proposals = [Proposals(m.float(), p.embeddings) for p, m in zip(proposals, masks)]
    sync(device)
    times["proposals"] = time.perf_counter() - t
    t = time.perf_counter()
    crops, counts, valids, inverses = model.clip_crops_many(
        images, [p.masks for p in proposals], fast=True
    )
    sync(device)
    times["crops"] = time.perf_counter() - t
    t = time.perf_counter()
    features = model.encode_crops(crops, batch_size=batch_size_clip)
    sync(device)
    times["clip"] = time.perf_counter() - t
    t = time.perf_counter()
    labels, start = [], 0
    for p, n, valid, inverse in zip(proposals, counts, valids, inverses):
        own = features[start : start + n][inverse]
        start += n
        labels.append(fuse(model, p, own, valid, text, original).argmax(0).cpu())
    sync(device)
    times["fusion"] = time.perf_counter() - t
    return labels, times


def run_pass(model, images, masks, text, original, batch_size, clip_batch) -> tuple[list, dict]:
    """All the images in batches of ``batch_size``: (label maps, stage seconds summed)."""
    labels, totals = [], dict.fromkeys(STAGES, 0.0)
    for first in range(0, len(images), batch_size):
        chunk = range(first, min(first + batch_size, len(images)))
        out, times = run_batch(
            model, [images[i] for i in chunk], [masks[i] for i in chunk], text, original, clip_batch
        )
        labels += out
        for k in STAGES:
            totals[k] += times[k]
    return labels, totals


def measure_variant(
    base, spec: dict, args, images, masks, text, original, flops, first_labels: list
) -> dict:
    device = base.device
    model = copy.deepcopy(base)
    options = InferenceOptions(
        dtype=spec["dtype"], cuda_graphs=spec["cuda_graphs"], compile=spec["compile"],
        text_cache=False,
    )  # fmt: skip
    prepare_model(model, options)
    if spec["unfused"]:  # open_clip's own blocks instead of fused_block (for comparison)
        model.clip_adapter.fused_blocks = False
    fused_blocks = model.clip_adapter.fused_blocks
    compile_s = None
    if spec["compile"]:
        compile_clip_blocks(model)
    clip_batch = options.clip_batch(device, model.clip_adapter.arch)
    peak = matmul_peak(options.torch_dtype, device)
    floor = flops["total"] / peak
    result = {
        "variant": spec,
        "fused_blocks": fused_blocks,
        "matmul_peak_flops_per_s": peak,
        "floor_s_per_image": floor,
        "ceiling_images_per_s": 1 / floor,
        "batches": {},
    }
    single = None
    for size in spec["batch_sizes"] or args.batch_sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(), ieee_fp32():
            t = time.perf_counter()
            run_pass(model, images, masks, text, original, size, clip_batch)  # warm-up
            warmup_s = time.perf_counter() - t
            if spec["compile"] and compile_s is None:
                compile_s = warmup_s
            passes = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                labels, totals = run_pass(model, images, masks, text, original, size, clip_batch)
                passes.append((time.perf_counter() - t, totals))
        wall = statistics.median(p[0] for p in passes)
        n = len(images)
        entry = {
            "images_per_s": n / wall,
            "seconds_per_image": wall / n,
            "ratio_to_floor": wall / n / floor,
            "stages_per_image": {k: statistics.median(p[1][k] for p in passes) / n for k in STAGES},
            "warmup_pass_s": warmup_s,
            "peak_memory_bytes": torch.cuda.max_memory_allocated()
            if device.type == "cuda"
            else None,
        }
        if single is None:
            single = labels
        if not first_labels:  # the first variant's first batch size: what others compare with
            first_labels.extend(labels)
        entry["agreement_with_first_batch_size"] = agreement(labels, single)
        entry["agreement_with_first_variant"] = agreement(labels, first_labels)
        result["batches"][str(size)] = entry
        print(f"{spec} batch {size}: {json.dumps(entry)}", flush=True)
    result["compile_s"] = compile_s
    best = max(result["batches"].values(), key=lambda e: e["images_per_s"])
    result["best_images_per_s"] = best["images_per_s"]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def agreement(labels: list, others: list) -> float:
    """Mean share of equal pixels between two lists of label maps."""
    return float(np.mean([(a == b).float().mean().item() for a, b in zip(labels, others)]))


def segmentation_seconds(names: list[str], hw: tuple[int, int], device) -> float:
    """Seconds to turn one image's (K, H, W) scores on ``device`` into the ``Segmentation``
    that ``predict`` returns (argmax on the device, scores copied to the host); median of 5."""
    scores = torch.rand(len(names), *hw, device=device)
    times = []
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        Segmentation.from_scores(names, scores, None, mode="eval")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument(
        "--variants", nargs="+", type=parse_variant, default=[parse_variant("bf16")]
    )
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32])
    parser.add_argument("--images", type=int, default=64, help="images per pass")
    parser.add_argument("--mask-sets", type=int, default=8, help="distinct sets of 100 masks")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per batch size")
    parser.add_argument("--photo", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ovseg.modeling.variants.MODELS[args.model]()
    base = ovseg.build_ovseg(cfg)
    photo = load_photo(args.photo)
    resized = resize_shortest_edge(photo, cfg.min_size_test, cfg.max_size_test)
    h, w = resized.shape[:2]
    names = ade150_names()
    flops = count_flops(base, (h, w), cfg.num_queries, cfg.num_queries, len(names))
    base = base.to(device).eval()
    image = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).to(device)
    images = [image] * args.images
    sets = [
        random_box_masks(cfg.num_queries, h, w, seed=s).bool().to(device)
        for s in range(args.mask_sets)
    ]
    masks = [sets[i % len(sets)] for i in range(args.images)]
    with torch.inference_mode():
        text = base.encode_text(names)
    original = photo.shape[:2]
    result = {
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "image_hw": [h, w],
        "original_hw": list(original),
        "num_masks": cfg.num_queries,
        "vocabulary_size": len(names),
        "images": args.images,
        "flops_per_image": flops,
        "segmentation_s": segmentation_seconds(names, tuple(original), device),
        "variants": [],
    }
    first_labels: list = []
    for spec in args.variants:
        try:
            outcome = measure_variant(
                base, spec, args, images, masks, text, original, flops, first_labels
            )
        except Exception as error:  # noqa: BLE001 - one variant failing keeps the others
            outcome = {"variant": spec, "error": f"{type(error).__name__}: {error}"}
            print(f"{spec}: {outcome['error']}", file=sys.stderr, flush=True)
        result["variants"].append(outcome)
        write_json(Path(args.json), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
