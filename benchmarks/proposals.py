"""Mask count and run time of each proposal generator on one real photo.

    PYTHONPATH=. python benchmarks/proposals.py [--image PATH] [--repeats 3] [--threads 1]
        [--sam-checkpoint sam_vit_b_01ec64.pth]

The photo is resized as the predictor does (shortest edge 640) and handed to each generator
as the (3, H, W) uint8 model input. Generators: the MaskFormer head of ``ovseg-test-tiny``
(random weights, so only its cost is meaningful), SAM (the small random ``test_tiny`` unless
``--sam-checkpoint`` is given; ``--sam-random-type vit_b`` adds a random full-size SAM whose
masks all fail the default filters, which times SAM's own work) and the weight-free
superpixels. Time is the median of
``--repeats`` runs after one warm-up run. When ``ovseg.Predictor`` is available, the table also
shows ``Predictor.set_image`` + ``clip_features()`` with that generator: the resize, the
proposals and the CLIP image tower on every masked crop (all but the text tower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_IMAGE = DATA / "coco-mini" / "train2017"


def load_input(path: Path, short: int = 640, long: int = 2560) -> torch.Tensor:
    """(3, H, W) uint8: the photo resized like the predictor's test resize."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = short / min(h, w)
    if max(h, w) * scale > long:
        scale = long / max(h, w)
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    return torch.from_numpy(np.array(image.resize(size, Image.BILINEAR))).permute(2, 0, 1)


def timed(fn, repeats: int):
    """(result, median wall seconds, median process CPU seconds) over ``repeats`` runs.

    CPU seconds of a one-thread run are what the wall time would be on an idle machine; they
    are shown because the benchmark machine is often shared.
    """
    result = fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, help="photo (default: first coco-mini image)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sam-checkpoint", help="real SAM weights (default: random test_tiny)")
    parser.add_argument(
        "--sam-random-type",
        choices=["vit_b", "vit_l", "vit_h"],
        help="also time a randomly initialised SAM of this size with the default filters "
        "(its masks are filtered out before encoding, so this is SAM's cost without output)",
    )
    parser.add_argument("--sam-points-per-side", type=int, default=32)
    parser.add_argument("--no-predictor", action="store_true", help="skip the set_image column")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import ovseg
    from ovseg.proposals import build_generator

    path = args.image or sorted(DEFAULT_IMAGE.glob("*.jpg"))[0]
    image = load_input(path)
    torch.manual_seed(0)
    model = ovseg.build_model("ovseg-test-tiny").eval() if hasattr(ovseg, "build_model") else None
    if model is not None:  # the predictor column then sees the same 640-px input as the others
        model.config.min_size_test = 640

    sam_options = {"points_per_side": args.sam_points_per_side}
    if args.sam_checkpoint:
        sam_options["checkpoint"] = args.sam_checkpoint
    else:
        sam_options["model_type"] = "test_tiny"
    generators = {
        "superpixels": (build_generator("superpixels", model), "scales 100,300,1000, cap 100"),
        "sam": (
            build_generator("sam", model, **sam_options),
            f"{'checkpoint' if args.sam_checkpoint else 'test_tiny random'}, "
            f"{args.sam_points_per_side}x{args.sam_points_per_side} points",
        ),
    }
    if args.sam_random_type:
        from segment_anything import sam_model_registry

        from ovseg.proposals.sam import SamProposalGenerator

        sam = sam_model_registry[args.sam_random_type]()
        generators[f"sam {args.sam_random_type}"] = (
            SamProposalGenerator(sam, points_per_side=args.sam_points_per_side),
            f"random weights, default filters, {args.sam_points_per_side}^2 points",
        )
    if model is not None:
        generators = {"maskformer": (model.propose, "ovseg-test-tiny random"), **generators}
    with_predictor = model is not None and hasattr(ovseg, "Predictor") and not args.no_predictor

    hwc = image.permute(1, 2, 0).numpy()
    print(f"photo: {path} -> model input {tuple(image.shape[1:])} (H, W)")
    print(f"torch threads: {torch.get_num_threads()}, median of {args.repeats} after a warm-up")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    header = "| generator | masks | proposals, wall / CPU (s) |"
    rule = "|---|---:|---:|"
    if with_predictor:
        header += " set_image + CLIP crops, wall / CPU (s) |"
        rule += "---:|"
    print(header + " setting |")
    print(rule + "---|")
    for name, (generator, setting) in generators.items():
        with torch.no_grad():
            proposals, seconds, cpu = timed(lambda g=generator: g(image), args.repeats)
        row = f"| {name} | {len(proposals)} | {seconds:.2f} / {cpu:.2f} |"
        if with_predictor:
            predictor = ovseg.Predictor(
                model, proposal_generator=None if name == "maskformer" else generator
            )
            _, set_seconds, set_cpu = timed(
                lambda p=predictor: (p.set_image(hwc), p.clip_features()), args.repeats
            )
            row += f" {set_seconds:.2f} / {set_cpu:.2f} |"
        print(f"{row} {setting} |", flush=True)


if __name__ == "__main__":
    main()
