"""Argmax agreement of bf16 or int8 with fp32, and of top-k with all proposals, on real photos.

    PYTHONPATH=. python benchmarks/agreement.py --model ovseg-R101c-vitB16 --photos 3 \\
        --json agreement.json [--dtype bf16|int8] [--top-k 30]

Each precision uses its own text features (the text tower runs in the chosen precision);
``{dtype}_image_fp32_text_vs_fp32`` is the low-precision image side with fp32 text features,
which tells how much of the disagreement comes from each side.
Same setting as ``latency.py`` (random weights, seed 0; 100 random-ellipse masks through
the proposal interface unless ``--masks model``; the 150 ADE20K class names), on the first
``--photos`` photos of ../shared/data (ADE20K validation samples, then COCO). Agreement is the
fraction of pixels whose label (argmax) is the same as in the fp32 fast path with all
proposals.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from benchmarks.latency_measure import (  # noqa: E402
    ade150_names,
    load_photo,
    random_box_masks,
    run_pipeline,
)
from ovseg.data.transforms import resize_shortest_edge  # noqa: E402
from ovseg.inference.options import InferenceOptions  # noqa: E402
from ovseg.inference.prepare import prepare_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(ovseg.modeling.variants.MODELS))
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "int8", "auto"])
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--masks", default="boxes", choices=["boxes", "model"])
    parser.add_argument("--json", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--no-text-cache",
        dest="text_cache",
        action="store_false",
        help="do not read or write the on-disk text-feature cache",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = ovseg.build_ovseg(ovseg.modeling.variants.MODELS[args.model]()).eval()
    low = prepare_model(
        copy.deepcopy(fp32), InferenceOptions(dtype=args.dtype, text_cache=args.text_cache)
    )
    fp32 = prepare_model(fp32, InferenceOptions(text_cache=args.text_cache))  # a prepared copy
    names = ade150_names()
    with torch.inference_mode():
        text = fp32.encode_text(names)
        text_low = low.encode_text(names)
    rows = []
    for index in range(args.photos):
        photo = load_photo(index)
        cfg = fp32.config
        resized = resize_shortest_edge(photo, cfg.min_size_test, cfg.max_size_test)
        image = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)
        h, w = image.shape[-2:]
        masks = (
            random_box_masks(cfg.num_queries, h, w, seed=index) if args.masks == "boxes" else None
        )
        size = photo.shape[:2]
        with torch.inference_mode():
            opts = InferenceOptions()
            full32 = run_pipeline(fp32, image, names, text, opts, masks, size)
            full16 = run_pipeline(low, image, names, text_low, opts, masks, size)
            # the same low-precision image side with fp32 text features: which side costs it
            mixed = run_pipeline(low, image, names, text, opts, masks, size)
            if args.top_k:
                top16 = run_pipeline(low, image, names, text_low, opts, masks, size, args.top_k)
                top32 = run_pipeline(fp32, image, names, text, opts, masks, size, args.top_k)
        full32, full16, mixed = full32.label, full16.label, mixed.label
        if args.top_k:
            top16, top32 = top16.label, top32.label
        row = {
            "photo": index,
            "size": list(size),
            f"{args.dtype}_vs_fp32": float((full16 == full32).float().mean()),
            f"{args.dtype}_image_fp32_text_vs_fp32": float((mixed == full32).float().mean()),
        }
        if args.top_k:
            row[f"top{args.top_k}_vs_all_fp32"] = float((top32 == full32).float().mean())
            row[f"top{args.top_k}_vs_all_{args.dtype}"] = float((top16 == full16).float().mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "masks": args.masks,
        "top_k": args.top_k,
        "photos": rows,
    }
    for key in rows[0]:
        if key not in ("photo", "size"):
            result[f"mean_{key}"] = float(np.mean([r[key] for r in rows]))
    path = Path(args.json)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
