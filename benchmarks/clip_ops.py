"""Where the CLIP image tower's time goes, by kind of operation, against the matmul peaks.

The tower of a full-size variant (random weights, seed 0) encodes ``--crops`` masked crops
in the chunks a ``Predictor`` uses for ``--dtype`` (``InferenceOptions.clip_batch``), under
PyTorch's profiler. Its operators' own time is summed into three kinds:

- ``linear``: the linear layers (int8: ``quantized::linear_dynamic`` and the other kernels'
  products; fp32 / bf16: ``addmm``, ``mm``, ``linear``);
- ``attention``: ``scaled_dot_product_attention`` (and explicit ``bmm``/``softmax``);
- ``other``: the rest (layer norms, GELU, residual adds, the patch convolution, casts).

The FLOPs of the first two are counted by hand from the architecture: per crop and layer,
``2 * T * 12 * W^2`` for the four projections and the MLP (T tokens, width W) and
``4 * T^2 * W`` for the two attention products. The script prints each kind's seconds,
GFLOP/s and ratio to the peak measured in the same run (``latency_measure.matmul_peak``):
the dtype's own for ``linear``, fp32's for ``attention`` (the bf16 peak is printed too).

    python benchmarks/clip_ops.py --model ovseg-R101c-vitB16 --dtype int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.latency_measure import cpu_name, matmul_peak  # noqa: E402
from ovseg.inference.auto import cpu_capabilities  # noqa: E402
from ovseg.inference.options import DTYPES, InferenceOptions  # noqa: E402
from ovseg.inference.prepare import prepare_model  # noqa: E402

KINDS = {
    "linear": ("linear_dynamic", "addmm", "aten::mm", "aten::linear", "int8", "_int_mm"),
    "attention": ("scaled_dot_product", "bmm", "softmax"),
}


def kind_of(name: str) -> str:
    for kind, keys in KINDS.items():
        if any(key in name for key in keys):
            return kind
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ovseg-R101c-vitB16")
    parser.add_argument("--dtype", default="int8", choices=[d for d in DTYPES if d != "fp16"])
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ovseg.build_ovseg(ovseg.modeling.variants.MODELS[args.model]()).eval()
    options = InferenceOptions(dtype=args.dtype)
    clip = prepare_model(model, options).clip_adapter
    arch = clip.arch
    chunk = options.clip_batch("cpu", arch) or args.crops
    images = torch.randn(args.crops, 3, arch.image_size, arch.image_size)
    masks = (torch.rand(args.crops, 1, arch.image_size, arch.image_size) > 0.3).float()

    def encode() -> None:
        with torch.inference_mode():
            for i in range(0, args.crops, chunk):
                clip.encode_masked(images[i : i + chunk], masks[i : i + chunk])

    encode()  # warm-up: kernels picked, int8 weights packed
    start = time.perf_counter()
    encode()
    wall = time.perf_counter() - start
    with torch.profiler.profile() as prof:
        encode()
    seconds = dict.fromkeys(("linear", "attention", "other"), 0.0)
    for event in prof.key_averages():
        seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6

    tokens, width = arch.grid**2 + 1, arch.vision_width
    flops = {
        "linear": args.crops * arch.vision_layers * 2 * tokens * 12 * width**2,
        "attention": args.crops * arch.vision_layers * 4 * tokens**2 * width,
    }
    peaks = {name: matmul_peak(name, torch.device("cpu")) for name in ("fp32", "bf16")}
    peaks["int8"] = matmul_peak("int8", torch.device("cpu")) if args.dtype == "int8" else None
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "crops": args.crops,
        "crops_per_call": chunk,
        "threads": args.threads,
        "cpu_capabilities": cpu_capabilities(),
        "cpu": cpu_name(),
        "wall_s": wall,
        "profiled_s": seconds,
        "gflop_per_s": {k: flops[k] / seconds[k] / 1e9 for k in flops if seconds[k]},
        "peak_gflop_per_s": {k: v / 1e9 for k, v in peaks.items() if v},
        "linear_to_peak": flops["linear"] / seconds["linear"] / peaks[args.dtype],
        "attention_to_fp32_peak": flops["attention"] / seconds["attention"] / peaks["fp32"],
        "load_average": list(os.getloadavg()),
    }
    json.dump(result, sys.stdout, indent=1)
    print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
