"""Flags -> ``PredictorSpec``: the one place the command line becomes options objects.

Each command adds its flag groups (``add_model_args``, ``add_proposal_args``,
``add_prediction_args``, ``add_tta_args``, ...) and calls ``predictor_spec(args)`` (or one of
its parts); the library builds from the spec. Flags a command does not have take the
library's defaults.
"""

from __future__ import annotations

import argparse

from ovseg.cli._proposals import proposal_options_from_args, refine_options_from_args
from ovseg.inference.options import InferenceOptions
from ovseg.inference.spec import ModelSource, PredictorSpec, PredictSettings, ProposalSource


def model_source(args: argparse.Namespace) -> ModelSource:
    """``--model/--checkpoint``, ``--config/--weights``, ``--clip``, ``--device`` and
    ``--no-weights-cache``."""
    return ModelSource(
        model=args.model,
        checkpoint=args.checkpoint,
        config=args.config,
        weights=args.weights,
        clip=getattr(args, "clip", None),
        device=getattr(args, "device", "cpu"),
        cache_converted=not getattr(args, "no_weights_cache", False),
        allow_base_outside=getattr(args, "allow_base_outside", False),
    )


def proposal_source(args: argparse.Namespace) -> ProposalSource:
    """``--proposals`` and the options of its generator (others are an error)."""
    name = getattr(args, "proposals", "maskformer")
    return ProposalSource(name, proposal_options_from_args(args))


def refine_source(args: argparse.Namespace) -> ProposalSource | None:
    """``--refine sam`` and the ``--sam-*`` flags given, or None without ``--refine``."""
    options = refine_options_from_args(args)
    return None if options is None else ProposalSource("sam", options)


def tta_options(args: argparse.Namespace) -> dict:
    """``InferenceOptions`` keywords of the ``add_tta_args`` flags (none if the command lacks
    them)."""
    if not hasattr(args, "tta_sizes"):
        return {}
    if args.no_tta and args.tta_sizes:
        raise ValueError("--no-tta and --tta-sizes contradict each other; give one")
    tta = False if args.no_tta else (True if args.tta or args.tta_sizes else None)
    return {
        "tta": tta,
        "tta_min_sizes": tuple(args.tta_sizes) if args.tta_sizes else None,
        "tta_max_size": args.tta_max_size,
        "tta_flip": args.tta_flip,
        "sliding_window": args.sliding_window,
        "sliding_tile_size": args.sliding_tile_size,
        "sliding_overlap": args.sliding_overlap,
    }


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """``--dtype``, ``--text-dtype``, ``--tf32``, ``--cuda-graphs``, ``--top-k``,
    ``--text-cache-max-mb`` and the TTA flags."""
    return InferenceOptions(
        dtype=getattr(args, "dtype", "fp32"),
        text_dtype=getattr(args, "text_dtype", None),
        top_k=getattr(args, "top_k", None),
        tf32=getattr(args, "tf32", False),
        cuda_graphs=getattr(args, "cuda_graphs", False),
        text_cache_max_mb=getattr(args, "text_cache_max_mb", None),
        **tta_options(args),
    )


def predict_settings(args: argparse.Namespace) -> PredictSettings:
    """``--mode``, ``--ensemble-weight``, ``--mask-threshold``, ``--clip-only``,
    ``--no-clip-ensemble``, ``--templates``, ``--granularity`` and ``--save-proposals``
    (unset ones keep the library's defaults)."""
    return PredictSettings(
        mode=getattr(args, "mode", None),
        ensemble_weight=getattr(args, "ensemble_weight", None),
        mask_threshold=getattr(args, "mask_threshold", None),
        clip_only=True if getattr(args, "clip_only", False) else None,
        clip_ensemble=False if getattr(args, "no_clip_ensemble", False) else None,
        templates=getattr(args, "templates", None),
        granularity=getattr(args, "granularity", None),
        save_proposals=True if getattr(args, "save_proposals", False) else None,
    )


def predictor_spec(args: argparse.Namespace) -> PredictorSpec:
    """The whole spec of a command's flags."""
    return PredictorSpec(
        model=model_source(args),
        proposals=proposal_source(args),
        options=inference_options(args),
        predict=predict_settings(args),
        refine=refine_source(args),
    )
