"""Segmenting many images into a folder: the list of jobs, and which of them are done.

``collect_images`` walks the inputs (files and folders, mirrored under the output folder);
``is_done`` tells whether an image's outputs exist and were made with the same vocabulary and
options. ``ovseg segment`` and every engine that runs it use these.
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


def is_done(folder: Path, stem: str, class_names: list[str], options: dict) -> bool:
    """True when all three outputs exist and the JSON was made with ``class_names`` and the
    prediction ``options``."""
    record = folder / f"{stem}.json"
    if not all(
        p.is_file() for p in (record, folder / f"{stem}.png", folder / f"{stem}_overlay.png")
    ):
        return False
    try:
        done = json.loads(record.read_text())
        return done["vocabulary"] == class_names and done["options"] == options
    except (ValueError, KeyError, OSError):
        return False
