"""VOC 2012 palette PNGs -> the official PAS-20 index PNGs (background and void ignored).

``SegmentationClass`` PNGs are palette images whose indices are 0 = background,
1..20 = classes, 255 = void. The official PAS-20 labels are class = index - 1 with
background and void -> 255, written to ``annotations_detectron2/<split>/<id>.png``; images
whose pixels are all ignored are skipped, as in the official script (they score nothing).
The ``pascal-voc-20`` reader reads the palette PNGs directly, so this step is optional.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ovseg.data.datasets.base import read_index_map
from ovseg.data.prepare.common import lookup_table, progress, save_image_atomic

VOC_IGNORE = 255


def voc_lut() -> np.ndarray:
    """(256,) uint8: 0 -> 255, k -> k - 1 for 1..20, 255 -> 255; other values -> 255."""
    return lookup_table({k: k - 1 for k in range(1, 21)}, 256, VOC_IGNORE, np.uint8)


def convert_voc_label(path: str | os.PathLike) -> np.ndarray:
    """Palette (or grey) VOC label PNG -> (H, W) uint8 PAS-20 classes, 255 ignore."""
    raw = read_index_map(path)
    bad = (raw > 20) & (raw != 255)
    if bad.any():
        raise ValueError(
            f"{path}: values {sorted(set(np.unique(raw[bad]).tolist()))[:10]} are not VOC "
            "indices (expected 0 background, 1..20 classes, 255 void)"
        )
    return voc_lut()[raw]


def prepare_pascal_voc(
    root: str | os.PathLike,
    split: str = "val",
    source: str = "SegmentationClass",
    overwrite: bool = False,
    show_progress: bool = True,
) -> int:
    """Convert the labels of ``ImageSets/Segmentation/<split>.txt``; returns how many written.

    Args:
        root: the ``VOC2012`` folder.
        source: label folder (``SegmentationClass``, or ``SegmentationClassAug``).
    """
    root = Path(root)
    list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path} does not exist; --root must be the VOC2012 folder")
    ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
    out_dir = root / "annotations_detectron2" / split
    written = 0
    for image_id in progress(ids, len(ids), "prepare pascal-voc-20", show_progress):
        src, dst = root / source / f"{image_id}.png", out_dir / f"{image_id}.png"
        if not overwrite and dst.is_file():
            written += 1
            continue
        label = convert_voc_label(src)
        if (label == VOC_IGNORE).all():
            continue
        save_image_atomic(label, dst, "PNG")
        written += 1
    return written
