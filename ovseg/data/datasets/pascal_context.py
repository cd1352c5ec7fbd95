"""Pascal Context readers: PC-59 (PNG, 255 ignore) and PC-459 (16-bit TIFF, 65535 ignore)."""

from __future__ import annotations

from typing import ClassVar

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names, pair_by_stem


class _PascalContext(SemSegDataset):
    """Labels in ``VOC2010/annotations_detectron2/<prefix>_<split>`` (``ovseg prepare``)."""

    splits = ("val", "train")
    prefix: ClassVar[str]
    label_ext: ClassVar[str]

    def find_items(self) -> list[SemSegItem]:
        label_dir = self.root / "annotations_detectron2" / f"{self.prefix}_{self.split}"
        return pair_by_stem(self.root / "JPEGImages", label_dir, self.label_ext)


class PascalContext59(_PascalContext):
    """PC-59 on the VOC2010 folder: PNG labels, 255 ignore."""

    name = "pascal-context-59"
    class_names = load_names("pascal_context_59.txt")
    layout = "VOC2010/ with JPEGImages/*.jpg and annotations_detectron2/pc59_val/*.png"
    prefix, label_ext, ignore_values = "pc59", ".png", (255,)


class PascalContext459(_PascalContext):
    """PC-459 on the VOC2010 folder: 16-bit TIFF labels, 65535 ignore."""

    name = "pascal-context-459"
    class_names = load_names("pascal_context_459.txt")
    layout = "VOC2010/ with JPEGImages/*.jpg and annotations_detectron2/pc459_val/*.tif"
    prefix, label_ext, ignore_values = "pc459", ".tif", (65535,)
