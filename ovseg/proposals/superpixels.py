"""Weight-free proposals: a Felzenszwalb superpixel hierarchy (scikit-image).

Felzenszwalb-Huttenlocher graph segmentation is run at several scales (larger scale, larger
segments). Each scale is a partition of the image; together they are a coarse-to-fine
hierarchy of candidate regions with no learned weights. Segments that repeat across scales
(IoU >= ``dedup_iou``) are kept once, the largest ``max_masks`` are kept, and by default the
overlapping masks are summed by the fusion (every pixel gets one vote per scale, see
``ovseg.proposals.overlaps``).

Needs scikit-image (the ``sam`` extra: ``pip install 'ovseg[sam]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ovseg.modeling.proposals import Proposals
from ovseg.proposals.overlaps import OVERLAP_RULES, resolve_overlaps
from ovseg.proposals.registry import register

DEFAULT_SCALES = (100, 300, 1000)


def felzenszwalb_labels(
    image_hwc: np.ndarray, scales: Sequence[float], sigma: float, min_size: int
) -> list[np.ndarray]:
    """One (H, W) int64 label map, labels 0..n-1, per scale, in the order given."""
    try:
        from skimage.segmentation import felzenszwalb
    except ImportError as error:
        raise ImportError(
            "the superpixel proposal generator needs scikit-image: pip install 'ovseg[sam]'"
        ) from error
    return [
        felzenszwalb(image_hwc, scale=float(s), sigma=sigma, min_size=min_size).astype(np.int64)
        for s in scales
    ]


def select_segments(
    label_maps: Sequence[np.ndarray], dedup_iou: float, max_masks: int | None
) -> list[tuple[int, int]]:
    """Pick distinct segments from several partitions of the same image.

    Segments are visited largest first; one is dropped when a segment already kept (from
    another scale) has IoU >= ``dedup_iou`` with it. Overlaps between two partitions come from
    one joint histogram of their labels, so no per-mask comparison is done.

    Args:
        label_maps: S label maps (H, W) int64, labels 0..n_s-1.
        dedup_iou: IoU at or above which two segments count as the same.
        max_masks: keep at most this many (None: all).

    Returns:
        (scale index, label) of the kept segments, largest first.
    """
    counts = [np.bincount(m.ravel(), minlength=int(m.max()) + 1) for m in label_maps]
    flat = [m.ravel() for m in label_maps]
    iou: dict[tuple[int, int], np.ndarray] = {}  # (a, b) -> (n_a, n_b) IoU between scales
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            n_a, n_b = len(counts[a]), len(counts[b])
            inter = np.bincount(flat[a] * n_b + flat[b], minlength=n_a * n_b).reshape(n_a, n_b)
            union = counts[a][:, None] + counts[b][None, :] - inter
            iou[a, b] = inter / np.maximum(union, 1)
            iou[b, a] = iou[a, b].T
    candidates = sorted(
        ((int(area), s, label) for s, c in enumerate(counts) for label, area in enumerate(c)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    kept: list[tuple[int, int]] = []
    kept_by_scale: list[list[int]] = [[] for _ in label_maps]
    for area, s, label in candidates:
        if area == 0:
            continue
        if any(
            kept_by_scale[t] and iou[s, t][label, kept_by_scale[t]].max() >= dedup_iou
            for t in range(len(label_maps))
            if t != s
        ):
            continue
        kept.append((s, label))
        kept_by_scale[s].append(label)
        if max_masks is not None and len(kept) >= max_masks:
            break
    return kept


class SuperpixelProposalGenerator:
    """Multi-scale Felzenszwalb superpixels as binary mask proposals (no embeddings).

    Args:
        scales: Felzenszwalb ``scale`` per level; larger gives larger segments.
        sigma: Gaussian smoothing before segmenting.
        min_area_fraction: smallest segment, as a fraction of the image area (Felzenszwalb's
            ``min_size``), so the segment count does not grow with the resolution.
        max_masks: keep at most this many segments, largest first (None: all).
        dedup_iou: segments of different scales with this IoU or more are kept once.
        overlap: ``"sum"`` (default) or ``"smallest_wins"`` (see ``ovseg.proposals.overlaps``).
        fill_uncovered: when ``max_masks`` leaves pixels uncovered, add one mask for them.

    Calling it on a (3, H, W) uint8 RGB image returns ``Proposals`` with masks (M, H, W)
    float32 in {0, 1} on the image's device and ``embeddings=None``.
    """

    def __init__(
        self,
        scales: Sequence[float] = DEFAULT_SCALES,
        sigma: float = 0.8,
        min_area_fraction: float = 0.002,
        max_masks: int | None = 100,
        dedup_iou: float = 0.9,
        overlap: str = "sum",
        fill_uncovered: bool = True,
    ) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be one or more positive numbers, got {scales}")
        if not 0 <= min_area_fraction < 1:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
        if max_masks is not None and max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None, got {max_masks}")
        if not 0 < dedup_iou <= 1:
            raise ValueError(f"dedup_iou must be in (0, 1], got {dedup_iou}")
        if overlap not in OVERLAP_RULES:
            raise ValueError(f"unknown overlap rule {overlap!r}; choose one of {OVERLAP_RULES}")
        self.scales = scales
        self.sigma = sigma
        self.min_area_fraction = min_area_fraction
        self.max_masks = max_masks
        self.dedup_iou = dedup_iou
        self.overlap = overlap
        self.fill_uncovered = fill_uncovered

    def __call__(self, image: torch.Tensor) -> Proposals:
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                "the superpixel generator takes a (3, H, W) uint8 RGB image, got "
                f"{tuple(image.shape)} {image.dtype}"
            )
        height, width = image.shape[1:]
        min_size = max(1, round(self.min_area_fraction * height * width))
        label_maps = felzenszwalb_labels(
            image.permute(1, 2, 0).cpu().numpy(), self.scales, self.sigma, min_size
        )
        kept = select_segments(label_maps, self.dedup_iou, self.max_masks)
        masks = torch.zeros(len(kept), height, width)
        for i, (s, label) in enumerate(kept):
            masks[i] = torch.from_numpy(label_maps[s] == label)
        masks = resolve_overlaps(masks, self.overlap, self.fill_uncovered)
        return Proposals(masks=masks.to(image.device), embeddings=None)


@register("superpixels")
def _superpixels(model=None, **options) -> SuperpixelProposalGenerator:
    """Registry factory: ``build_generator("superpixels", model, scales=..., ...)``."""
    return SuperpixelProposalGenerator(**options)
