"""Helpers shared by the preparation commands: lookup tables and atomic image writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def lookup_table(mapping: Mapping[int, int], size: int, default: int, dtype) -> np.ndarray:
    """A (size,) array sending each key of ``mapping`` to its value and the rest to ``default``."""
    table = np.full(size, default, dtype=dtype)
    for source, target in mapping.items():
        table[source] = target
    return table


def save_image_atomic(array: np.ndarray, path: Path, format: str, **options) -> None:
    """Save ``array`` with PIL as ``format`` to ``path`` via a temp file and ``os.replace``.

    uint16 arrays are saved as 16-bit (PIL mode I;16), uint8 as mode L (or RGB for HxWx3).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        image.save(tmp, format=format, **options)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def progress(items: Iterable, total: int, desc: str, enabled: bool = True) -> Iterable:
    """``items`` wrapped in a tqdm bar (with ETA) when ``enabled``."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", dynamic_ncols=True)
