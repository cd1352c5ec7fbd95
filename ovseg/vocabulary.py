"""Reading a vocabulary (the class names to segment) from text a person typed or a file."""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_NAME_LENGTH = 200


def _clean(names: list[str], source: str) -> list[str]:
    out: list[str] = []
    for name in names:
        name = " ".join(name.split())
        if not name or name in out:
            continue
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"class name longer than {MAX_NAME_LENGTH} characters in {source}: {name[:40]!r}..."
            )
        out.append(name)
    if not out:
        raise ValueError(f"empty vocabulary: {source} names no class; give at least one name")
    return out


def parse_class_names(text: str) -> list[str]:
    """Split ``"sky, tree; person"`` on commas, semicolons and newlines into class names.

    Whitespace is collapsed, empty items and repeats are dropped, order is kept.
    Raises ValueError when nothing is left.
    """
    return _clean(re.split(r"[,;\n]", text), "the class list")


def read_class_file(path: str | os.PathLike) -> list[str]:
    """One class name per line (commas inside a name are kept, e.g. "building, edifice").

    Blank lines and lines starting with ``#`` are skipped. Raises ValueError when empty.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return _clean([ln for ln in lines if not ln.lstrip().startswith("#")], str(path))
