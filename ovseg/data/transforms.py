"""Test-time geometry: detectron2's ResizeShortestEdge, the SAM space's longest-side resize,
cv2's nearest-neighbour rule for label maps, and normalise-and-pad for the backbone."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# CLIP's pixel normalisation (0-1 scale; OpenAI CLIP)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """New (height, width): short side to ``short``, long side at most ``max_size``.

    detectron2's ``ResizeShortestEdge.get_output_shape``, operation for operation: the short
    side becomes ``short`` exactly (the height when ``h < w``, else the width), the other
    ``scale * side`` with ``scale = short / min(h, w)``; if the long side then exceeds
    ``max_size`` both are multiplied by ``max_size / long``; each becomes ``int(x + 0.5)``.
    ``short == 0`` keeps the size (detectron2: no resize).
    """
    if short == 0:
        return height, width
    size = float(short)
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    # at least one pixel: an extreme aspect ratio (1 x 3000) would round a side to 0, which
    # the official code cannot resize (it fails there); everything else is unchanged
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_shortest_edge(image: np.ndarray, short: int = 640, max_size: int = 2560) -> np.ndarray:
    """(H, W, 3) uint8 -> resized (H', W', 3) uint8 with PIL bilinear, as the official predictor."""
    h, w = image.shape[:2]
    new_h, new_w = shortest_edge_size(h, w, short, max_size)
    if (new_h, new_w) == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def normalize_and_pad(
    image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, divisibility: int
) -> torch.Tensor:
    """(3, H, W) 0-255 -> (1, 3, H', W') normalised, zero-padded bottom/right to a multiple."""
    x = (image.float() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    h, w = x.shape[-2:]
    if divisibility > 1:
        x = F.pad(x, (0, (-w) % divisibility, 0, (-h) % divisibility))
    return x[None]


def longest_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """New (height, width) with the longer side ``long_side`` and the other truncated.

    The authors' SAM space (``SAMVisualizationDemo.run_on_image``), operation for operation:
    when ``width > height`` the width becomes ``long_side`` and the height
    ``int((long_side / width) * height)``, otherwise (a square too) the height becomes
    ``long_side`` and the width ``int((long_side / height) * width)``: double arithmetic,
    truncated, so a side can come out one pixel shorter than the rounded ratio. A side that
    would be 0 is kept at 1 (the space would fail there).
    """
    if height < 1 or width < 1 or long_side < 1:
        raise ValueError(f"sizes must be positive, got {height}x{width} -> {long_side}")
    if width > height:
        return max(int((long_side / width) * height), 1), long_side
    return long_side, max(int((long_side / height) * width), 1)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2 ``INTER_LINEAR`` taps along one axis: (dst,) first and second source index and
    their 11-bit fixed-point weights (sum 2048).

    OpenCV's ``resize``: ``f = float((d + 0.5) * scale - 0.5)`` with ``scale = 1 / (dst / src)``
    (doubles), ``s = floor(f)``, weights ``round((1 - (f - s)) * 2048)`` and
    ``round((f - s) * 2048)``; a tap left of the first or right of the last pixel is clamped
    there with weights (2048, 0).
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    frac = (f - s).astype(np.float32)
    clamp = (s < 0) | (s >= src - 1)
    frac[clamp] = 0.0
    s = np.clip(s, 0, src - 1)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048)).astype(np.int32)
    return s, np.minimum(s + 1, src - 1), w0, w1


def resize_longest_side(image: np.ndarray, long_side: int = 1280) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with the longer side ``long_side``
    (``longest_side_size``), by ``cv2.resize``'s default ``INTER_LINEAR`` as the space calls
    it: sample points at half-pixel centres, edges clamped, no antialiasing when shrinking
    (unlike PIL's bilinear), in OpenCV's 11-bit fixed point (rows first; the vertical step
    as its SIMD kernel rounds: ``((a >> 4) * b0 >> 16) + ((c >> 4) * b1 >> 16) + 2 >> 2``).
    Against opencv-python 5.1 on x86 every pixel is equal except, when enlarging, in the rows
    whose vertical taps are clamped at the top or bottom edge, within one grey level.
    """
    h, w = image.shape[:2]
    new_h, new_w = longest_side_size(h, w, long_side)
    if (new_h, new_w) == (h, w):
        return image
    y0, y1, b0, b1 = _linear_taps(h, new_h)
    x0, x1, a0, a1 = _linear_taps(w, new_w)
    pixels = np.asarray(image, dtype=np.int32)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]  # (H, W', 3)
    top = ((rows[y0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((rows[y1] >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """(dst,) int64 source index of each output index under ``cv2.INTER_NEAREST``.

    OpenCV's ``resizeNN``: ``min(floor(x * (1 / (dst / src))), src - 1)`` in doubles. Not
    PIL's nearest (which samples at pixel centres), and not always ``floor(x * src / dst)``:
    the double ``1 / (dst / src)`` can round the product across an integer.
    """
    scale = 1.0 / (dst / src)
    index = np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int64)
    return np.minimum(index, src - 1)


def resize_nearest(array: np.ndarray | torch.Tensor, size: tuple[int, int]):
    """Resize the last two axes of ``array`` (..., H, W) to ``size`` (H', W') by
    ``cv2.INTER_NEAREST``'s rule (``nearest_indices``): each output pixel copies one input
    pixel, so label maps keep their values. Returns the same type (numpy or torch)."""
    src_h, src_w = array.shape[-2:]
    rows = nearest_indices(src_h, size[0])
    cols = nearest_indices(src_w, size[1])
    if torch.is_tensor(array):
        r = torch.from_numpy(rows).to(array.device)
        c = torch.from_numpy(cols).to(array.device)
        return array.index_select(-2, r).index_select(-1, c)
    return array[..., rows[:, None], cols[None, :]]
