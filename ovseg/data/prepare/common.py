"""Helpers shared by the preparation commands: lookup tables and atomic image writes."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ovseg.fileio import write_atomic


def lookup_table(mapping: Mapping[int, int], size: int, default: int, dtype) -> np.ndarray:
    """A (size,) array sending each key of ``mapping`` to its value and the rest to ``default``."""
    table = np.full(size, default, dtype=dtype)
    for source, target in mapping.items():
        table[source] = target
    return table


def save_image_atomic(array: np.ndarray, path: Path, format: str, **options) -> None:
    """Encode ``array`` with PIL as ``format`` and write it to ``path`` atomically.

    uint16 arrays are saved as 16-bit (PIL mode I;16), uint8 as mode L (or RGB for HxWx3).
    """
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    write_atomic(path, buffer.getvalue())


def progress(items: Iterable, total: int, desc: str, enabled: bool = True) -> Iterable:
    """``items`` wrapped in a tqdm bar (with ETA) when ``enabled``."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", dynamic_ncols=True)
