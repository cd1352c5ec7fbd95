"""Decoding untrusted uploaded images, with limits and clear reasons for refusals."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovseg.data.image import pil_to_rgb

ACCEPTED = "JPEG, PNG, WebP, BMP, GIF or TIFF"


class ImageRejected(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int, limit_reason: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded file, EXIF orientation applied.

    The size is checked from the header, before any pixel is decoded; ``limit_reason`` is
    added to the message when the limit applies for a particular reason.

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
                    f"server's limit of {max_pixels}{' ' + limit_reason if limit_reason else ''}; "
                    "send a smaller image",
                )
            image.load()
            return pil_to_rgb(image)
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
