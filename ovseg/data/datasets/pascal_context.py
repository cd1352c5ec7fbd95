"""Pascal Context readers: PC-59 (PNG, 255 ignore) and PC-459 (16-bit TIFF, 65535 ignore)."""

from __future__ import annotations

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names, pair_by_stem


class PascalContext59(SemSegDataset):
    """PC-59 on the VOC2010 folder, labels written by ``ovseg prepare pascal-context``."""

    name = "pascal-context-59"
    class_names = load_names("pascal_context_59.txt")
    splits = ("val", "train")
    layout = "VOC2010/ with JPEGImages/*.jpg and annotations_detectron2/pc59_val/*.png"
    ignore_values = (255,)

    def find_items(self) -> list[SemSegItem]:
        label_dir = self.root / "annotations_detectron2" / f"pc59_{self.split}"
        return pair_by_stem(self.root / "JPEGImages", label_dir, ".png")


class PascalContext459(SemSegDataset):
    """PC-459 on the VOC2010 folder, labels written by ``ovseg prepare pascal-context``."""

    name = "pascal-context-459"
    class_names = load_names("pascal_context_459.txt")
    splits = ("val", "train")
    layout = "VOC2010/ with JPEGImages/*.jpg and annotations_detectron2/pc459_val/*.tif"
    ignore_values = (65535,)

    def find_items(self) -> list[SemSegItem]:
        label_dir = self.root / "annotations_detectron2" / f"pc459_{self.split}"
        return pair_by_stem(self.root / "JPEGImages", label_dir, ".tif")
