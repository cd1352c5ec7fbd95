"""Pascal Context ``trainval/*.mat`` -> PC-459 16-bit TIFFs and PC-59 PNGs.

The release's ``.mat`` files hold ``LabelMap`` with ``1..459`` indexing ``labels.txt``
("idx: name" lines) and 0 for unlabelled. As in the official preparation:

- PC-459: class = LabelMap - 1, unlabelled -> 65535, saved as 16-bit TIFF;
- PC-59: the i-th name of ``59_labels.txt`` is class i, found in ``labels.txt`` by name;
  every other pixel -> 255, saved as PNG.

Outputs go to ``annotations_detectron2/pc459_<split>/<id>.tif`` and ``pc59_<split>/<id>.png``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ovseg.data.datasets.pascal_context import PascalContext59, PascalContext459
from ovseg.data.prepare.common import lookup_table, progress, save_image_atomic

PC459_IGNORE = 65535
PC59_IGNORE = 255


def read_labels_txt(path: Path) -> dict[str, int]:
    """``labels.txt`` ("1: accordion" lines) -> {name: index}."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; it comes with the Pascal Context release")
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            index, name = line.split(":", 1)
            out[name.strip()] = int(index.strip())
    return out


def read_59_names(path: Path) -> list[str]:
    """``59_labels.txt`` -> the 59 names in class order (the text after the last colon)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the Pascal Context 59_labels.txt")
    names = [line.split(":")[-1].strip() for line in path.read_text().splitlines()]
    return [name for name in names if name]


def pc59_source_indices(labels: dict[str, int], names_59: list[str]) -> list[int]:
    """For each of the 59 classes, its ``labels.txt`` index."""
    missing = [name for name in names_59 if name not in labels]
    if missing:
        raise ValueError(f"59_labels.txt names {missing[:5]} are not in labels.txt")
    return [labels[name] for name in names_59]


def load_label_map(path: Path) -> np.ndarray:
    """``LabelMap`` of a Pascal Context ``.mat`` as (H, W) int64."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError, scipy.io.matlab.MatReadError) as error:
        raise ValueError(f"{path}: cannot read as a MATLAB .mat file ({error})") from None
    if "LabelMap" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no 'LabelMap' variable (found {found})")
    label = np.asarray(mat["LabelMap"])
    if label.ndim != 2:
        raise ValueError(f"{path}: LabelMap must be 2-D, got shape {label.shape}")
    return label.astype(np.int64)


def _warn_names(found: list[str], expected: tuple[str, ...], what: str) -> None:
    if list(found) != list(expected):
        diff = [(i, f, e) for i, (f, e) in enumerate(zip(found, expected)) if f != e][:5]
        warnings.warn(
            f"{what} names differ from the official evaluation list (first differences "
            f"{diff}, {len(found)} vs {len(expected)} names); the class order follows the file",
            stacklevel=3,
        )


def prepare_pascal_context(
    root: str | os.PathLike,
    split: str = "val",
    list_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> int:
    """Convert the ``.mat`` labels of the ids in the split list; returns how many.

    Args:
        root: the ``VOC2010`` folder with ``trainval/``, ``labels.txt`` and ``59_labels.txt``.
        list_file: image ids, one a line (default ``root/pascalcontext_<split>.txt``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Pascal Context root {root} does not exist; expected VOC2010/")
    labels = read_labels_txt(root / "labels.txt")
    names_59 = read_59_names(root / "59_labels.txt")
    by_index = {index: name for name, index in labels.items()}
    _warn_names(
        [by_index.get(i, "") for i in range(1, 460)], PascalContext459.class_names, "labels.txt"
    )
    _warn_names(names_59, PascalContext59.class_names, "59_labels.txt")
    lut_59 = lookup_table(
        {source: i for i, source in enumerate(pc59_source_indices(labels, names_59))},
        max(labels.values()) + 1,
        PC59_IGNORE,
        np.uint8,
    )
    list_path = Path(list_file) if list_file else root / f"pascalcontext_{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"image list {list_path} does not exist (one image id a line)")
    ids = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    out_459 = root / "annotations_detectron2" / f"pc459_{split}"
    out_59 = root / "annotations_detectron2" / f"pc59_{split}"
    done = 0
    for image_id in progress(ids, len(ids), "prepare pascal-context", show_progress):
        mat_path = root / "trainval" / f"{image_id}.mat"
        if not mat_path.is_file():
            continue  # as the official script: ids without a .mat are skipped
        dst_459, dst_59 = out_459 / f"{image_id}.tif", out_59 / f"{image_id}.png"
        done += 1
        if not overwrite and dst_459.is_file() and dst_59.is_file():
            continue
        label = load_label_map(mat_path)
        if label.min() < 0 or label.max() >= len(lut_59):
            raise ValueError(
                f"{mat_path}: LabelMap values {int(label.min())}..{int(label.max())} are outside "
                f"0..{len(lut_59) - 1} (0 = unlabelled, 1..459 = labels.txt)"
            )
        pc459 = np.where(label == 0, PC459_IGNORE, label - 1).astype(np.uint16)
        save_image_atomic(pc459, dst_459, "TIFF")
        save_image_atomic(lut_59[label], dst_59, "PNG")
    return done
