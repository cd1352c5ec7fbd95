"""Time to class text features for a vocabulary: first encoding per precision, disk cache.

    PYTHONPATH=. python benchmarks/text_features.py --model ovseg-R101c-vitB16 \\
        --precisions fp32 int8 --json out.json [--threads 2]

Random weights (seed 0) of the variant's CLIP branch; the 150 ADE20K class names with the
14 ViLD templates (2100 prompts). Per precision: ``first_s`` (text tower, nothing cached),
``disk_s`` (a fresh CLIP branch - empty memory cache - reading the on-disk cache, weights
digest included) and the cosine of each class feature with fp32's. ``fingerprint_s`` is the
sha256 of the text-tower weights (once per process, part of every first lookup).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.latency_measure import ade150_names, cpu_name  # noqa: E402
from ovseg.modeling.clip_branch import MaskAdaptedCLIP  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--json", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = MaskAdaptedCLIP(ovseg.modeling.variants.MODELS[args.model]().clip).eval()
    names = ade150_names()
    t = time.perf_counter()
    clip.weights_fingerprint()
    result = {
        "model": args.model,
        "device_name": cpu_name(),
        "threads": torch.get_num_threads(),
        "classes": len(names),
        "fingerprint_s": time.perf_counter() - t,
        "precisions": {},
    }
    reference = None
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        for precision in args.precisions:
            first = copy.deepcopy(clip)
            first.text_precision, first.text_cache_dir = precision, Path(folder)
            t = time.perf_counter()
            feats = first.text_features(names)
            first_s = time.perf_counter() - t
            fresh = copy.deepcopy(clip)
            fresh.text_precision, fresh.text_cache_dir = precision, Path(folder)
            t = time.perf_counter()
            cached = fresh.text_features(names)
            disk_s = time.perf_counter() - t
            assert fresh.last_text_stats["source"] == "disk" and torch.equal(cached, feats)
            if reference is None and precision == "fp32":
                reference = feats
            entry = {"first_s": first_s, "disk_s": disk_s}
            if reference is not None:
                cosine = (feats * reference).sum(-1)
                entry["cosine_min"] = float(cosine.min())
                entry["cosine_mean"] = float(cosine.mean())
            result["precisions"][precision] = entry
            print(precision, json.dumps(entry), flush=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
