"""SAM refinement of a prediction (``--refine sam``): SegmentAnyRGBD's rule.

SegmentAnyRGBD (Jun-CEN/SegmentAnyRGBD, ``VisualizationDemo.run_on_image_sam`` in
``open_vocab_seg/utils/predictor.py``) runs the full OVSeg model, then SAM's automatic mask
generator on the photo itself (ViT-H, 64x64 points, predicted IoU 0.8, stability 0.8, SAM's
small-region clean-up at 100 pixels), and walks SAM's masks in the order SAM gives them: each
mask's pixels all take the most frequent label inside that mask of the label map *as refined
so far* (a later mask sees the relabelling of earlier ones; ties go to the smallest label,
as ``np.unique`` sorts). Pixels outside every mask keep the model's label.

ovseg refines ``Segmentation.label_map``. In eval mode (every pixel labelled) this is
SegmentAnyRGBD's computation. In demo mode the prediction has unlabelled pixels (-1), which
vote like a label (and win ties, being the smallest); SegmentAnyRGBD instead takes the argmax
of the demo scores, which makes those pixels class 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

# SegmentAnyRGBD's SAM settings (``run_on_image_sam``); SAM ViT-H weights are the user's.
SEGMENT_ANY_RGBD_SAM = {
    "points_per_side": 64,
    "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.8,
    "min_mask_region_area": 100,
    "crop_n_layers": 0,
}


def majority_refine(label_map: np.ndarray, masks: Iterable[np.ndarray]) -> np.ndarray:
    """SegmentAnyRGBD's refinement: every mask, in order, takes its majority label.

    Args:
        label_map: (H, W) integer labels (-1 = unlabelled votes like a label).
        masks: (H, W) bool masks in SAM's order; empty ones change nothing.
    Returns:
        (H, W) refined copy of ``label_map``.
    """
    out = np.array(label_map, copy=True)
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != out.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the label map's {out.shape}")
        inside = out[mask]
        if inside.size == 0:
            continue
        values, counts = np.unique(inside, return_counts=True)
        out[mask] = values[np.argmax(counts)]
    return out


class PackedMasks:
    """SAM's masks for one photo, kept bit-packed (one bit per pixel) between ``set_image``
    and ``predict``; iterating unpacks one (H, W) bool mask at a time, in SAM's order."""

    def __init__(self, masks: Iterable[np.ndarray], size: tuple[int, int]):
        self.size = tuple(size)
        self.packed = [np.packbits(np.asarray(m, dtype=bool).ravel()) for m in masks]

    def __len__(self) -> int:
        return len(self.packed)

    def __iter__(self):
        count = self.size[0] * self.size[1]
        for bits in self.packed:
            yield np.unpackbits(bits, count=count).astype(bool).reshape(self.size)


class SamRefiner:
    """Computes the SAM masks of a photo for ``majority_refine``.

    Args:
        generator: a ``SamProposalGenerator`` (``ovseg.proposals.sam``) with the refinement's
            settings (``SEGMENT_ANY_RGBD_SAM`` by default in ``PredictorSpec``); it runs on the
            photo at its own size, as SegmentAnyRGBD does.
    """

    def __init__(self, generator):
        self.generator = generator

    def masks(self, image: np.ndarray) -> PackedMasks:
        """(H, W, 3) uint8 RGB photo -> its SAM masks in SAM's order, at (H, W)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        records = self.generator.mask_records(tensor)
        return PackedMasks((r["segmentation"] for r in records), image.shape[:2])
