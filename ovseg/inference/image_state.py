"""What a ``Predictor`` keeps per image between ``set_image`` and ``predict``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg.modeling.proposals import Proposals


@dataclass
class ImageState:
    """What ``set_image`` caches for one image (``Predictor`` keeps one per image set).

    Attributes:
        original_size: (H, W) of the image as given.
        input_image: (3, h, w) uint8 model input (resized), None with views.
        proposals: its proposals, None with views.
        clip_cache: CLIP image features per (mask threshold, queries).
        views: test-time augmentation / sliding-window views, or None.
        refine_masks: the photo's SAM masks for ``--refine sam`` (``ovseg.inference.refine``),
            or None.
    """

    original_size: tuple[int, int] | None = None
    input_image: torch.Tensor | None = None
    proposals: Proposals | None = None
    clip_cache: dict | None = None
    views: list[tuple[np.ndarray, bool]] | None = None
    refine_masks: Any = None
