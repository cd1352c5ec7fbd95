"""Semantic-segmentation training data for the proposal model.

``open_source(name, root, split)`` gives any benchmark reader of ``ovseg.data.datasets``
(``coco-stuff-171``, ``camvid``, ``ade20k-150``, ...) or, for ``name="folder"``,
``SemSegFolder``: ``root/classes.txt`` plus ``root/<split>/{images,labels}`` with index PNGs
(255 = ignore) and any class names. Labels are int64 with ``IGNORE`` (-1), as the
evaluation readers return them. ``SemSegTrainSet`` adds MaskFormer's
training augmentation (random scale, crop, flip), seeded per (seed, epoch, index) so that a
resumed run sees the same crops; ``collate_semseg`` turns labels into per-class binary
masks at the mask-logit resolution (1/4).
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


def resize_pair(image: np.ndarray, label: np.ndarray, height: int, width: int):
    """Bilinear image (uint8), nearest label (int64, through a 32-bit PIL image)."""
    im = np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    lab = Image.fromarray(label.astype(np.int32), mode="I").resize((width, height), Image.NEAREST)
    return im, np.array(lab).astype(np.int64)


class SemSegTrainSet(Dataset):
    """Augmented training crops: short side scaled to ``short_side * U(scale_range)``, a random
    ``crop`` x ``crop`` window (padded with ignore where the image is smaller), random flip.

    Items: ``{"image": (3, crop, crop) float 0-255 (pad = 0 after normalisation is applied by
    the model's mean), "label": (crop, crop) int64, "pad": (crop, crop) bool}``.
    """

    def __init__(
        self,
        folder,
        crop: int = 512,
        short_side: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
    ):
        self.folder, self.crop, self.short_side = folder, crop, short_side
        self.scale_range, self.seed, self.epoch = scale_range, seed, 0
        self.class_names = folder.class_names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, label = self.folder.load(i)
        h, w = label.shape
        scale = self.short_side * rng.uniform(*self.scale_range) / min(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, label = resize_pair(image, label, nh, nw)
        c = self.crop
        y0 = int(rng.integers(0, max(nh - c, 0) + 1))
        x0 = int(rng.integers(0, max(nw - c, 0) + 1))
        image, label = image[y0 : y0 + c, x0 : x0 + c], label[y0 : y0 + c, x0 : x0 + c]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        out_image = np.zeros((c, c, 3), np.float32)
        out_label = np.full((c, c), IGNORE, np.int64)
        pad = np.ones((c, c), bool)
        ch, cw = label.shape
        out_image[:ch, :cw], out_label[:ch, :cw], pad[:ch, :cw] = image, label, False
        return {
            "image": torch.from_numpy(out_image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(out_label),
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
