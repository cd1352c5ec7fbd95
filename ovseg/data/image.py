"""Reading untrusted images safely into (H, W, 3) uint8 RGB arrays."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def to_rgb_array(image) -> np.ndarray:
    """Accept a PIL image or an (H, W, 3) / (H, W) / (H, W, 4) array; return (H, W, 3) uint8.

    Grayscale is repeated to three channels, RGBA drops alpha, palette / CMYK / 16-bit PIL
    images are converted explicitly. Anything else raises ``ValueError`` saying what was given.
    """
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        try:
            import torch

            if isinstance(image, torch.Tensor):
                image = image.detach().cpu().numpy()
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array, a PIL image or a path, got {type(image)}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image array must be (H, W, 3) RGB (or (H, W) gray, (H, W, 4) RGBA), "
            f"got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and image.max() <= 1.0:
            raise ValueError(
                "image array is float in [0, 1]; pass uint8 0-255 (e.g. (x * 255).round().astype"
                "(np.uint8))"
            )
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"image values must be in 0..255, got dtype {image.dtype}")
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Apply EXIF orientation and convert any PIL mode to (H, W, 3) uint8 RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file with Pillow (decompression-bomb limit on) to (H, W, 3) uint8 RGB.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable, truncated or corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return _decode(path, path)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """``read_image`` for a file's contents (``name`` is the file, for messages): the same
    (H, W, 3) uint8 RGB array and the same errors."""
    return _decode(io.BytesIO(data), name)


def _decode(source, name) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()
            return pil_to_rgb(img)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: image too large (decompression bomb guard): {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{name}: not a readable image ({error})") from error
