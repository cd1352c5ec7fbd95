"""Class names: one set of rules for text a person typed, a file, and the model.

A name is cleaned by collapsing runs of whitespace to one space and stripping the ends. Two
names are the same class when their cleaned forms are equal ignoring case (``name_key``), as
the text tower sees them (CLIP's tokenizer lower-cases and collapses whitespace). Parsing
(``parse_vocabulary``, ``read_vocabulary_file``) merges such repeats, keeping the first
spelling, and says so in ``Vocabulary.notice``; the model (``validate_class_names``) refuses
a list with repeats with ``VocabularyError``, naming them. Everything here is linear in the
input.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_NAME_LENGTH = 200


class VocabularyError(ValueError):
    """A vocabulary that cannot be used (empty, a blank or over-long name, repeats, ...):
    an input error, which the service answers with 400."""


def clean_name(name: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped."""
    return " ".join(name.split())


def name_key(name: str) -> str:
    """What makes two names the same class: the cleaned name, case-folded."""
    return clean_name(name).casefold()


@dataclass
class Vocabulary:
    """Parsed class names: ``names`` in order, repeats merged; ``merged`` the dropped
    repeats as given (each with the name it repeats)."""

    names: list[str]
    merged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def notice(self) -> str | None:
        """One line about the merged repeats, or None."""
        if not self.merged:
            return None
        shown = ", ".join(f"{dup!r} = {kept!r}" for dup, kept in self.merged[:10])
        more = f" and {len(self.merged) - 10} more" if len(self.merged) > 10 else ""
        return (
            f"merged {len(self.merged)} repeated class name(s) (names equal ignoring case and "
            f"spacing are one class): {shown}{more}"
        )


def _clean(names, source: str) -> Vocabulary:
    out: list[str] = []
    first: dict[str, str] = {}
    merged: list[tuple[str, str]] = []
    for raw in names:
        name = clean_name(raw)
        if not name:
            continue
        if len(name) > MAX_NAME_LENGTH:
            raise VocabularyError(
                f"class name longer than {MAX_NAME_LENGTH} characters in {source}: {name[:40]!r}..."
            )
        key = name.casefold()
        if key in first:
            merged.append((name, first[key]))
            continue
        first[key] = name
        out.append(name)
    if not out:
        raise VocabularyError(f"empty vocabulary: {source} names no class; give at least one name")
    return Vocabulary(out, merged)


_SEPARATORS = re.compile(r"[,;\n]")


def parse_vocabulary(text: str) -> Vocabulary:
    """Split ``"sky, tree; person"`` on commas, semicolons and newlines into class names,
    cleaned, empty items dropped, repeats merged (``Vocabulary.merged``), order kept.

    Raises:
        VocabularyError: nothing is left, or a name is longer than ``MAX_NAME_LENGTH``.
    """
    return _clean(_SEPARATORS.split(text), "the class list")


def parse_class_names(text: str) -> list[str]:
    """``parse_vocabulary(text).names``."""
    return parse_vocabulary(text).names


def read_vocabulary_file(path: str | os.PathLike) -> Vocabulary:
    """One class name per line (commas inside a name are kept, e.g. "building, edifice").

    Blank lines and lines starting with ``#`` are skipped; repeats are merged.
    Raises ``VocabularyError`` when nothing is left.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return _clean((ln for ln in lines if not ln.lstrip().startswith("#")), str(path))


def read_class_file(path: str | os.PathLike) -> list[str]:
    """``read_vocabulary_file(path).names``."""
    return read_vocabulary_file(path).names


def validate_class_names(class_names) -> list[str]:
    """Check a vocabulary for the model: a non-empty list of non-blank strings with no two
    the same class (``name_key``); returns the cleaned names.

    Raises:
        VocabularyError: naming what is wrong (repeats with the names they repeat).
    """
    if isinstance(class_names, str):
        raise VocabularyError(
            "class_names must be a list of names, got one string; split it, e.g. "
            f"{[c.strip() for c in class_names.split(',')][:10]}"
        )
    names = list(class_names)
    if not names:
        raise VocabularyError("the vocabulary is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise VocabularyError(f"class names must be non-blank strings, got {bad[:10]!r}")
    vocabulary = _clean(names, "class_names")
    if vocabulary.merged:
        shown = ", ".join(f"{dup!r} repeats {kept!r}" for dup, kept in vocabulary.merged[:10])
        raise VocabularyError(
            f"duplicate class names (equal ignoring case and spacing): {shown}; remove them "
            "or parse the list with ovseg.vocabulary.parse_vocabulary, which merges them"
        )
    return vocabulary.names
