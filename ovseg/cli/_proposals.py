"""The ``--proposals`` option shared by ``segment``, ``eval`` and ``mine``."""

from __future__ import annotations

import argparse


def add_proposal_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proposals",
        default="maskformer",
        choices=["maskformer", "sam", "superpixels"],
        help="mask proposal source (default: the model's own MaskFormer head)",
    )


def proposal_generator_from_args(args: argparse.Namespace, model):
    """The generator named by ``--proposals`` for ``model``; None means the model's own head."""
    from ovseg.proposals import build_generator

    if args.proposals == "maskformer":
        return None
    return build_generator(args.proposals, model)
