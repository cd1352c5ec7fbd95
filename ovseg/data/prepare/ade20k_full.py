"""Full ADE20K (ADE20K_2021_17_01) -> the 847-class 16-bit TIFF layout of the official eval.

The full release stores each image's classes in ``<name>_seg.png``: class index =
``R // 10 * 256 + G`` (B holds instance ids). The 847 evaluation classes are a subset of those
indices; everything else becomes 65535 (ignore). As in the official preparation, an image
whose shorter side exceeds 512 is resized so that side is 512 (image bilinear, labels nearest,
like OpenCV's INTER_LINEAR / INTER_NEAREST), and the split is read from the file name
(``ADE_val_*`` is validation, everything else training). Images are found by walking
``images/`` (the index pickle is not needed and is never unpickled).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovseg.data.datasets.ade20k import ade20k_847_source_ids
from ovseg.data.prepare.common import lookup_table, progress, save_image_atomic

ADE_FULL_IGNORE = 65535
_SPLITS = ("validation", "training")


def ade20k_class_mask(seg_png: str | os.PathLike) -> np.ndarray:
    """(H, W) int32 full-ADE20K class index of a ``*_seg.png`` (R // 10 * 256 + G)."""
    path = Path(seg_png)
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise ValueError(f"{path}: expected an RGB ADE20K _seg.png, got mode {image.mode}")
            seg = np.asarray(image)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read the ADE20K segmentation PNG ({error})") from None
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def ade20k_847_lut() -> np.ndarray:
    """(65536,) uint16 table: full-ADE20K class index -> 847-class index, else 65535."""
    mapping = {source: index for index, source in enumerate(ade20k_847_source_ids())}
    return lookup_table(mapping, 65536, ADE_FULL_IGNORE, np.uint16)


def official_resize_shape(height: int, width: int, max_size: int = 512) -> tuple[int, int] | None:
    """The (h, w) the official script resizes to, or None when the image is kept as is."""
    if width >= height > max_size:
        return max_size, round(width / float(height) * max_size)
    if height >= width > max_size:
        return round(height / float(width) * max_size), max_size
    return None


def resize_nearest(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """OpenCV INTER_NEAREST: destination pixel x takes source ``floor(x * src / dst)``."""
    (h, w), (sh, sw) = shape, label.shape[:2]
    rows = np.minimum(np.floor(np.arange(h) * (sh / h)).astype(np.int64), sh - 1)
    cols = np.minimum(np.floor(np.arange(w) * (sw / w)).astype(np.int64), sw - 1)
    return label[rows[:, None], cols[None, :]]


def resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 bilinear resize without antialiasing (half-pixel centres, as OpenCV)."""
    tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def find_ade20k_full_images(root: Path) -> list[Path]:
    """Every ``ADE_*.jpg`` under ``root/images`` that has a sibling ``_seg.png``, sorted."""
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir} does not exist; expected the ADE20K_2021_17_01 release folder "
            "(images/ADE/{training,validation}/<scene>/ADE_*.jpg with *_seg.png)"
        )
    found = []
    for folder, _, files in os.walk(images_dir):
        for name in files:
            if name.startswith("ADE_") and name.endswith(".jpg"):
                image = Path(folder) / name
                if image.with_name(image.stem + "_seg.png").is_file():
                    found.append(image)
    return sorted(found, key=lambda p: p.name)


def split_of(file_name: str) -> str:
    return "validation" if file_name.split("_")[1] == "val" else "training"


def prepare_ade20k_full(
    root: str | os.PathLike,
    splits: tuple[str, ...] = ("validation",),
    max_size: int = 512,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, int]:
    """Write ``images_detectron2/<split>/*.jpg`` and ``annotations_detectron2/<split>/*.tif``.

    Args:
        root: the ``ADE20K_2021_17_01`` folder.
        splits: any of "validation", "training" (the official script writes validation only).
        max_size: shorter-side limit of the official resize.
        overwrite: rewrite outputs that already exist (otherwise they are skipped, so an
            interrupted run resumes).

    Returns:
        {split: number of images written or already present}.
    """
    root = Path(root)
    unknown = sorted(set(splits) - set(_SPLITS))
    if unknown:
        raise ValueError(f"unknown ADE20K splits {unknown}; accepted: {list(_SPLITS)}")
    images = [p for p in find_ade20k_full_images(root) if split_of(p.name) in splits]
    if not images:
        raise FileNotFoundError(
            f"no ADE_*.jpg with _seg.png for splits {list(splits)} under {root}"
        )
    lut = ade20k_847_lut()
    counts = dict.fromkeys(splits, 0)
    for image_path in progress(images, len(images), "prepare ade20k-847", show_progress):
        split = split_of(image_path.name)
        out_image = root / "images_detectron2" / split / image_path.name
        out_label = root / "annotations_detectron2" / split / (image_path.stem + ".tif")
        counts[split] += 1
        if not overwrite and out_image.is_file() and out_label.is_file():
            continue
        with Image.open(image_path) as pil:
            image = np.asarray(pil.convert("RGB"))
        label = ade20k_class_mask(image_path.with_name(image_path.stem + "_seg.png"))
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"{image_path}: image is {image.shape[:2]} but its _seg.png is {label.shape}"
            )
        shape = official_resize_shape(*label.shape, max_size=max_size)
        if shape is not None:
            image, label = resize_bilinear(image, shape), resize_nearest(label, shape)
        save_image_atomic(image, out_image, "JPEG")
        save_image_atomic(lut[label], out_label, "TIFF")
    return counts
