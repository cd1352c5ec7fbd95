"""Options and model loading shared by every subcommand that runs a model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--model/--checkpoint``, ``--config/--weights``, ``--clip`` and ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="variant name (see `ovseg models`), e.g. ovseg-swinB-vitL14; or "
        "hf://OWNER/REPO[@REVISION] or a folder written by OVSeg.save_pretrained",
    )
    group.add_argument("--checkpoint", help="weights for --model (.safetensors, or official .pth)")
    group.add_argument("--config", help="official detectron2-style YAML config (with --weights)")
    group.add_argument("--weights", help="official checkpoint .pth/.pt (with --config)")
    group.add_argument(
        "--clip",
        metavar="NAME_OR_PATH",
        help="CLIP branch alone, for --proposals sam/superpixels (the authors' SAM demo): a "
        "download name (ovseg-clip-vitL14, clip-vitL14, ...) or a CLIP weights file",
    )
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def resolve_download(name_or_path: str, option: str) -> Path:
    """A weights file from a download name (it must be cached) or a path, for ``option``."""
    from ovseg import hub

    if name_or_path in hub.REGISTRY:
        cached = hub.find_cached(name_or_path)
        if cached is None:
            raise FileNotFoundError(
                f"{option} {name_or_path}: not downloaded; run `ovseg download {name_or_path}` "
                "(or pass the file's path)"
            )
        return cached
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{option} {name_or_path}: no such file, and not a download name (see "
            "`ovseg download --list`)"
        )
    return path


def load_model_from_args(args: argparse.Namespace):
    """Build the model named by the parsed ``add_model_args`` options, in eval mode."""
    import ovseg

    clip = getattr(args, "clip", None)
    if clip and (args.model or args.checkpoint or args.config or args.weights):
        raise ValueError(
            "--clip builds a CLIP-only model for --proposals sam/superpixels; give it alone, "
            "without --model/--checkpoint/--config/--weights"
        )
    if clip:
        model = ovseg.build_clip_only(resolve_download(clip, "--clip"))
    elif args.config or args.weights:
        if not (args.config and args.weights):
            raise ValueError("--config and --weights go together; give both")
        if args.model or args.checkpoint:
            raise ValueError("give either --model [--checkpoint] or --config --weights, not both")
        model = ovseg.load_official(args.config, args.weights)
    elif args.model:
        model = ovseg.build_model(args.model, checkpoint=args.checkpoint)
    else:
        raise ValueError(
            "no model given: pass --model NAME|hf://OWNER/REPO|FOLDER [--checkpoint PATH], "
            "--config X.yaml --weights W.pth, or --clip NAME_OR_PATH with --proposals sam"
        )
    return model.to(args.device).eval()
