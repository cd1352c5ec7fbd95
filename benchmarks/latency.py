"""Latency of one 640-px image through a full-size OVSeg variant, fast path vs reference.

    PYTHONPATH=. python benchmarks/latency.py --model ovseg-R101c-vitB16 --dtype auto \\
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
are cached per vocabulary, so they are outside the end-to-end time (``text_s``: the first
encoding, in the fast path's text precision: ``--text-dtype``, by default what ``auto``
picks here, the fastest within cosine 0.9999 of fp32).

Reported in the JSON (seconds): ``end_to_end_s`` (fast path, chosen dtype), ``reference_s``
(fp32 reference path: per-mask crop loop, CLIP on every crop, official computation),
``floor_s`` (FLOPs of the fast path, counted with FlopCounterMode, over the matmul peak of the
same dtype measured in this run), ``stages``; how close the fast path is:
``argmax_agreement_with_reference``, ``embedding_cosine_min`` / ``_mean`` (fast vs fp32 crop
embeddings), ``clear_margin_agreement`` and ``clear_margin_pixel_share`` (pixels whose fp32
decision has a clear margin), ``noise_calibration`` (what 1% feature noise costs); and what
ran: ``cpu_capabilities``, ``chosen`` ("int8/torchao"...). The measuring code is
``latency_measure.py``. ``--clip-backend ort-int8`` (``ov-int8``, ``ort-fp32``, ``ov-fp32``)
runs the fast path's CLIP image tower on its exported graph in onnxruntime or OpenVINO
(``clip_backends.py``), with ``--dtype fp32`` (``floor_s`` is then fp32's).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.clip_backends import EXTERNAL, external_encode_masked  # noqa: E402
from benchmarks.latency_measure import (  # noqa: E402
    ade150_names,
    closeness,
    count_flops,
    cpu_name,
    load_photo,
    measure,
    measure_interleaved,
    noise_calibration,
    random_box_masks,
    run_pipeline,
)
from ovseg.data.transforms import resize_shortest_edge  # noqa: E402
from ovseg.inference.acceleration import compile_clip_blocks  # noqa: E402
from ovseg.inference.options import AUTO, DTYPES, InferenceOptions  # noqa: E402
from ovseg.inference.prepare import native_bf16, prepare_model  # noqa: E402
from ovseg.modeling.int8 import int8_full_range  # noqa: E402
from ovseg.modeling.precision import ieee_fp32  # noqa: E402
from ovseg.modeling.text_cache import default_folder as default_text_cache  # noqa: E402

__all__ = ["ade150_names", "cpu_name", "load_photo", "main"]  # imported by other benchmarks
CHOICES = sorted(DTYPES) + [AUTO]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument("--dtype", default="fp32", choices=CHOICES)
    parser.add_argument(
        "--text-dtype",
        default=AUTO,
        choices=CHOICES,
        help="text tower precision of the fast path (default auto: the fastest within cosine "
        "0.9999 of fp32 on this machine; the reference always uses fp32 text features)",
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
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the CLIP tower's blocks (fast path)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="proposal model from CUDA graphs (fast path)"
    )
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 in the fast path (the reference: never)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--photo", type=int, default=0, help="index of the photo to use")
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="run bf16 even on a CPU without native bf16 (very slow; refused otherwise)",
    )
    parser.add_argument(
        "--clip-backend",
        default="torch",
        choices=["torch", *sorted(EXTERNAL)],
        help="run the fast path's CLIP image tower on the exported graph in onnxruntime or "
        "OpenVINO (int8: their own quantisation of the fp32 graph; needs --dtype fp32)",
    )
    parser.add_argument(
        "--calibrate-on-photos",
        type=int,
        default=0,
        metavar="N",
        help="with --clip-backend ov-int8: calibrate on the masked crops of N other photos "
        "(default 0: 2 batches of random crops)",
    )
    parser.add_argument(
        "--flops-only", action="store_true", help="print the FLOP counts (100 crops) and exit"
    )
    return parser.parse_args(argv)


def external_choice(backend: str) -> str:
    """``chosen`` for ``--clip-backend``: "ort-int8" -> "int8/onnxruntime"."""
    engine, dtype = backend.split("-")
    return f"{dtype}/{dict(ort='onnxruntime', ov='openvino')[engine]}"


def model_input(model, photo: np.ndarray) -> torch.Tensor:
    """(3, h, w) uint8: ``photo`` at the model's test size (shortest edge)."""
    cfg = model.config
    resized = resize_shortest_edge(photo, cfg.min_size_test, cfg.max_size_test)
    return torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)


def real_calibration(model, args, chunk: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Masked crops of ``--calibrate-on-photos`` other photos (random boxes, as measured),
    ``chunk`` per batch, for a backend's static int8."""
    batches = []
    for index in range(args.photo + 1, args.photo + 1 + args.calibrate_on_photos):
        image = model_input(model, load_photo(index))
        masks = random_box_masks(model.config.num_queries, *image.shape[-2:], seed=index)
        crops, _, _ = model.clip_crops(image, masks, fast=True)
        for i in range(0, crops.crops.shape[0] - chunk + 1, chunk):
            batches.append((crops.crops[i : i + chunk], crops.region_masks[i : i + chunk]))
    return batches


def refuse_emulated_bf16(args, options: InferenceOptions, device: torch.device) -> int | None:
    """Exit status 2 (the reason written to the JSON) when bf16 would run emulated."""
    emulated = device.type == "cpu" and not native_bf16()
    if not emulated or "bf16" not in (options.dtype, options.text_dtype):
        return None
    if args.allow_emulated_bf16:
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    error = (
        f"this CPU has no native bf16 (AVX512-BF16 or AMX; capability {capability}): "
        "PyTorch emulates bf16 here, measured at 0.3-0.9 GFLOP/s for matmuls and "
        "convolutions against 85-160 in fp32, so one image would take tens of minutes "
        "and the bf16 figures would mean nothing; pass --allow-emulated-bf16 to run anyway"
    )
    print(f"latency.py: {error}", file=sys.stderr)
    record = {"model": args.model, "dtype": args.dtype, "device": "cpu"}
    write_json(Path(args.json), {**record, "cpu_capability": capability, "error": error})
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # the text tower runs once, outside the end-to-end time; no disk cache, so text_s is a
    # real first encoding in this precision
    requested = InferenceOptions(
        dtype=args.dtype,
        text_dtype=args.text_dtype,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        tf32=args.tf32,
        text_cache=False,
    )
    choice = requested.choice(device)
    options = requested.resolved(device)
    if args.clip_backend != "torch" and options.dtype != "fp32":
        print(
            "latency.py: --clip-backend runs the exported fp32 graph (int8: quantised by "
            "that backend): use --dtype fp32"
        )
        return 2
    refused = refuse_emulated_bf16(args, options, device)
    if refused is not None:
        return refused
    torch.manual_seed(0)
    reference_model = (
        ovseg.build_ovseg(ovseg.modeling.variants.MODELS[args.model]()).to(device).eval()
    )
    # prepare_model returns a prepared copy (the model it is given is left as it is)
    model = prepare_model(copy.deepcopy(reference_model), options)
    if args.clip_backend != "torch":
        chunk = options.clip_batch(device, model.clip_adapter.arch) or 1024
        calibration = real_calibration(model, args, chunk) if args.calibrate_on_photos else None
        model.clip_adapter.encode_masked = external_encode_masked(
            model.clip_adapter, args.clip_backend, torch.get_num_threads(), chunk, calibration
        )
        choice["chosen"] = external_choice(args.clip_backend)
    if args.compile:  # what Predictor does with InferenceOptions(compile=True)
        compile_clip_blocks(model)
    reference_model = prepare_model(
        reference_model, InferenceOptions(fast=False, channels_last=False)
    )

    photo = load_photo(args.photo)
    cfg = model.config
    image = model_input(model, photo).to(device)
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
    # counted first (a failure here costs nothing); recounted below if fewer crops ran
    flop_counts = count_flops(reference_model, (h, w), num_masks, cfg.num_queries, len(names))
    t = time.perf_counter()
    with torch.inference_mode():
        text = model.encode_text(names)
    text_s = time.perf_counter() - t
    # the reference uses fp32 text features; the on-disk cache makes later benchmark runs
    # skip this fp32 encoding
    reference_model.clip_adapter.text_cache_dir = default_text_cache()
    with torch.inference_mode():
        reference_text = reference_model.encode_text(names)
    text_cosine = (text.float() * reference_text.float()).sum(-1)
    original = photo.shape[:2]

    def fast(top_k=None):  # TF32 off unless --tf32, as the Predictor runs it
        with torch.inference_mode(), contextlib.nullcontext() if args.tf32 else ieee_fp32():
            return run_pipeline(model, image, names, text, options, override, original, top_k)

    def reference():
        with torch.no_grad(), ieee_fp32():
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
        f"{args.model} {args.dtype} ({choice['chosen']}, text {options.text_dtype}) on "
        f"{device}, capabilities {choice['cpu_capabilities']}, image {h}x{w}, "
        f"threads {torch.get_num_threads()}"
    )
    fast_run, fast_stats, ref_run, ref_stats, peaks = measure_interleaved(
        fast,
        reference,
        args.repeats,
        args.reference_repeats,
        args.warmup,
        device,
        options.dtype,
    )
    if fast_stats["crops_encoded"] != num_masks:
        flop_counts = count_flops(
            reference_model, (h, w), fast_stats["crops_encoded"], cfg.num_queries, len(names)
        )
    floor_s = floor_seconds(flop_counts, peaks, options.dtype)
    print("fast", json.dumps(fast_stats), "\nreference", json.dumps(ref_stats), flush=True)
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "resolved_dtype": options.dtype,
        "text_dtype": options.text_dtype,
        "chosen": choice["chosen"],
        "cpu_capabilities": choice["cpu_capabilities"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # int8: activations on 8 bits where the kernel does not saturate (VNNI), else 7
        "int8_activation_bits": (8 if int8_full_range() else 7)
        if options.dtype == "int8"
        else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
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
        "flops": flop_counts["total"],
        "flops_by_stage": flop_counts,
        "matmul_peak_flops_per_s": peaks["best"],
        "matmul_peaks_measured": peaks["all"],
        "floor_s": floor_s,
        "ratio_to_floor": fast_stats["end_to_end_s"] / floor_s,
        **closeness(fast_run, ref_run),
        "noise_calibration": noise_calibration(reference_model, ref_run, reference_text, original),
        "text_s": text_s,
        "text_cosine_min": float(text_cosine.min()),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "compile": args.compile,
        "cuda_graphs": args.cuda_graphs,
        "tf32": args.tf32,
    }
    if options.dtype == "int8":
        result["fp32_matmul_peak_flops_per_s"] = peaks["fp32_best"]
        result["fp32_matmul_peaks_measured"] = peaks["fp32_all"]
    if args.top_k:
        # the model is warm already; no extra warm-up for the top-k runs
        top_run, top_stats = measure(lambda: fast(args.top_k), args.repeats, 0, device)
        result["top_k"] = {
            "k": args.top_k,
            "end_to_end_s": top_stats["end_to_end_s"],
            "stages": top_stats["stages"],
            "speedup_over_all": fast_stats["end_to_end_s"] / top_stats["end_to_end_s"],
            "argmax_agreement_with_all": float((top_run.label == fast_run.label).float().mean()),
        }
    write_json(Path(args.json), result)
    print(json.dumps(result, indent=1))
    return 0


def floor_seconds(flop_counts: dict, peaks: dict, dtype: str) -> float:
    """The fast path's FLOPs over the measured matmul peak of its dtype; int8 covers the CLIP
    tower's linear layers only, the rest is floored by the fp32 peak."""
    if dtype == "int8":
        clip = flop_counts["clip"]
        return clip / peaks["best"] + (flop_counts["total"] - clip) / peaks["fp32_best"]
    return flop_counts["total"] / peaks["best"]


def write_json(path: Path, result: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
