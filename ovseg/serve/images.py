"""Decoding untrusted uploaded images, with limits and clear reasons for refusals."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED = "JPEG, PNG, WebP, BMP, GIF or TIFF"


class ImageRejected(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _to_rgb(image: Image.Image) -> Image.Image:
    """Explicit conversion of every Pillow mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min(initial=0)), float(values.max(initial=1))
        gray = ((values - lo) / max(hi - lo, 1e-12) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded file, EXIF orientation applied.

    Raises:
        ImageRejected: 400 empty or corrupt/truncated file, 415 not an image,
            413 more than ``max_pixels`` pixels (decompression bombs included).
    """
    if not data:
        raise ImageRejected(400, "the 'image' file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    413,
                    f"image is {width}x{height} = {width * height} pixels, more than this "
                    f"server's limit of {max_pixels}; send a smaller image",
                )
            image.load()
            image = _to_rgb(ImageOps.exif_transpose(image))
            return np.asarray(image, dtype=np.uint8).copy()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(
            415, f"the 'image' file is not an image Pillow can read ({ACCEPTED})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(413, f"image refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(
            400, f"could not decode the image (corrupt or truncated?): {error}"
        ) from None
