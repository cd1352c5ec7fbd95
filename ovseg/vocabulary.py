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


def validate_class_names(class_names) -> list[str]:
    """Check a vocabulary: a non-empty list of distinct, non-blank strings."""
    if isinstance(class_names, str):
        raise ValueError(
            "class_names must be a list of names, got one string; split it, e.g. "
            f"{[c.strip() for c in class_names.split(',')]}"
        )
    names = list(class_names)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"class names must be non-blank strings, got {bad!r}")
    seen, dups = set(), []
    for n in names:
        key = n.strip().lower()
        if key in seen:
            dups.append(n)
        seen.add(key)
    if dups:
        raise ValueError(f"duplicate class names: {sorted(set(dups))}")
    return [n.strip() for n in names]
