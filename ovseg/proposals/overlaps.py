"""How overlapping class-agnostic masks become one semantic map.

The fusion step (``ovseg.modeling.fusion.semantic_fusion``) computes, for every class k and
pixel p, ``sem_seg[k, p] = sum_i probs[i, k] * masks[i, p]``: every mask covering a pixel votes
with its class distribution. That is right for the MaskFormer head, whose soft masks were
trained for it. Other mask sources need a decision, made here once and used by every
generator through its ``overlap`` option:

``"smallest_wins"`` (default for SAM)
    Paint the masks from the largest to the smallest area, so every pixel belongs to the
    smallest mask that covers it (equal areas: the later mask wins). The masks handed on are
    the painted regions, one per surviving mask, disjoint; a mask hidden completely by smaller
    ones is dropped. The fusion then gives each pixel the class distribution of exactly one
    region. SAM's automatic masks are nested (whole, part, subpart: a building and its
    windows, a table and the cup on it); summing would let the large mask's label spread over
    the small objects inside it.

``"sum"`` (default for superpixels)
    Keep the masks as they are; the fusion sums their votes. A superpixel hierarchy is one
    partition of the image per scale, so every pixel gets one vote per scale, a multi-scale
    ensemble; painting would keep only the finest scale.

Pixels covered by no mask would get an all-zero score column, which an argmax turns silently
into class 0. ``add_uncovered_mask`` appends one more mask holding exactly those pixels, so the
CLIP branch classifies the leftover region like any other.
"""

from __future__ import annotations

import torch

OVERLAP_RULES = ("smallest_wins", "sum")


def owner_map(masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Index of the smallest mask covering each pixel.

    Args:
        masks: (N, H, W) float in [0, 1] (or bool); a pixel is inside mask i when
            ``masks[i] > threshold``.
        threshold: binarisation threshold.

    Returns:
        (H, W) int64: the index i of the covering mask with the smallest area, ties going to
        the larger index; -1 where no mask covers the pixel.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    binary = masks > threshold if masks.dtype != torch.bool else masks
    areas = binary.flatten(1).sum(1)
    owner = torch.full(masks.shape[1:], -1, dtype=torch.int64, device=masks.device)
    # Stable descending sort: among equal areas the earlier index is painted first.
    for i in torch.sort(areas, descending=True, stable=True).indices.tolist():
        owner[binary[i]] = i
    return owner


def smallest_wins(masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Disjoint binary masks: each pixel kept only in the smallest mask covering it.

    Args:
        masks: (N, H, W) float in [0, 1] (or bool).
        threshold: binarisation threshold.

    Returns:
        (M, H, W) float32 in {0, 1}, M <= N, in the input order with the masks that end up
        empty (empty to begin with, or hidden by smaller ones) removed.
    """
    owner = owner_map(masks, threshold)
    ids = torch.arange(masks.shape[0], device=masks.device)
    painted = owner.unsqueeze(0) == ids[:, None, None]
    return painted[painted.flatten(1).any(1)].float()


def add_uncovered_mask(
    masks: torch.Tensor, min_area: int = 1, threshold: float = 0.5
) -> torch.Tensor:
    """Append one mask of the pixels that no mask covers, if there are at least ``min_area``.

    Args:
        masks: (N, H, W) float in [0, 1].
        min_area: smallest number of uncovered pixels worth a mask of their own.
        threshold: a pixel is covered by mask i when ``masks[i] > threshold``.

    Returns:
        (N, H, W) or (N + 1, H, W) float32; the extra mask, if any, is last.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    uncovered = ~(masks > threshold).any(0)
    if int(uncovered.sum()) < max(min_area, 1):
        return masks.float()
    return torch.cat([masks.float(), uncovered[None].float()])


def resolve_overlaps(masks: torch.Tensor, rule: str, fill_uncovered: bool = True) -> torch.Tensor:
    """Apply an overlap rule (see the module docstring), then cover the leftover pixels.

    Args:
        masks: (N, H, W) float in [0, 1].
        rule: one of ``OVERLAP_RULES``.
        fill_uncovered: append a mask of the pixels no mask covers.

    Returns:
        (M, H, W) float32 in [0, 1].
    """
    if rule == "smallest_wins":
        masks = smallest_wins(masks)
    elif rule == "sum":
        masks = masks.float()
    else:
        raise ValueError(f"unknown overlap rule {rule!r}; choose one of {list(OVERLAP_RULES)}")
    return add_uncovered_mask(masks) if fill_uncovered else masks
