"""``ovseg export-onnx``: export the image side to ONNX and verify it with onnxruntime."""

from __future__ import annotations

import argparse

from ovseg.cli._common import add_model_args
from ovseg.cli._spec import model_source


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export the proposal model and the CLIP image tower to ONNX",
        description=(
            "Write proposals.onnx (backbone + pixel decoder + decoder, fixed padded input "
            "size), clip_visual.onnx (CLIP image tower with mask prompts, fixed crop batch) "
            "and onnx_meta.json to OUT. Both graphs take the class text embeddings as an "
            "input, so the vocabulary stays open. With --verify (default) the graphs are run "
            "in onnxruntime on random inputs and compared with PyTorch."
        ),
    )
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=(640, 864),
        metavar=("H", "W"),
        help="padded proposal-model input size, multiples of 32 (default 640 864: 4:3 photos)",
    )
    parser.add_argument("--crop-batch", type=int, default=16, help="CLIP crop batch (default 16)")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="export --model NAME with seeded random weights (checks a full-size export "
        "without its checkpoint)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovseg.inference.onnx import export_onnx, verify_onnx

    if args.random_weights:
        import torch

        import ovseg

        if not args.model or args.checkpoint or args.config:
            raise ValueError("--random-weights takes --model NAME only")
        torch.manual_seed(0)
        model = ovseg.build_ovseg(ovseg.modeling.variants.MODELS[args.model]()).eval()
    else:
        model = model_source(args).load().cpu()
    print(f"exporting to {args.out} ...")
    export_onnx(model, args.out, tuple(args.image_size), args.crop_batch)
    if args.verify:
        for name, diff in verify_onnx(model, args.out).items():
            print(f"{name}: max abs diff onnxruntime vs PyTorch {diff:.3g}")
    print(f"wrote {args.out}")
    return 0
