"""The CLIP image tower (with mask prompts) on each CPU backend, side by side in one run.

    PYTHONPATH=. python benchmarks/clip_backends.py --model ovseg-R101c-vitB16 --crops 16 \\
        --json out.json [--backends torch-fp32 torch-int8 ort-fp32 ort-int8 ov-fp32 ov-int8]

Random weights (seed 0), seeded random crops and region masks. Backends:

- ``torch-fp32`` / ``torch-bf16``: ``MaskAdaptedCLIP.encode_masked`` (bf16: bf16 weights);
- ``torch-int8``: the same after ``ovseg.modeling.int8.quantize_int8`` (what ``dtype="int8"``
  runs);
- ``ort-fp32`` / ``ort-int8``: onnxruntime on the ``clip_visual.onnx`` graph of
  ``ovseg.inference.onnx`` (int8: ``onnxruntime.quantization.quantize_dynamic``, per-channel int8
  weights, dynamic uint8 activations);
- ``ov-fp32`` / ``ov-int8``: OpenVINO on the same ONNX graph (int8: NNCF post-training
  quantisation, transformer preset, calibrated on 2 batches of other random crops).

Runs are interleaved (every backend once per round), so all see the same machine load; the
JSON has each backend's best and median seconds and the cosine of its features with
``torch-fp32``'s (min over crops).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.latency_measure import cpu_name  # noqa: E402
from ovseg.inference.onnx import ClipGraph, _export  # noqa: E402
from ovseg.inference.prepare import products_in  # noqa: E402
from ovseg.modeling.clip_branch import MaskAdaptedCLIP  # noqa: E402
from ovseg.modeling.int8 import quantize_int8  # noqa: E402

BACKENDS = (
    "torch-fp32",
    "torch-bf16",
    "torch-int8",
    "torch-int8-torchao",
    "ort-fp32",
    "ort-int8",
    "ov-fp32",
    "ov-int8",
)


def random_inputs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    crops = torch.randn(n, 3, size, size, generator=g)
    regions = (torch.rand(n, 1, size // 16, size // 16, generator=g) > 0.4).float()
    return crops, F.interpolate(regions, size=(size, size))


def export_clip(clip: MaskAdaptedCLIP, folder: Path, crops, regions) -> Path:
    """``clip_visual.onnx`` of ``clip`` in ``folder``, any number of crops per call."""
    path = folder / "clip_visual.onnx"
    text = torch.randn(4, clip.arch.embed_dim)
    graph = ClipGraph(types.SimpleNamespace(clip_adapter=clip))
    names = {"inputs": ["crops", "region_masks", "text"], "outputs": ["features", "logits"]}
    dynamic = {"text": {0: "classes"}, "crops": {0: "crops"}, "region_masks": {0: "crops"}}
    _export(graph, (crops, regions, text), path, names, dynamic)
    return path


def external_runner(name: str, onnx_path: Path, embed_dim: int, threads: int, calibration):
    """A ``(crops, region_masks) -> features`` function (numpy arrays) running the exported
    graph ``onnx_path`` (``export_clip``, text width ``embed_dim``) on ``name`` ("ort-fp32",
    "ort-int8", "ov-fp32", "ov-int8"); ``calibration``: (crops, regions) batches for
    OpenVINO's int8."""
    folder = onnx_path.parent
    text = torch.randn(4, embed_dim).numpy()  # feeds only the unused logits output
    if name.startswith("ort"):
        import onnxruntime as ort

        path = onnx_path
        if name == "ort-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            path = folder / "clip_visual_int8.onnx"
            quantize_dynamic(onnx_path, path, weight_type=QuantType.QInt8, per_channel=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda c, r: session.run(
            ["features"], {"crops": c, "region_masks": r, "text": text}
        )[0]
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    if name == "ov-int8":
        import nncf

        data = [
            {"crops": c.numpy(), "region_masks": r.numpy(), "text": text} for c, r in calibration
        ]
        model = nncf.quantize(
            model,
            nncf.Dataset(data),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(data),
        )
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(model, "CPU", config)
    return lambda c, r: compiled({"crops": c, "region_masks": r, "text": text})["features"].copy()


EXTERNAL = {"ort-fp32", "ort-int8", "ov-fp32", "ov-int8"}


def external_encode_masked(clip, name: str, threads: int, chunk: int, calibration=None):
    """An ``encode_masked`` for ``clip`` that runs its exported graph on ``name`` (one of
    ``EXTERNAL``), ``chunk`` crops per call (``latency.py --clip-backend``); ``calibration``:
    (crops, region masks) batches for OpenVINO's int8 (None: 2 batches of random crops)."""
    size = clip.arch.image_size
    if calibration is None:
        calibration = [random_inputs(chunk, size, 2 + i) for i in range(2)]
    folder = Path(tempfile.mkdtemp(prefix="ovseg-clip-backend-"))
    onnx_path = export_clip(clip, folder, *calibration[0])
    run = external_runner(name, onnx_path, clip.arch.embed_dim, threads, calibration)

    def encode_masked(images: torch.Tensor, region_masks: torch.Tensor) -> torch.Tensor:
        parts = [
            run(images[i : i + chunk].float().numpy(), region_masks[i : i + chunk].numpy())
            for i in range(0, images.shape[0], chunk)
        ]
        return torch.from_numpy(np.concatenate(parts))

    return encode_masked


def make_runners(names, clip, folder: Path, crops, regions, threads: int, calibration):
    """{backend: callable returning (N, C) features}."""
    import copy

    runners = {}
    onnx_path = None  # exported once, for every external backend
    for name in names:
        if name.startswith("torch"):
            model = copy.deepcopy(clip)
            if name == "torch-bf16":  # what dtype="bf16" does on a CPU (fp32 residual stream)
                products_in(model.clip_model.visual, torch.bfloat16)
                model.image_autocast = torch.bfloat16
            if name == "torch-int8":  # int8_backend "auto": fbgemm
                quantize_int8(model.clip_model.visual)
            if name == "torch-int8-torchao":
                quantize_int8(model.clip_model.visual, backend="torchao")
            runners[name] = lambda m=model: m.encode_masked(crops, regions).float()
            continue
        if onnx_path is None:
            onnx_path = export_clip(clip, folder, crops, regions)
        run = external_runner(name, onnx_path, clip.arch.embed_dim, threads, calibration)
        runners[name] = lambda run=run: torch.from_numpy(run(crops.numpy(), regions.numpy()))
    return runners


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    clip = MaskAdaptedCLIP(ovseg.modeling.variants.MODELS[args.model]().clip).eval()
    size = clip.arch.image_size
    crops, regions = random_inputs(args.crops, size, 1)
    calibration = [random_inputs(args.crops, size, 2 + i) for i in range(2)]
    with tempfile.TemporaryDirectory() as folder:
        # the ONNX export traces with autograd on (the fused attention kernel has no ONNX form)
        runners = make_runners(
            args.backends, clip, Path(folder), crops, regions, threads, calibration
        )
    with torch.inference_mode():
        times = {name: [] for name in runners}
        outputs = {}
        for name, run in runners.items():  # warm-up
            outputs[name] = run()
        for _ in range(args.repeats):
            for name, run in runners.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                print(name, f"{times[name][-1]:.2f} s", flush=True)
    reference = outputs.get("torch-fp32")
    result = {
        "model": args.model,
        "device_name": cpu_name(),
        "threads": threads,
        "crops": args.crops,
        "backends": {},
    }
    for name, ts in times.items():
        entry = {"best_s": min(ts), "median_s": statistics.median(ts), "all_s": ts}
        if reference is not None:
            cosine = F.cosine_similarity(outputs[name].float(), reference.float(), dim=-1)
            entry["cosine_min_vs_torch_fp32"] = float(cosine.min())
        result["backends"][name] = entry
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
