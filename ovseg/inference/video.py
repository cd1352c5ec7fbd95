"""Video input for ``ovseg segment``: every frame segmented as an image, resumably.

For a video ``clip.mp4`` (also ``.mov``, ``.webm``, ``.avi``, ``.mkv``, ``.m4v``) in the output
folder:

- ``clip/000000.png``, ``clip/000001.png``, ...: the label map of each segmented frame, in
  the image label-PNG format, named by the frame's index in the source;
- ``clip.jsonl``: one line per segmented frame, the fields of an image's JSON plus ``frame``
  (index) and ``time`` (seconds, the frame's presentation time);
- ``clip_overlay.mp4``: the overlay with the legend inside the frame, at the source's size
  and frame rate, one frame per source frame (with ``frame_stride`` N, a frame shows the
  labels of the latest segmented frame).

Each frame is ``predictor.set_image(frame)`` + ``predict``, exactly as an image (the text
features are computed once and then come from the predictor's cache). A frame's label PNG
is written first, then its line is appended to the JSONL and flushed: a killed run loses at
most the frame in flight. A rerun keeps the frames already done (the longest run of lines
from the first selected frame on, with the same vocabulary and options) and segments from
the next one; the overlay video, written to a temporary file and renamed when complete, is
re-encoded from the saved label maps and the new ones. A video whose overlay exists with
the same options is skipped.

Decoding and encoding use PyAV (``ovseg.inference.video_io``; ``pip install 'ovseg[video]'``).
A file that cannot be read as a video (corrupt, truncated, no frames, an unknown codec, no
video stream) raises ``VideoError`` naming it, before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovseg.inference.jobs import VIDEO_SUFFIXES, differing_keys, is_video, output_extra
from ovseg.inference.video_io import (
    OverlayWriter,
    VideoError,
    VideoFrame,
    VideoInfo,
    open_video,
    probe_video,
    read_frames,
)

FRAME_NAME = re.compile(r"^\d{6,}\.png$")

__all__ = [
    "VIDEO_SUFFIXES",
    "OverlayWriter",
    "VideoError",
    "VideoFrame",
    "VideoInfo",
    "VideoSettings",
    "is_video",
    "majority_vote",
    "open_video",
    "probe_video",
    "read_frames",
    "segment_video",
    "video_redo_reasons",
]


def majority_vote(history: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the most frequent label of the (H, W) maps in ``history`` (oldest first);
    ties go to the latest frame's label when it is among them, else to the smallest."""
    stack = np.stack(history)
    latest = stack[-1]
    values = np.unique(stack)
    counts = np.stack([(stack == v).sum(axis=0) for v in values])  # (V, H, W)
    best = counts.max(axis=0)
    latest_count = (stack == latest[None]).sum(axis=0)
    winner = values[np.argmax(counts == best[None], axis=0)]  # the smallest of the tied
    return np.where(latest_count == best, latest, winner)


@dataclass(frozen=True)
class VideoSettings:
    """How a video is sampled: every ``frame_stride``-th frame (from frame 0), at most
    ``max_frames`` of them (None: all), and an optional majority vote over the last
    ``temporal_smoothing`` segmented frames' labels (1: off, the official per-image result)."""

    frame_stride: int = 1
    max_frames: int | None = None
    temporal_smoothing: int = 1

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ValueError(f"frame stride must be >= 1, got {self.frame_stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max frames must be >= 1 or None, got {self.max_frames}")
        if self.temporal_smoothing < 1:
            raise ValueError(
                f"temporal smoothing must be >= 1 frame, got {self.temporal_smoothing}"
            )

    def selected(self, index: int, count: int) -> bool:
        """Whether frame ``index`` is segmented, ``count`` frames having been so far."""
        return index % self.frame_stride == 0 and (
            self.max_frames is None or count < self.max_frames
        )

    def last_frame(self) -> int | None:
        """The last source frame the overlay shows (None: up to the end)."""
        if self.max_frames is None:
            return None
        return (self.max_frames - 1) * self.frame_stride + self.frame_stride - 1

    def record(self) -> dict:
        return {
            "frame_stride": self.frame_stride,
            "max_frames": self.max_frames,
            "temporal_smoothing": self.temporal_smoothing,
        }


def output_paths(folder: Path, stem: str) -> dict[str, Path]:
    """The outputs of video ``stem`` in ``folder``."""
    return {
        "overlay": folder / f"{stem}_overlay.mp4",
        "frames": folder / stem,
        "jsonl": folder / f"{stem}.jsonl",
    }


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of ``path`` up to the first that does not parse (a killed run's
    partial last line)."""
    lines = []
    if not path.is_file():
        return lines
    with path.open("rb") as handle:
        for raw in handle:
            try:
                line = json.loads(raw)
            except ValueError:
                break
            if not isinstance(line, dict) or not raw.endswith(b"\n"):
                break
            lines.append(line)
    return lines


def video_redo_reasons(folder: Path, stem: str, class_names: list[str], options: dict) -> list[str]:
    """Why video ``stem`` must be (re)done; ``[]`` when its overlay exists and its JSONL
    was made with ``class_names`` and ``options`` (as ``jobs.redo_reasons`` for images)."""
    paths = output_paths(folder, stem)
    if not (paths["overlay"].is_file() and paths["jsonl"].is_file()):
        return ["no outputs"]
    lines = read_lines(paths["jsonl"])
    if not lines:
        return ["unreadable JSON"]
    first = lines[0]
    reasons = [] if first.get("vocabulary") == class_names else ["vocabulary"]
    old = first.get("options")
    if not isinstance(old, dict):
        return [*reasons, "options"]
    return reasons + differing_keys(old, json.loads(json.dumps(options, default=str)))


def _clean(paths: dict[str, Path], keep_frames: set[int]) -> None:
    """Remove temporary files a killed run left, and label PNGs of frames not kept."""
    folder = paths["overlay"].parent
    if folder.is_dir():
        for name in (paths["overlay"].name, paths["jsonl"].name):
            for tmp in folder.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
    frames = paths["frames"]
    if frames.is_dir():
        for entry in frames.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
            elif FRAME_NAME.match(entry.name) and int(entry.stem) not in keep_frames:
                entry.unlink(missing_ok=True)


def _done_lines(paths: dict[str, Path], class_names, options, settings: VideoSettings):
    """The lines of frames already done: the longest run of lines, in order, for the first
    selected frames (0, stride, 2 * stride, ...), made with the same vocabulary and options,
    whose label PNG exists."""
    options = json.loads(json.dumps(options, default=str))
    done = []
    for position, line in enumerate(read_lines(paths["jsonl"])):
        expected = position * settings.frame_stride
        if settings.max_frames is not None and position >= settings.max_frames:
            break
        if (
            line.get("frame") != expected
            or line.get("vocabulary") != class_names
            or line.get("options") != options
            or not (paths["frames"] / f"{expected:06d}.png").is_file()
        ):
            break
        done.append(line)
    return done


def _read_label_png(path: Path, num_classes: int) -> np.ndarray:
    from PIL import Image

    from ovseg.inference.segmentation import unlabelled_as_negative

    with Image.open(path) as image:
        return unlabelled_as_negative(np.array(image), num_classes)


def segment_video(
    predictor,
    path: str | os.PathLike,
    folder: Path,
    stem: str,
    class_names: list[str],
    predict_kwargs: dict,
    options: dict,
    settings: VideoSettings = VideoSettings(),
    alpha: float = 0.5,
    progress: Callable[[int | None], object] | None = None,
    restart: bool = False,
) -> dict:
    """Segment every selected frame of the video ``path`` into ``folder`` (see the module
    docstring), resuming a killed run.

    Args:
        predictor: a ``Predictor`` (``set_image`` + ``predict``).
        path: the video file.
        folder, stem: outputs go to ``folder/stem_overlay.mp4``, ``folder/stem/``,
            ``folder/stem.jsonl``.
        class_names: the vocabulary.
        predict_kwargs: ``predict``'s keyword arguments.
        options: the record written into each line (and compared on a rerun), e.g.
            ``PredictorSpec.record()`` with ``settings.record()`` under ``"video"``.
        settings: frame stride, maximum frames, temporal smoothing.
        alpha: overlay colour weight.
        progress: called with the number of frames to segment (None if unknown); returns a
            tqdm-like object whose ``update(1)`` is called per frame segmented or reused.
        restart: segment every frame again (``--force``), discarding earlier outputs.
    Returns:
        ``{"frames": frames segmented now, "reused": frames kept from a previous run,
        "overlay_frames": frames in the overlay video, "text": the last text stats}``.
    """
    from ovseg.fileio import atomic_path

    path = Path(path)
    folder = Path(folder)
    paths = output_paths(folder, stem)
    info = probe_video(path)  # bad input fails before anything is written
    done = [] if restart else _done_lines(paths, class_names, options, settings)
    keep = {line["frame"] for line in done}
    paths["overlay"].unlink(missing_ok=True)  # it exists again once this pass completes
    _clean(paths, keep)
    paths["frames"].mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["jsonl"]) as tmp:  # drop a partial last line and stale lines
        tmp.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in done))
    total = info.frames
    if total is not None:
        total = -(-total // settings.frame_stride)
        if settings.max_frames is not None:
            total = min(total, settings.max_frames)
    bar = progress(total) if progress is not None else None
    k = settings.temporal_smoothing
    resume = len(done)  # position of the first frame to segment
    history: deque = deque(maxlen=k)
    labels, count, segmented, text = None, 0, 0, {}
    num_classes = len(done[0]["class_names"]) if done else None
    with (
        atomic_path(paths["overlay"]) as overlay_tmp,
        OverlayWriter(overlay_tmp, info.width, info.height, info.rate) as writer,
        paths["jsonl"].open("a", encoding="utf-8") as jsonl,
    ):
        for frame in read_frames(path, settings.last_frame()):
            if settings.selected(frame.index, count):
                position, count = count, count + 1
                png = paths["frames"] / f"{frame.index:06d}.png"
                if position < resume - (k - 1):  # done, and outside the smoothing window
                    labels, names = _read_label_png(png, num_classes), done[position]["class_names"]
                else:  # segment: a new frame, or the smoothing window before one
                    seg = _segment(predictor, frame.rgb, class_names, predict_kwargs)
                    text = _text_stats(predictor) or text
                    history.append(seg.label_map)
                    if k > 1:
                        seg.label_map = majority_vote(list(history))
                    labels, names = seg.label_map, seg.class_names
                    if position >= resume:
                        with atomic_path(png) as tmp:
                            seg.label_image().save(tmp, format="PNG")
                        line = {
                            **seg.to_json(),
                            **output_extra(path, class_names, options),
                            "frame": frame.index,
                            "time": frame.time,
                        }
                        jsonl.write(json.dumps(line) + "\n")
                        jsonl.flush()
                        os.fsync(jsonl.fileno())
                        segmented += 1
                    elif position >= resume - (k - 1):  # the window: outputs already there
                        labels = _read_label_png(png, len(names))
                if bar is not None:
                    bar.update(1)
            if labels is None:
                continue  # frames before the first selected one cannot occur (frame 0 is)
            overlay = _overlay(frame.rgb, labels, names, alpha)
            writer.write(overlay)
        overlay_frames = writer.count
    return {
        "frames": segmented,
        "reused": min(resume, count),
        "overlay_frames": overlay_frames,
        "text": text,
    }


def _text_stats(predictor) -> dict:
    adapter = getattr(getattr(predictor, "model", None), "clip_adapter", None)
    return dict(getattr(adapter, "last_text_stats", None) or {})


def _segment(predictor, rgb: np.ndarray, class_names, predict_kwargs):
    predictor.set_image(rgb)
    return predictor.predict(class_names, **predict_kwargs)


def _overlay(rgb: np.ndarray, labels: np.ndarray, names: list[str], alpha: float) -> np.ndarray:
    from ovseg.inference.visualize import overlay_image

    return np.asarray(overlay_image(rgb, labels, names, alpha=alpha, legend="inset"))
