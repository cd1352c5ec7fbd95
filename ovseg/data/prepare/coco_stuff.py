"""COCO-Stuff ``stuffthingmaps`` PNGs -> contiguous 171-class PNGs (255 ignore).

The released maps hold ``category id - 1`` (0..181 with gaps, 255 unlabelled). The 171
classes are the ids in use, in order; images with no labelled pixel are skipped, as in the
official script. Output: ``stuffthingmaps_detectron2/<split>2017/*.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ovseg.data.datasets.base import read_index_map
from ovseg.data.datasets.coco_stuff import coco_stuff_source_ids
from ovseg.data.prepare.common import lookup_table, progress, save_image_atomic


def coco_stuff_lut() -> np.ndarray:
    """(256,) uint8: released map value -> 171-class index, else 255."""
    mapping = {source: i for i, source in enumerate(coco_stuff_source_ids())}
    return lookup_table(mapping, 256, 255, np.uint8)


def prepare_coco_stuff(
    root: str | os.PathLike, split: str = "val", overwrite: bool = False, show_progress: bool = True
) -> int:
    """Convert ``root/stuffthingmaps/<split>2017/*.png``; returns how many were written."""
    src_dir = Path(root) / "stuffthingmaps" / f"{split}2017"
    if not src_dir.is_dir():
        raise FileNotFoundError(
            f"{src_dir} does not exist; unpack stuffthingmaps_trainval2017.zip "
            "into coco/stuffthingmaps"
        )
    out_dir = Path(root) / "stuffthingmaps_detectron2" / f"{split}2017"
    files = sorted(src_dir.glob("*.png"))
    lut = coco_stuff_lut()
    written = 0
    for src in progress(files, len(files), "prepare coco-stuff-171", show_progress):
        dst = out_dir / src.name
        if not overwrite and dst.is_file():
            written += 1
            continue
        raw = read_index_map(src)
        if raw.max() > 255:
            raise ValueError(f"{src}: values above 255; expected an 8-bit stuffthingmaps PNG")
        label = lut[raw]
        if (label == 255).all():
            continue
        save_image_atomic(label, dst, "PNG")
        written += 1
    return written
