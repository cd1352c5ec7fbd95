"""Prediction flags shared by ``ovseg segment`` and ``ovseg serve`` (eval takes some);
``ovseg.cli._spec`` turns them into options objects."""

from __future__ import annotations

import argparse

from ovseg.modeling.fusion import MODES, OFFICIAL_DEMO_SETTINGS
from ovseg.modeling.prompts import TEMPLATE_SETS


def _granularity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"granularity must be in [0, 1], got {value}")
    return value


def add_dtype_args(parser) -> None:
    """``--dtype`` and ``--text-dtype`` (segment, serve, eval)."""
    parser.add_argument(
        "--dtype",
        choices=["fp32", "auto", "bf16", "fp16", "int8"],
        default="fp32",
        help="auto picks the fastest path this machine runs within the agreement targets "
        "(from its CPU flags and CUDA; int8 on AVX2 and VNNI CPUs, bf16 on GPUs; the rule "
        "table: benchmarks/README.md); bf16 runs backbone and CLIP image tower on bf16 weights (fast only on CPUs "
        "with AVX512-BF16/AMX, and GPUs); fp16 likewise on fp16 weights (CUDA only); int8 "
        "quantises the CLIP image tower's linear layers (CPU); fp32 (default) is the "
        "official computation",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="let CUDA convolutions and matmuls use TF32 (faster fp32 on Ampere and later; "
        "not the official computation: ovseg turns TF32 off inside its calls by default)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay the proposal model from CUDA graphs (one launch per image instead of "
        "thousands; GPU only; outputs change by float rounding only)",
    )
    parser.add_argument(
        "--text-dtype",
        choices=["fp32", "auto", "bf16", "fp16", "int8"],
        default=None,
        help="precision of the text tower (default fp32 whatever --dtype, auto with --dtype "
        "auto: the fastest precision whose text features stay within cosine 0.9999 of "
        "fp32 here); text features are cached per vocabulary, so this only speeds up the "
        "first query of a new vocabulary",
    )


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """Opt-in speed knobs (they change outputs slightly): bf16 / int8, top-k proposals."""
    add_dtype_args(parser)
    parser.add_argument(
        "--top-k",
        type=int,
        help="classify only the K proposals with the highest proposal score (default: all)",
    )


def add_templates_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        choices=TEMPLATE_SETS,
        help="prompt templates: vild (14), imagenet (80) or predefined (the config's "
        "PREDEFINED_PROMPT_TEMPLATES); default: the model config's (vild)",
    )


def add_classifier_args(parser) -> None:
    """``--clip-only``, ``--no-clip-ensemble`` and ``--templates`` (segment, serve, eval)."""
    parser.add_argument(
        "--clip-only", action="store_true", help="classify with CLIP alone (= weight 0)"
    )
    parser.add_argument(
        "--no-clip-ensemble",
        action="store_true",
        help="classify with the proposal branch alone (official CLIP_ENSEMBLE: False)",
    )
    add_templates_arg(parser)


def add_prediction_args(parser: argparse.ArgumentParser) -> None:
    """``--mode``, ``--ensemble-weight``, ``--mask-threshold``, ``--clip-only``,
    ``--no-clip-ensemble``, ``--templates`` and the speed knobs."""
    group = parser.add_argument_group("prediction")
    group.add_argument(
        "--mode",
        choices=MODES,
        default="demo",
        help="demo (default, as the official demo: each class keeps its best mask; pixels "
        "no mask reaches stay unlabelled; one name gets 'others' added) or eval (the "
        "official evaluation: soft fusion of all masks, every pixel labelled)",
    )
    group.add_argument(
        "--ensemble-weight",
        type=float,
        help="lambda of the CLIP ensemble, 0 = CLIP alone; default: the config's, or "
        f"{OFFICIAL_DEMO_SETTINGS.ensemble_weight} in demo mode (official demo config)",
    )
    group.add_argument(
        "--mask-threshold",
        type=float,
        help="binarisation threshold of the masks; default: the config's, or "
        f"{OFFICIAL_DEMO_SETTINGS.mask_threshold} in demo mode",
    )
    group.add_argument(
        "--granularity",
        type=_granularity,
        metavar="G",
        help="demo mode's mask selection in [0, 1] (the authors' SAM space's slider): each "
        "class keeps its best mask and every mask scoring above G times that best; lower "
        "keeps more. Default 0.8 with --proposals sam (the space), else 1 (the official demo)",
    )
    add_classifier_args(group)
    add_speed_args(group)
