"""CamVid (SegNet tutorial release, 11 classes) in the layout of ``shared/data/camvid``."""

from __future__ import annotations

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names, pair_by_stem


class CamVid(SemSegDataset):
    """CamVid: ``<split>/images/*`` and ``<split>/labels/*.png`` with 0..10 classes, 255 ignore.

    When the root holds a ``classes.txt``, it must list the same 11 names in the same order.
    """

    name = "camvid"
    class_names = load_names("camvid.txt")
    splits = ("val", "train", "test")
    layout = "camvid/ with <split>/images/*.jpg|png and <split>/labels/*.png"
    ignore_values = (255,)

    def find_items(self) -> list[SemSegItem]:
        names_file = self.root / "classes.txt"
        if names_file.is_file():
            names = tuple(line for line in names_file.read_text().splitlines() if line)
            if names != self.class_names:
                raise ValueError(
                    f"{names_file} lists {list(names)}; the camvid reader expects "
                    f"{list(self.class_names)} in this order"
                )
        split_dir = self.root / self.split
        return pair_by_stem(split_dir / "images", split_dir / "labels", ".png")
