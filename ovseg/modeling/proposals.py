"""The interface every mask source implements: built-in MaskFormer head, SAM, superpixels, GT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Proposals:
    """Class-agnostic mask proposals for one image.

    Attributes:
        masks: (N, H, W) float in [0, 1], soft or binary, at the model-input size.
        embeddings: (N, C) CLIP-space class embeddings from a proposal head, or None for
            class-agnostic sources (then only the CLIP branch classifies).
    """

    masks: torch.Tensor
    embeddings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.masks.dim() != 3:
            raise ValueError(
                f"Proposals.masks must be (N, H, W), got shape {tuple(self.masks.shape)}"
            )
        if self.embeddings is not None and (
            self.embeddings.dim() != 2 or self.embeddings.shape[0] != self.masks.shape[0]
        ):
            raise ValueError(
                f"Proposals.embeddings must be (N, C) with N={self.masks.shape[0]}, "
                f"got shape {tuple(self.embeddings.shape)}"
            )

    def __len__(self) -> int:
        return self.masks.shape[0]


class ProposalGenerator(Protocol):
    """Anything that turns a (3, H, W) uint8 model-input image into ``Proposals``."""

    def __call__(self, image: torch.Tensor) -> Proposals: ...
