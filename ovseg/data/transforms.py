"""Test-time geometry: detectron2's ResizeShortestEdge, and normalise-and-pad for the backbone."""

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
    return int(new_h + 0.5), int(new_w + 0.5)


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
