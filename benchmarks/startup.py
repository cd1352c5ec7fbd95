"""Start-up of ``ovseg segment``: import, weight load, model build, first image.

    PYTHONPATH=. python benchmarks/startup.py --model ovseg-R101c-vitB16 --json out.json \\
        [--folder /tmp/ovseg-startup] [--repeats 3] [--first-image]

Writes a full-size random-weights checkpoint of the variant (seed 0) to ``--folder`` three
times: the official layout as ``.pth`` (a ``{"model": state_dict}``) in torch.save's zip
format and in the legacy format, and our ``.safetensors``. Each measurement runs in a fresh
interpreter (so imports and file reads are cold for Python, though the OS page cache is warm
after the first read), in rounds that alternate the formats:

- ``import_s``: ``import ovseg`` (torch, open_clip, timm, ...);
- ``read_s``: reading the state dict (``ovseg.weights.checkpoints.read_state_dict(cache=True)``, what
  the CLI does): ``pth`` zip format, memory-mapped; ``pth-legacy`` with ``cache=False``,
  unpickled; ``pth-legacy-cached`` through the safetensors copy kept in the cache (written by
  an untimed first run); ``safetensors`` our own format;
- ``build_s``: constructing the model without random init and loading by assignment (what
  ``build_model`` does);
- ``first_image_s`` (``--first-image``): ``Predictor`` set_image + predict of one photo with
  a 3-class vocabulary whose text features are already in the disk cache (the text tower is
  measured by ``text_features.py``), in ``--dtype``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import ovseg
from ovseg.weights import checkpoints
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.variants import MODELS
t1 = time.perf_counter()
name, path, mode, first_image, dtype = sys.argv[1:6]
torch.set_num_threads(2)
sd = checkpoints.read_state_dict(path, cache=mode != "pth-legacy")
t2 = time.perf_counter()
model = build_ovseg(MODELS[name](), init=False)
checkpoints.load_official_state_dict(model, sd, assign=True)
t3 = time.perf_counter()
out = {"import_s": t1 - t0, "read_s": t2 - t1, "build_s": t3 - t2}
if first_image == "1":
    from benchmarks.latency_measure import load_photo
    predictor = ovseg.Predictor(model, options=ovseg.InferenceOptions(dtype=dtype))
    predictor.set_image(load_photo(0))
    predictor.predict(["wall", "floor", "person"])
    out["first_image_s"] = time.perf_counter() - t3
    out["text_source"] = model.clip_adapter.last_text_stats["source"]
print("RESULT " + json.dumps(out))
"""


def write_checkpoints(name: str, folder: Path) -> dict[str, Path]:
    import torch

    import ovseg
    from ovseg.weights.checkpoints import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "pth": folder / f"{name}.pth",
        "pth-legacy": folder / f"{name}-legacy.pth",
        "safetensors": folder / f"{name}.safetensors",
    }
    if not all(p.is_file() for p in paths.values()):
        torch.manual_seed(0)
        model = ovseg.build_ovseg(ovseg.modeling.variants.MODELS[name]())
        torch.save({"model": model.state_dict()}, paths["pth"])
        legacy = {"_use_new_zipfile_serialization": False}
        torch.save({"model": model.state_dict()}, paths["pth-legacy"], **legacy)
        save_checkpoint(model, paths["safetensors"])
    return paths


def run_child(name, path, mode, first_image, dtype, env) -> dict:
    argv = [sys.executable, "-c", CHILD, name, str(path), mode, first_image, dtype]
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - t
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed ({mode}):\n{done.stderr[-3000:]}")
    return {**json.loads(line[7:]), "process_wall_s": wall}


def main(argv=None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ovseg-R101c-vitB16")
    parser.add_argument("--folder", default="/tmp/ovseg-startup")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-image", action="store_true")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"])
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    paths = write_checkpoints(args.model, Path(args.folder))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OVSEG_HOME": str(Path(args.folder) / "home")}
    modes = {
        "pth": paths["pth"],
        "pth-legacy": paths["pth-legacy"],
        "pth-legacy-cached": paths["pth-legacy"],
        "safetensors": paths["safetensors"],
    }
    flag = "1" if args.first_image else "0"
    # the first cached read writes the safetensors copy; the timed ones read it
    run_child(args.model, paths["pth-legacy"], "pth-legacy-cached", "0", args.dtype, env)
    if args.first_image:  # fill the text cache once (and warm the page cache)
        run_child(args.model, paths["safetensors"], "safetensors", flag, args.dtype, env)
    runs = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, path in modes.items():
            runs[mode].append(run_child(args.model, path, mode, flag, args.dtype, env))
            print(mode, json.dumps(runs[mode][-1]), flush=True)
    result = {
        "model": args.model,
        "file_bytes": {k: p.stat().st_size for k, p in paths.items()},
        "dtype": args.dtype,
        "medians": {
            mode: {
                key: statistics.median(r[key] for r in rs)
                for key in rs[0]
                if isinstance(rs[0][key], float)
            }
            for mode, rs in runs.items()
        },
        "runs": runs,
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["medians"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
