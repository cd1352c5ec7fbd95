"""Test-time augmentation and sliding-window inference, as the official ``TEST.AUG`` and
``TEST.SLIDING_WINDOW`` (ov-seg ``SemanticSegmentorWithTTA`` over detectron2's
``DatasetMapperTTA``).

The official rule, which this module follows step for step:

1. The test mapper first resizes the image to ``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` (the
   uint8 model input). The extra scales are applied to THAT image, not to the original: for
   each size in ``MIN_SIZES``, ``ResizeShortestEdge(size, MAX_SIZE)`` (PIL bilinear on uint8,
   sizes rounded by ``int(x + 0.5)``), then, if ``FLIP``, the same resize followed by a
   horizontal flip. Views are in that order: ``s0, s0 flipped, s1, s1 flipped, ...``.
2. Each view runs through the model, and its ``sem_seg`` is cropped to the view and resized
   bilinearly (``align_corners=False``) to the ORIGINAL image size.
3. A flipped view's output is flipped back (after that resize).
4. The outputs are summed in view order and divided by the number of views.

Sliding window (official: only inside TTA, so only with ``TEST.AUG.ENABLED``): each view is cut
into ``tile x tile`` windows with stride ``ceil(tile * (1 - overlap))``; windows at the right
and bottom edges are shifted back inside the view; a window smaller than the tile (a view
smaller than the tile) is zero-padded on the right and bottom as a uint8 image; each window's
``sem_seg`` at window size is cropped to the unpadded window, summed into the view with a
per-pixel count, divided by the count, and the view result is resized to the original size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.data.transforms import resize_shortest_edge

# official tile sizes by the view's short side when SLIDING_TILE_SIZE <= 0
TILE_BY_SHORT_SIDE = {256: 224, 512: 256, 768: 512, 896: 512}


@dataclass(frozen=True)
class Augmentation:
    """What a ``Predictor`` runs per image beyond the single test-resized view.

    Attributes:
        min_sizes: extra short-side sizes (applied to the test-resized image); empty: the
            test-resized image is the only view.
        max_size: long-side limit of the extra sizes.
        flip: add a horizontally flipped copy of each extra size.
        sliding_window: run each view in tiles.
        tile_size: tile side; <= 0 picks by the view's short side (``TILE_BY_SHORT_SIDE``).
        overlap: tile overlap fraction in [0, 1).
    """

    min_sizes: tuple[int, ...] = ()
    max_size: int = 4000
    flip: bool = False
    sliding_window: bool = False
    tile_size: int = 224
    overlap: float = 2 / 3.0

    def __post_init__(self) -> None:
        if any(int(s) <= 0 for s in self.min_sizes):
            raise ValueError(f"TTA sizes must be positive, got {self.min_sizes}")
        if self.max_size <= 0:
            raise ValueError(f"TTA max size must be positive, got {self.max_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"sliding overlap must be in [0, 1), got {self.overlap}")

    def views(self, image: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """(H, W, 3) uint8 test-resized image -> ``[(view uint8 (h, w, 3), flipped)]``."""
        if not self.min_sizes:
            return [(image, False)]
        out = []
        for size in self.min_sizes:
            resized = resize_shortest_edge(image, int(size), self.max_size)
            out.append((resized, False))
            if self.flip:
                out.append((np.ascontiguousarray(resized[:, ::-1]), True))
        return out


def tile_side(height: int, width: int, tile_size: int) -> int:
    """The window side: ``tile_size``, or the official table by short side when <= 0."""
    if tile_size > 0:
        return tile_size
    short = min(height, width)
    if short not in TILE_BY_SHORT_SIDE:
        raise ValueError(
            f"sliding tile size <= 0 picks the tile by the view's short side, one of "
            f"{sorted(TILE_BY_SHORT_SIDE)}; got a {height}x{width} view"
        )
    return TILE_BY_SHORT_SIDE[short]


def sliding_windows(
    height: int, width: int, tile: int, overlap: float
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` over a ``height x width`` view, row-major.

    The official count is ``ceil((side - tile) / stride) + 1`` per axis; where that is < 1
    (a view much smaller than the tile) the official code produces no window and fails; here
    there is then one window.
    """
    stride = math.ceil(tile * (1 - overlap))
    rows = max(1, int(math.ceil((height - tile) / stride) + 1))
    cols = max(1, int(math.ceil((width - tile) / stride) + 1))
    out = []
    for row in range(rows):
        for col in range(cols):
            x2 = min(col * stride + tile, width)
            y2 = min(row * stride + tile, height)
            out.append((max(y2 - tile, 0), y2, max(x2 - tile, 0), x2))
    return out


def augmented_scores(predictor, class_names: list[str], **predict_options) -> torch.Tensor:
    """(K, H, W) float32 ``sem_seg`` at the original size: the official TTA merge of every
    view of the predictor's current image. ``predict_options`` go to each view's
    ``Predictor.predict``."""
    total = None
    views = predictor.views
    for image, flipped in views:
        scores = view_scores(predictor, image, class_names, predict_options)
        if flipped:
            scores = scores.flip(dims=[2])
        total = scores if total is None else total + scores
    return total / len(views)


def view_scores(predictor, image: np.ndarray, class_names, predict_options) -> torch.Tensor:
    """One view's (K, H, W) ``sem_seg`` at the original size, whole or in sliding windows."""
    aug = predictor.augmentation
    size = predictor.original_size
    if not aug.sliding_window:
        return single_view(predictor, image, size).predict(class_names, **predict_options).sem_seg
    h, w = image.shape[:2]
    tile = tile_side(h, w, aug.tile_size)
    full = count = None
    for y1, y2, x1, x2 in sliding_windows(h, w, tile, aug.overlap):
        window = np.zeros((tile, tile, 3), dtype=np.uint8)
        window[: y2 - y1, : x2 - x1] = image[y1:y2, x1:x2]
        seg = single_view(predictor, window, (tile, tile)).predict(class_names, **predict_options)
        pred = seg.sem_seg[:, : y2 - y1, : x2 - x1]
        if full is None:
            full = pred.new_zeros(pred.shape[0], h, w)
            count = pred.new_zeros(pred.shape[0], h, w)
        count[:, y1:y2, x1:x2] += 1
        full[:, y1:y2, x1:x2] += pred
    full /= count
    return F.interpolate(full[None], size=size, mode="bilinear", align_corners=False)[0]


def single_view(predictor, image: np.ndarray, output_size: tuple[int, int]):
    """A plain (no TTA) predictor sharing ``predictor``'s model, with ``image`` as its model
    input (no further resize) and ``output_size`` as the size ``predict`` resizes to."""
    view = predictor.single_view_predictor()
    view.set_model_input(image, output_size)
    return view
