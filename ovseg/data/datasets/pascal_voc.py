"""Pascal VOC 2012 with 20 classes and the background ignored (the paper's PAS-20)."""

from __future__ import annotations

from ovseg.data.datasets.base import SemSegDataset, SemSegItem, load_names


class PascalVOC20(SemSegDataset):
    """PAS-20 read straight from the ``VOC2012`` folder.

    Labels are the ``SegmentationClass`` palette PNGs: 0 is background (ignored, as in the
    official PAS-20 evaluation), ``1..20`` are classes (class = value - 1), 255 is the
    "void" border (ignored). The image list is ``ImageSets/Segmentation/<split>.txt``.
    """

    name = "pascal-voc-20"
    class_names = load_names("pascal_voc_20.txt")
    splits = ("val", "train", "trainval")
    layout = (
        "VOC2012/ with JPEGImages/*.jpg, SegmentationClass/*.png (palette) and "
        "ImageSets/Segmentation/val.txt"
    )
    label_offset = 1
    ignore_values = (0, 255)

    def find_items(self) -> list[SemSegItem]:
        list_file = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"{self.name}: image list {list_file} does not exist")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        items = []
        for image_id in ids:
            image = self.root / "JPEGImages" / f"{image_id}.jpg"
            label = self.root / "SegmentationClass" / f"{image_id}.png"
            for path in (image, label):
                if not path.is_file():
                    raise FileNotFoundError(f"{list_file} lists {image_id} but {path} is missing")
            items.append(SemSegItem(image, label))
        return items
