"""COCO-Stuff-171: the 80 thing and 91 stuff classes, labels prepared as in the official repo."""

from __future__ import annotations

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names, pair_by_stem


class COCOStuff171(SemSegDataset):
    """COCO-Stuff-171 on the ``coco`` folder.

    Labels are PNGs in ``stuffthingmaps_detectron2/<split>2017`` holding the contiguous class
    index with 255 as ignore (written by ``ovseg prepare coco-stuff`` from the released
    ``stuffthingmaps``).
    """

    name = "coco-stuff-171"
    class_names = load_names("coco_stuff_171.txt")
    splits = ("val", "train")
    layout = "coco/ with val2017/*.jpg and stuffthingmaps_detectron2/val2017/*.png"
    ignore_values = (255,)

    def find_items(self) -> list[SemSegItem]:
        return pair_by_stem(
            self.root / f"{self.split}2017",
            self.root / "stuffthingmaps_detectron2" / f"{self.split}2017",
            ".png",
        )


def coco_stuff_source_ids() -> tuple[int, ...]:
    """For each of the 171 classes, its value in the released ``stuffthingmaps`` PNGs."""
    return tuple(int(v) for v in load_names("coco_stuff_171_ids.txt"))
