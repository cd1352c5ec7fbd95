"""Benchmark readers, by name.

``build_dataset("ade20k-150", root, split="val")`` returns a ``SemSegDataset`` whose items are
(image path, label path) pairs and whose ``class_names`` are the exact names the official
evaluation uses. The vocabulary travels with the dataset object and is passed on as a plain
argument; nothing here is a global vocabulary.
"""

from __future__ import annotations

import os

from ovseg.data.datasets.ade20k import ADE20K150, ADE20K847
from ovseg.data.datasets.base import IGNORE_LABEL, SemSegDataset, SemSegItem
from ovseg.data.datasets.camvid import CamVid
from ovseg.data.datasets.coco_stuff import COCOStuff171
from ovseg.data.datasets.pascal_context import PascalContext59, PascalContext459
from ovseg.data.datasets.pascal_voc import PascalVOC20

DATASETS: dict[str, type[SemSegDataset]] = {
    cls.name: cls
    for cls in (
        ADE20K150,
        ADE20K847,
        PascalContext59,
        PascalContext459,
        PascalVOC20,
        COCOStuff171,
        CamVid,
    )
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_class(name: str) -> type[SemSegDataset]:
    """The reader class registered as ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list_datasets()}")
    return DATASETS[name]


def build_dataset(name: str, root: str | os.PathLike, split: str | None = None) -> SemSegDataset:
    """Open the benchmark ``name`` at ``root`` (its original or prepared folder)."""
    return dataset_class(name)(root, split)


__all__ = [
    "DATASETS",
    "IGNORE_LABEL",
    "SemSegDataset",
    "SemSegItem",
    "build_dataset",
    "dataset_class",
    "list_datasets",
]
