"""Model and test-time augmentation flags shared by every subcommand that runs a model
(``ovseg.cli._spec`` turns them into options objects)."""

from __future__ import annotations

import argparse


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
        "--allow-base-outside",
        action="store_true",
        help="follow _BASE_ files of --config that lie outside its folder (refused by default)",
    )
    group.add_argument(
        "--clip",
        metavar="NAME_OR_PATH",
        help="CLIP branch alone, for --proposals sam/superpixels (the authors' SAM demo): a "
        "download name (ovseg-clip-vitL14, clip-vitL14, ...) or a CLIP weights file",
    )
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument(
        "--no-weights-cache",
        action="store_true",
        help="do not keep (or read) a safetensors copy of a legacy-format .pth in $OVSEG_HOME/"
        "converted (kept by default: later runs map it instead of unpickling the file; "
        "zip-format .pth files are mapped directly and get no copy)",
    )
    group.add_argument(
        "--text-cache-max-mb",
        type=float,
        metavar="MB",
        help="bound of the text-feature cache on disk ($OVSEG_HOME/text-features) and in "
        "memory, least recently used evicted first (default: $OVSEG_TEXT_CACHE_MAX_MB, else "
        "256)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_batch_size_arg(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` (segment, eval): images per ``Predictor.set_images`` batch."""
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="images per batch through the proposal model and the CLIP image tower "
        "(outputs equal one image at a time up to float rounding; worth it on a GPU; "
        "default 1)",
    )


def add_tta_args(parser: argparse.ArgumentParser) -> None:
    """Test-time augmentation and sliding window (official TEST.AUG / TEST.SLIDING_*)."""
    group = parser.add_argument_group(
        "test-time augmentation (official TEST.AUG; default: as the model config says)"
    )
    onoff = group.add_mutually_exclusive_group()
    onoff.add_argument(
        "--tta",
        action="store_true",
        help="multi-scale + flip TTA with the config's TEST.AUG sizes (published: "
        "256,384,512,640,768,896, max 3584, flip)",
    )
    onoff.add_argument("--no-tta", action="store_true", help="no TTA even if the config enables it")
    group.add_argument(
        "--tta-sizes", type=_sizes, help="TTA short sides, e.g. 512,640 (implies --tta)"
    )
    group.add_argument("--tta-max-size", type=int, help="TTA long-side limit (default: config's)")
    group.add_argument(
        "--tta-flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add flipped views (default: config's, True published)",
    )
    group.add_argument(
        "--sliding-window",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each view in tiles (default: config's TEST.SLIDING_WINDOW, with TTA only)",
    )
    group.add_argument("--sliding-tile-size", type=int, help="tile side (default: 224)")
    group.add_argument("--sliding-overlap", type=float, help="tile overlap (default: 2/3)")


def augmentation_settings(augmentation) -> dict | None:
    """A JSON-ready record of an ``ovseg.inference.tta.Augmentation`` (None: single view)."""
    if augmentation is None:
        return None
    import dataclasses

    record = dataclasses.asdict(augmentation)
    record["min_sizes"] = list(record["min_sizes"])
    return record
