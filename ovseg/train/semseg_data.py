"""Semantic-segmentation training data for the proposal model.

``open_source(name, root, split)`` gives any benchmark reader of ``ovseg.data.datasets``
(``coco-stuff-171``, ``camvid``, ``ade20k-150``, ...) or, for ``name="folder"``,
``SemSegFolder``: ``root/classes.txt`` plus ``root/<split>/{images,labels}`` with index PNGs
(255 = ignore) and any class names. Labels are int64 with ``IGNORE`` (-1), as the
evaluation readers return them. ``SemSegTrainSet`` applies a training augmentation
(``ovseg.train.augment``), seeded per (seed, epoch, index) so that a resumed run sees the
same samples; ``collate_semseg`` turns labels into per-class binary masks at the padded
image size (the official mapper's ``gt_classes`` / ``gt_masks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ovseg.data.datasets import IGNORE_LABEL as IGNORE
from ovseg.data.image import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class SemSegFolder:
    """Pairs ``root/split/images/X.{jpg,png}`` with ``root/split/labels/X.png``.

    Args:
        root: dataset folder holding ``classes.txt`` (one name per line, index order).
        split: "train", "val", ...
    """

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        classes = self.root / "classes.txt"
        images, labels = self.root / split / "images", self.root / split / "labels"
        for path in (classes, images, labels):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} not found; expected ROOT/classes.txt and ROOT/{split}/images, "
                    f"ROOT/{split}/labels (index PNGs, 255 = ignore)"
                )
        self.class_names = [n.strip() for n in classes.read_text().splitlines() if n.strip()]
        stems = {p.stem: p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        self.items = [(stems[s], labels / f"{s}.png") for s in sorted(stems)]
        missing = [str(lab) for _, lab in self.items if not lab.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} labels missing, e.g. {missing[0]}")
        if not self.items:
            raise ValueError(f"no images in {images}")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB image and (H, W) int64 label with ``IGNORE``."""
        image_path, label_path = self.items[i]
        image = read_image(image_path)
        with Image.open(label_path) as lab:
            raw = np.array(lab)
        if raw.ndim != 2 or raw.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: label {raw.shape} does not fit image {image.shape}")
        bad = np.setdiff1d(np.unique(raw), np.r_[np.arange(len(self.class_names)), 255])
        if bad.size:
            raise ValueError(
                f"{label_path}: values {bad[:5]} outside 0..{len(self.class_names) - 1} and 255"
            )
        label = raw.astype(np.int64)
        label[raw == 255] = IGNORE
        return image, label


class ReaderSource:
    """An ``ovseg.data.datasets`` benchmark reader with the ``load(i)`` of ``SemSegFolder``."""

    def __init__(self, reader):
        self.reader = reader
        self.class_names = list(reader.class_names)

    def __len__(self) -> int:
        return len(self.reader)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_image(self.reader[i].image), self.reader.read_label(i)


def open_source(name: str, root: str | Path, split: str):
    """``SemSegFolder`` for ``name="folder"``, else the named evaluation reader."""
    if name == "folder":
        return SemSegFolder(root, split)
    from ovseg.data.datasets import build_dataset

    return ReaderSource(build_dataset(name, root, split))


class SemSegTrainSet(Dataset):
    """Augmented training samples: ``augmentation(image, label, rng)`` (``ovseg.train.augment``:
    ``OfficialAugmentation`` or ``SimpleScaleAugmentation``) with ``rng`` seeded by
    (seed, epoch, index), so a resumed run sees the same samples.

    Items: ``{"image": (3, S, S) uint8 (padding 128, not normalised), "label": (S, S) int64
    with ``IGNORE`` (padding too), "pad": (S, S) bool}``.
    """

    def __init__(self, folder, augmentation, seed: int = 0):
        self.folder, self.augmentation = folder, augmentation
        self.seed, self.epoch = seed, 0
        self.class_names = folder.class_names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, label = self.folder.load(i)
        image, label, pad = self.augmentation(image, label, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "pad": torch.from_numpy(pad),
        }


def label_targets(label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class binary masks of a label map, at its size (the official mapper's
    ``gt_classes`` / ``gt_masks``: sorted classes present, ignore excluded).

    Args:
        label: (H, W) int64 with ``IGNORE``.
    Returns:
        ``{"labels": (M,) int64 classes present, "masks": (M, H, W) bool}``.
    """
    classes = torch.unique(label)
    classes = classes[classes != IGNORE]
    return {"labels": classes, "masks": label[None] == classes[:, None, None]}


def collate_semseg(items: list[dict]) -> dict:
    """Batch images (B, 3, H, W) and the MaskFormer targets (list of ``label_targets``)."""
    image = torch.stack([it["image"] for it in items])
    pad = torch.stack([it["pad"] for it in items])
    return {"image": image, "pad": pad, "targets": [label_targets(it["label"]) for it in items]}
