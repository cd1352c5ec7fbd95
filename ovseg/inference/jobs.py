"""Segmenting many images into a folder: the list of jobs, which of them are done, and the
work on one image.

``collect_images`` walks the inputs (files and folders, local or at URLs, mirrored under the
output folder); ``is_done`` tells whether an image's outputs exist and were made with the same
vocabulary and the same record of everything that shapes them (``PredictorSpec.record()``),
and ``redo_reasons`` which of those differ. The work on one image is ``read_job`` (decode, or
the error), ``segment_image`` (the predictor's two calls) and ``write_outputs`` (the three
files, JSON last); ``FailureLog`` keeps ``failures.jsonl``. Every engine of ``ovseg segment``
(the local threads, Ray) runs these same functions, so their outputs are the same bytes.
"""

from __future__ import annotations

import fnmatch
import json
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

from ovseg.inference.storage import UrlPath, as_path

FAILURES_FILE = "failures.jsonl"

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# videos: each frame segmented as an image (ovseg.inference.video)
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".avi", ".mkv", ".m4v"}


def is_video(path) -> bool:
    """Whether ``path`` names a video (by its suffix)."""
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


def collect_images(
    inputs: list[str], out: Path | UrlPath
) -> list[tuple[Path | UrlPath, Path | UrlPath, str]]:
    """(image or video, output folder, file stem) per input; folders are walked for images
    and videos and mirrored. Inputs and ``out`` may be local paths or URLs
    (``ovseg.inference.storage``)."""
    jobs: list[tuple[Path | UrlPath, Path | UrlPath, str]] = []
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    for item in inputs:
        path = as_path(item)
        if path.is_dir():
            for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes):
                if image.is_file():
                    rel = image.relative_to(path)
                    jobs.append((image, out / path.name / rel.parent, rel.stem))
        elif path.is_file():
            jobs.append((path, out, path.stem))
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    seen: dict[Path, Path] = {}
    for image, folder, stem in jobs:
        key = folder / stem
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {image} would both write {key}.*; "
                f"rename one or segment them in separate runs with different --out"
            )
        seen[key] = image
    if not jobs:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or videos "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}) in {inputs}"
        )
    return jobs


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differing_keys(old: dict, new: dict) -> list[str]:
    """The dotted keys (``model.weights_sha256``, ``inference.tta``) whose values differ
    between two records, a key present in one only included."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    marker = object()
    return sorted(
        key
        for key in old_flat.keys() | new_flat.keys()
        if old_flat.get(key, marker) != new_flat.get(key, marker)
    )


def redo_reasons(
    folder: Path | UrlPath, stem: str, class_names: list[str], options: dict
) -> list[str]:
    """Why an image must be (re)done; ``[]`` when it is done.

    Done means: all three outputs exist, and the JSON was made with ``class_names`` and the
    same ``options`` (the record of everything that shapes the outputs,
    ``PredictorSpec.record()``). Otherwise the reasons are ``"no outputs"``, ``"unreadable
    JSON"``, ``"vocabulary"`` and/or the dotted keys of ``options`` that differ.
    """
    record = folder / f"{stem}.json"
    if not all(
        p.is_file() for p in (record, folder / f"{stem}.png", folder / f"{stem}_overlay.png")
    ):
        return ["no outputs"]
    try:
        done = json.loads(record.read_text())
        old_names, old_options = done["vocabulary"], done["options"]
    except (ValueError, KeyError, TypeError, OSError):
        return ["unreadable JSON"]
    reasons = [] if old_names == class_names else ["vocabulary"]
    # compare as JSON reads back (tuples are lists there)
    current = json.loads(json.dumps(options, default=str))
    if not isinstance(old_options, dict):
        return [*reasons, "options"]
    return reasons + differing_keys(old_options, current)


def is_done(folder: Path | UrlPath, stem: str, class_names: list[str], options: dict) -> bool:
    """True when all three outputs exist and the JSON was made with ``class_names`` and the
    same ``options`` (``redo_reasons`` says why not)."""
    return not redo_reasons(folder, stem, class_names, options)


def read_job(path: Path | UrlPath):
    """``(image, None)``, the (H, W, 3) uint8 RGB pixels of the file, or ``(None, failure)``
    (``failure_record``) when it cannot be read or decoded; ``(None, None)`` for a video."""
    from ovseg.data.image import decode_image, read_image

    if is_video(path):
        return None, None  # decoded frame by frame by ovseg.inference.video
    try:
        image = (
            read_image(path)
            if isinstance(path, Path)
            else decode_image(path.read_bytes(), str(path))
        )
        return image, None
    except (ValueError, OSError) as error:
        return None, failure_record(path, "read", error)


def segment_image(predictor, image, class_names: list[str], predict_kwargs: dict):
    """``(Segmentation, stats)``: ``predictor.set_image(image)`` then ``predict``; ``stats``
    holds the seconds of each call and where the text features came from."""
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    seg = predictor.predict(class_names, **predict_kwargs)
    adapter = getattr(getattr(predictor, "model", None), "clip_adapter", None)
    text = dict(getattr(adapter, "last_text_stats", None) or {})
    return seg, {"set_image_s": t1 - t0, "predict_s": time.perf_counter() - t1, "text": text}


def segment_images(predictor, images: list, class_names: list[str], predict_kwargs: dict):
    """``segment_image`` for several images in one batch (``predictor.set_images`` then
    ``predict_batch``): ``(segmentations, stats)``, one each per image; the batch's seconds
    are shared out evenly over its images, and ``stats["batch"]`` is its size."""
    t0 = time.perf_counter()
    predictor.set_images(images)
    t1 = time.perf_counter()
    segs = predictor.predict_batch(class_names, **predict_kwargs)
    t2 = time.perf_counter()
    adapter = getattr(getattr(predictor, "model", None), "clip_adapter", None)
    text = dict(getattr(adapter, "last_text_stats", None) or {})
    n = len(images)
    stats = {"set_image_s": (t1 - t0) / n, "predict_s": (t2 - t1) / n, "batch": n, "text": text}
    return segs, [dict(stats) for _ in range(n)]


def output_extra(source, class_names: list[str], options: dict) -> dict:
    """The keys ``ovseg segment`` adds to each JSON: the image, the vocabulary and the options
    (what ``is_done`` compares)."""
    return {"source": str(source), "vocabulary": class_names, "options": options}


def write_outputs(seg, folder: Path | UrlPath, stem: str, image, alpha: float, extra: dict):
    """Write ``<stem>.png``, ``<stem>_overlay.png`` and ``<stem>.json`` (last) into ``folder``,
    each whole (``Segmentation.save`` locally; one upload per file at a URL)."""
    if isinstance(folder, Path):
        return seg.save(folder, stem, image=image, alpha=alpha, extra=extra)
    for name, data in seg.files(stem, image=image, alpha=alpha, extra=extra).items():
        (folder / name).write_bytes(data)
    return None


def output_names(stem: str) -> tuple[str, str, str]:
    """The files of one image, in the order they are written."""
    return f"{stem}.png", f"{stem}_overlay.png", f"{stem}.json"


def remove_partial_writes(jobs: Iterable[tuple]) -> int:
    """Remove the temporary files that a killed process left beside the outputs of ``jobs``
    (``.<file>.XXXXXXXX.tmp``: ``ovseg.fileio.atomic_path`` and ``UrlPath.write_bytes``);
    returns how many. Run it when no writer is at work on these images; it lists each output
    folder once."""
    by_folder: dict = {}
    for _, folder, stem in jobs:
        by_folder.setdefault(folder, set()).update(output_names(stem))
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = list(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and fnmatch.fnmatchcase(name, ".*.????????.tmp")):
                continue
            if name[1:-13] in names:
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def failure_record(source, stage: str, error: BaseException) -> dict:
    """One line of ``failures.jsonl``: the image, the stage that failed ("read", "segment",
    or "worker": its worker died while on it too often), the error's type and message, and for
    an error in the work the last lines of its traceback."""
    record = {"source": str(source), "stage": stage, "error": str(error)}
    record["error_type"] = type(error).__name__
    if stage not in ("read", "worker"):  # an error in the work: where it came from
        record["traceback"] = "".join(traceback.format_exception(error)[-3:]).strip()
    return record


class FailureLog:
    """``failures.jsonl`` in the output folder: one JSON line per image that failed in this
    run, appended as they come (so a killed run keeps them) and rewritten sorted by image when
    the run ends; removed when a run ends without failures."""

    def __init__(self, out: Path | UrlPath) -> None:
        self.path = as_path(out) / FAILURES_FILE
        self.records: list[dict] = []
        self._stream = None
        if isinstance(self.path, Path) and self.path.exists():
            self.path.unlink()

    def add(self, record: dict) -> None:
        self.records.append(record)
        if isinstance(self.path, Path):  # a URL gets the whole file at the end
            if self._stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = self.path.open("a", encoding="utf-8")
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if not self.records:
            if self.path.exists():
                self.path.unlink()
            return
        lines = sorted(self.records, key=lambda r: (r["source"], r["stage"]))
        data = "".join(json.dumps(r) + "\n" for r in lines).encode()
        if isinstance(self.path, Path):
            from ovseg.fileio import write_atomic

            write_atomic(self.path, data)
        else:
            self.path.write_bytes(data)
