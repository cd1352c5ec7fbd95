"""Options and model loading shared by every subcommand that runs a model."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--model/--checkpoint`` or ``--config/--weights`` and ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="variant name (see `ovseg models`), e.g. ovseg-swinB-vitL14")
    group.add_argument("--checkpoint", help="weights for --model (.safetensors, or official .pth)")
    group.add_argument("--config", help="official detectron2-style YAML config (with --weights)")
    group.add_argument("--weights", help="official checkpoint .pth/.pt (with --config)")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument(
        "--no-weights-cache",
        action="store_true",
        help="do not keep (or read) a safetensors copy of an official .pth in $OVSEG_HOME/"
        "converted (kept by default: later runs load it several times faster)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def load_model_from_args(args: argparse.Namespace):
    """Build the model named by the parsed ``add_model_args`` options, in eval mode."""
    import ovseg

    cache = not getattr(args, "no_weights_cache", False)
    if args.config or args.weights:
        if not (args.config and args.weights):
            raise ValueError("--config and --weights go together; give both")
        if args.model or args.checkpoint:
            raise ValueError("give either --model [--checkpoint] or --config --weights, not both")
        model = ovseg.load_official(args.config, args.weights, cache_converted=cache)
    elif args.model:
        model = ovseg.build_model(args.model, checkpoint=args.checkpoint, cache_converted=cache)
    else:
        raise ValueError(
            "no model given: pass --model NAME [--checkpoint PATH] or --config X.yaml --weights W.pth"
        )
    return model.to(args.device).eval()
