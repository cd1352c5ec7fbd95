"""Ground-truth masks as a proposal generator, for the GT-mask oracle analysis.

Set the image's label map with ``set_label`` before calling the generator on that image: it
then returns one binary mask per class present in the label (ignore excluded), resized with
nearest neighbour to the model-input size, and no embeddings (so only CLIP classifies).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.data.datasets.base import IGNORE_LABEL
from ovseg.modeling.proposals import Proposals
from ovseg.proposals.registry import register


def resize_label(label: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) integer label map to ``size`` = (h, w)."""
    label = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    if tuple(label.shape) == tuple(size):
        return label.long()
    resized = F.interpolate(label[None, None].double(), size=size, mode="nearest")
    return resized[0, 0].long()


def class_masks(label: torch.Tensor | np.ndarray, ignore_label: int = IGNORE_LABEL):
    """The classes present in ``label`` and their masks.

    Returns:
        classes: (M,) int64, sorted; masks: (M, H, W) bool.
    """
    label = torch.as_tensor(label).long()
    classes = torch.unique(label)
    classes = classes[classes != ignore_label]
    return classes, label[None] == classes[:, None, None]


class GroundTruthMasks:
    """A ``ProposalGenerator`` returning the GT class masks of the current image.

    Attributes:
        classes: (M,) int64 class of each mask returned by the last call.
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL) -> None:
        self.ignore_label = ignore_label
        self.label: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None

    def set_label(self, label: torch.Tensor | np.ndarray) -> None:
        """The (H, W) integer ground truth of the image the next call will see."""
        label = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
        if label.dim() != 2:
            raise ValueError(f"label must be (H, W), got shape {tuple(label.shape)}")
        self.label = label.long()

    def __call__(self, image: torch.Tensor) -> Proposals:
        """(3, h, w) model-input image -> (M, h, w) binary masks of the GT classes."""
        if self.label is None:
            raise RuntimeError("GroundTruthMasks: call set_label(label) before proposing")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        self.classes, masks = class_masks(resize_label(self.label, size), self.ignore_label)
        return Proposals(masks=masks.float(), embeddings=None)


@register("ground-truth")
def _ground_truth(model=None, **options) -> GroundTruthMasks:
    return GroundTruthMasks(**options)
