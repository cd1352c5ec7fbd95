"""Masked crops for the CLIP branch, exactly as the official model makes them.

For every non-empty binary mask: take its tight box (expanded by ``expand_ratio``, truncated
to int, clamped to the image), crop the 0-255 image there, set pixels outside the mask to the
fill value, normalise with CLIP's mean/std, and resize to the CLIP input size (bicubic for the
crop, nearest for the mask), not keeping the aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ovseg.data.transforms import CLIP_MEAN, CLIP_STD

MEAN_FILL = tuple(255.0 * m for m in CLIP_MEAN)  # (122.7709, 116.7460, 104.0937)
CROP_METHODS = ("reference", "fast")


@dataclass
class MaskedCrops:
    """Attributes:
    crops: (V, 3, S, S) CLIP-normalised crops of the V valid masks.
    region_masks: (V, 1, S, S) binary masks resized with nearest.
    valid: (N,) bool, True for non-empty masks.
    boxes: (V, 4) int64 crop boxes (left, top, right, bottom), right/bottom exclusive.
    """

    crops: torch.Tensor
    region_masks: torch.Tensor
    valid: torch.Tensor
    boxes: torch.Tensor


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool, all non-empty -> (N, 4) float tight boxes (x0, y0, x1 + 1, y1 + 1)."""
    h, w = masks.shape[-2:]
    bytes_ = masks.contiguous().view(
        torch.uint8
    )  # uint8 max-reductions are far faster than bool any()
    rows, cols = bytes_.amax(dim=2).bool(), bytes_.amax(dim=1).bool()
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def expand_boxes(boxes: torch.Tensor, ratio: float, height: int, width: int) -> torch.Tensor:
    """Scale boxes about their centre by ``ratio``, truncate to int, clamp to the image."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    hw, hh = (boxes[:, 2] - boxes[:, 0]) * ratio / 2, (boxes[:, 3] - boxes[:, 1]) * ratio / 2
    out = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=1).trunc().long()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def masked_crops(
    image: torch.Tensor,
    masks: torch.Tensor,
    size: int = 224,
    fill: tuple[float, float, float] = MEAN_FILL,
    expand_ratio: float = 1.0,
    method: str = "reference",
) -> MaskedCrops:
    """Crop every non-empty mask's region for CLIP.

    Args:
        image: (3, H, W) image on the 0-255 scale (uint8 or float), the model input.
        masks: (N, H, W) binary masks (bool, or {0, 1}).
        size: CLIP input size S.
        fill: value of pixels outside the mask, per channel, 0-255 scale.
        method: "reference" (the official per-mask crop, normalise and resize loop) or
            "fast" (all crops at once by gathering the 4x4 bicubic taps; equal to the
            reference up to float rounding, region masks identical).
    Returns:
        ``MaskedCrops`` for the V valid masks, in query order.
    """
    return masked_crops_many([image], [masks], size, fill, expand_ratio, method)[0]


def masked_crops_many(
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    size: int = 224,
    fill: tuple[float, float, float] = MEAN_FILL,
    expand_ratio: float = 1.0,
    method: str = "reference",
) -> tuple[MaskedCrops, list[int]]:
    """``masked_crops`` of several images (``images[i]`` with ``masks[i]``), as one
    ``MaskedCrops`` (image 0's valid crops first, then image 1's, ...; ``valid`` and
    ``boxes`` concatenated likewise) and the number of crops of each image. With
    ``method="fast"`` the crops of all the images are made together
    (``ovseg.data.fast_crops.multi_image_masked_crops``)."""
    if method not in CROP_METHODS:
        raise ValueError(f"masked_crops method must be one of {CROP_METHODS}, got {method!r}")
    prepared = [_nonempty_boxes(image, m, expand_ratio) for image, m in zip(images, masks)]
    image0 = prepared[0][0]
    mean = image0.new_tensor(CLIP_MEAN).view(3, 1, 1) * 255.0
    std = image0.new_tensor(CLIP_STD).view(3, 1, 1) * 255.0
    fill_t = image0.new_tensor(fill).view(3, 1, 1)
    valid = torch.cat([p[1] for p in prepared])
    boxes = torch.cat([p[3] for p in prepared])
    counts = [len(p[3]) for p in prepared]
    if method == "fast":
        from ovseg.data.fast_crops import multi_image_masked_crops

        crops, regions = multi_image_masked_crops(
            [p[0] for p in prepared], [p[2] for p in prepared], boxes, size, mean, std, fill_t
        )
        return MaskedCrops(crops, regions, valid, boxes), counts
    crops, regions = [], []
    for image, _, nonempty, image_boxes in prepared:
        for mask, (l, t, r, b) in zip(nonempty, image_boxes.tolist()):
            m = mask[t:b, l:r].to(image.dtype)
            region = image[:, t:b, l:r] * m + (1 - m) * fill_t
            region = (region - mean) / std
            crops.append(
                F.interpolate(region[None], (size, size), mode="bicubic", align_corners=False)
            )
            regions.append(F.interpolate(m[None, None], (size, size), mode="nearest"))
    if crops:
        return MaskedCrops(torch.cat(crops), torch.cat(regions), valid, boxes), counts
    empty = image0.new_zeros(0, 3, size, size)
    return MaskedCrops(empty, image0.new_zeros(0, 1, size, size), valid, boxes), counts


def _nonempty_boxes(image: torch.Tensor, masks: torch.Tensor, expand_ratio: float):
    """``(image as float, valid (N,), the valid masks (V, H, W) bool, their boxes (V, 4))``
    of one image, with the shapes checked."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if masks.dim() != 3 or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"masks must be (N, H, W) with H, W = {tuple(image.shape[-2:])}, "
            f"got {tuple(masks.shape)}"
        )
    masks = masks.bool()
    valid = masks.view(torch.uint8).flatten(1).amax(dim=1).bool()
    h, w = image.shape[-2:]
    nonempty = masks if bool(valid.all()) else masks[valid]  # no copy when all are valid
    boxes = expand_boxes(mask_boxes(nonempty), expand_ratio, h, w)
    return image.float(), valid, nonempty, boxes
