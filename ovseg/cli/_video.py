"""The video flags of ``ovseg segment`` and one video's run (``ovseg.inference.video``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_video_args(parser) -> None:
    group = parser.add_argument_group(
        "video",
        "videos (.mp4 .mov .webm .avi .mkv .m4v, needs 'ovseg[video]') write VIDEO_overlay.mp4 "
        "(source size and frame rate), VIDEO/000000.png ... (one label map per segmented frame, "
        "named by the frame's index) and VIDEO.jsonl (one line per frame); a rerun resumes "
        "after the last frame done",
    )
    group.add_argument(
        "--frame-stride",
        type=_positive,
        default=1,
        metavar="N",
        help="segment every N-th frame (0, N, 2N, ...); the overlay shows each segmented "
        "frame's labels until the next (default 1: every frame)",
    )
    group.add_argument(
        "--max-frames", type=_positive, metavar="N", help="segment at most N frames per video"
    )
    group.add_argument(
        "--temporal-smoothing",
        type=_positive,
        default=1,
        metavar="K",
        help="not official: each pixel takes the most frequent label of the last K segmented "
        "frames (ties: the current frame's); default 1 = off, every frame as an image",
    )


def video_settings(args):
    from ovseg.inference.video import VideoSettings

    return VideoSettings(
        frame_stride=getattr(args, "frame_stride", 1),
        max_frames=getattr(args, "max_frames", None),
        temporal_smoothing=getattr(args, "temporal_smoothing", 1),
    )


def video_record(record: dict, args) -> dict:
    """A video's options record: the images' plus how its frames are sampled."""
    return {**record, "video": video_settings(args).record()}


def segment_video_job(predictor, args, job, class_names, predict_kwargs, record) -> dict:
    from tqdm import tqdm

    from ovseg.inference.video import segment_video

    path, folder, stem = job
    if not isinstance(folder, Path):
        raise ValueError(f"video outputs are written to a local folder, not {folder}")

    def progress(total):
        return tqdm(total=total, unit="frame", desc=path.name, leave=False, file=sys.stderr)

    return segment_video(
        predictor,
        path,
        folder,
        stem,
        class_names,
        predict_kwargs,
        video_record(record, args),
        video_settings(args),
        alpha=args.alpha,
        progress=progress,
        restart=args.force,
    )
