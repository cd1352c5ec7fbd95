"""ADE20K readers: ADEChallengeData2016 (150 classes) and ADE20K_2021_17_01 (847 classes)."""

from __future__ import annotations

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names, pair_by_stem

_SPLIT_DIRS = {"val": "validation", "train": "training"}


class ADE20K150(SemSegDataset):
    """ADE20K-150 (A-150) in the official ADEChallengeData2016 encoding.

    Labels are mode-L PNGs where 0 is ignore and ``1..150`` are classes, so class =
    value - 1. The flat layout of the shared sample (``images/*.jpg``, ``annotations/*.png``
    with no split folder) is also read.
    """

    name = "ade20k-150"
    class_names = load_names("ade20k_150.txt")
    splits = ("val", "train")
    layout = (
        "ADEChallengeData2016/ with images/{validation,training}/*.jpg and "
        "annotations/{validation,training}/*.png"
    )
    label_offset = 1
    ignore_values = (0,)

    def find_items(self) -> list[SemSegItem]:
        sub = _SPLIT_DIRS[self.split]
        image_dir, label_dir = self.root / "images" / sub, self.root / "annotations" / sub
        if not image_dir.is_dir() and (self.root / "images").is_dir():
            # the flat sample layout: images/ and annotations/ hold the files directly
            image_dir, label_dir = self.root / "images", self.root / "annotations"
        return pair_by_stem(image_dir, label_dir, ".png")


class ADE20K847(SemSegDataset):
    """ADE20K-847 (A-847): ADE20K_2021_17_01 prepared by ``ovseg prepare ade20k-full``.

    Labels are 16-bit TIFFs holding the class index directly, with 65535 as ignore.
    """

    name = "ade20k-847"
    class_names = load_names("ade20k_847.txt")
    splits = ("val", "train")
    layout = (
        "ADE20K_2021_17_01/ with images_detectron2/validation/*.jpg and "
        "annotations_detectron2/validation/*.tif (written by `ovseg prepare ade20k-full`)"
    )
    ignore_values = (65535,)

    def find_items(self) -> list[SemSegItem]:
        sub = _SPLIT_DIRS[self.split]
        return pair_by_stem(
            self.root / "images_detectron2" / sub,
            self.root / "annotations_detectron2" / sub,
            ".tif",
        )


def ade20k_847_source_ids() -> tuple[int, ...]:
    """For each of the 847 classes, its class index in the full ADE20K index (``_seg.png``)."""
    return tuple(int(v) for v in load_names("ade20k_847_ids.txt"))


__all__ = ["ADE20K150", "ADE20K847", "ade20k_847_source_ids"]
