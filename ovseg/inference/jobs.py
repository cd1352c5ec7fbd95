"""Segmenting many images into a folder: the list of jobs, and which of them are done.

``collect_images`` walks the inputs (files and folders, mirrored under the output folder);
``is_done`` tells whether an image's outputs exist and were made with the same vocabulary and
the same record of everything that shapes them (``PredictorSpec.record()``), and
``redo_reasons`` which of those differ. ``ovseg segment`` and every engine that runs it use
these.
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def collect_images(inputs: list[str], out: Path) -> list[tuple[Path, Path, str]]:
    """(image, output folder, file stem) per image; folders are walked and mirrored."""
    jobs: list[tuple[Path, Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
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
                f"{seen[key]} and {image} would both write {key}.png; "
                f"rename one or segment them in separate runs with different --out"
            )
        seen[key] = image
    if not jobs:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {inputs}")
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


def redo_reasons(folder: Path, stem: str, class_names: list[str], options: dict) -> list[str]:
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


def is_done(folder: Path, stem: str, class_names: list[str], options: dict) -> bool:
    """True when all three outputs exist and the JSON was made with ``class_names`` and the
    same ``options`` (``redo_reasons`` says why not)."""
    return not redo_reasons(folder, stem, class_names, options)
