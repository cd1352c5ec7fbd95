"""What every benchmark reader shares: (image, label) pairs and checked label decoding.

A reader lists its items (image path, label path) for one split of a dataset in its standard
prepared layout, and decodes a label file into an (H, W) int64 map where ``0..K-1`` are class
indices into ``class_names`` and ``IGNORE_LABEL`` (-1) marks pixels that are not scored.
-1 is used rather than 255 because 255 is a real class in the 459- and 847-class benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_LABEL = -1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_SPLIT_ALIASES = {"validation": "val", "training": "train"}
_INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


def load_names(filename: str) -> tuple[str, ...]:
    """One class name per line from ``ovseg/data/datasets/names/<filename>``."""
    text = resources.files(__package__).joinpath("names", filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@dataclass(frozen=True)
class SemSegItem:
    """One evaluation sample: the image file and its ground-truth label file."""

    image: Path
    label: Path

    @property
    def stem(self) -> str:
        return self.image.stem


def read_index_map(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel index image (PNG / TIFF, 8 or 16 bit) without any remapping.

    Returns:
        (H, W) integer array of the raw stored values.

    Raises:
        ValueError naming the file when it cannot be decoded or is not an index map.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _INDEX_MODES:
                raise ValueError(
                    f"{path}: expected a single-channel index map (PIL mode L, P or 16-bit), "
                    f"got mode {mode}; a colour visualisation is not a label map"
                )
            array = np.array(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: label file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read as a PNG/TIFF index map ({error})") from None
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D index map, got array shape {array.shape}")
    return array


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as it is displayed, i.e. after its EXIF orientation.

    Reads only the header. Raises ValueError naming the file when it is not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read as an image ({error})") from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width


def files_by_stem(folder: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Map file stem -> path for the files in ``folder`` with one of ``extensions``."""
    extensions = tuple(e.lower() for e in extensions)
    out: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(extensions):
            out.setdefault(Path(entry.name).stem, Path(entry.path))
    return out


def pair_by_stem(
    image_dir: Path, label_dir: Path, label_ext: str, image_exts: Iterable[str] = IMAGE_EXTENSIONS
) -> list[SemSegItem]:
    """Pair every label file in ``label_dir`` with the image of the same stem in ``image_dir``.

    Raises:
        FileNotFoundError when a folder is missing or a label has no image.
    """
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    images = files_by_stem(image_dir, image_exts)
    items = []
    for stem, label in files_by_stem(label_dir, [label_ext]).items():
        if stem not in images:
            raise FileNotFoundError(
                f"label {label} has no image {stem}{{{','.join(image_exts)}}} in {image_dir}"
            )
        items.append(SemSegItem(images[stem], label))
    return items


class SemSegDataset:
    """Base class of the benchmark readers.

    Subclasses set the class attributes and implement ``find_items``. Label decoding is
    ``class = raw - label_offset``, with every raw value in ``ignore_values`` mapped to
    ``IGNORE_LABEL``; any other value outside ``0..K-1`` is an error naming the file.

    Args:
        root: the dataset folder (see each reader's ``layout``).
        split: split name, one of ``splits`` (default ``default_split``).
    """

    name: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    splits: ClassVar[tuple[str, ...]] = ("val",)
    default_split: ClassVar[str] = "val"
    layout: ClassVar[str] = ""
    label_offset: ClassVar[int] = 0
    ignore_values: ClassVar[tuple[int, ...]] = (255,)

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        self.root = Path(root).expanduser()
        split = split or self.default_split
        self.split = _SPLIT_ALIASES.get(split, split) if split not in self.splits else split
        if self.split not in self.splits:
            raise ValueError(
                f"{self.name}: unknown split {self.split!r}; accepted: {list(self.splits)}"
            )
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.name}: dataset root {self.root} does not exist; expected {self.layout}"
            )
        self.items: list[SemSegItem] = self.find_items()
        if not self.items:
            raise FileNotFoundError(
                f"{self.name}: no {self.split} images found under {self.root}; "
                f"expected {self.layout}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def find_items(self) -> list[SemSegItem]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SemSegItem:
        return self.items[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"items={len(self)}, classes={self.num_classes})"
        )

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw stored values (H, W) -> class indices int64 with ``IGNORE_LABEL``."""
        label = raw.astype(np.int64) - self.label_offset
        if self.ignore_values:
            label[np.isin(raw, self.ignore_values)] = IGNORE_LABEL
        bad = (label != IGNORE_LABEL) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])[:10]})
            first, last = self.label_offset, self.label_offset + self.num_classes - 1
            raise ValueError(
                f"{path}: label values {values} are outside the {self.num_classes} classes of "
                f"{self.name} (expected {first}..{last} or ignore {list(self.ignore_values)})"
            )
        return label

    def read_label(self, index: int, check_size: bool = True) -> np.ndarray:
        """The ground truth of item ``index`` as (H, W) int64, ``IGNORE_LABEL`` for ignore.

        With ``check_size`` the label must have the image's height and width.
        """
        item = self.items[index]
        label = self.decode_label(read_index_map(item.label), item.label)
        if check_size:
            size = image_size(item.image)
            if size != label.shape:
                raise ValueError(
                    f"{item.label}: label is {label.shape[0]}x{label.shape[1]} (HxW) but image "
                    f"{item.image} is {size[0]}x{size[1]}; they must have the same size"
                )
        return label
