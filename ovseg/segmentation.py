"""The result of segmenting one image with one vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class Segmentation:
    """Per-pixel labelling of one image.

    Attributes:
        class_names: the vocabulary, in class-index order.
        sem_seg: (K, H, W) float32 scores at the original image size.
        label_map: (H, W) int64 index into ``class_names`` (argmax of ``sem_seg``).
    """

    class_names: list[str]
    sem_seg: torch.Tensor
    label_map: np.ndarray

    @classmethod
    def from_scores(cls, class_names: list[str], sem_seg: torch.Tensor) -> Segmentation:
        label_map = sem_seg.argmax(dim=0).cpu().numpy().astype(np.int64)
        return cls(list(class_names), sem_seg, label_map)

    @property
    def segments(self) -> list[dict]:
        """One entry per class present, as Hugging Face's image-segmentation pipeline does.

        ``{"label": str, "score": float, "mask": PIL.Image mode "L" (255 inside)}``; the score
        is the mean ``sem_seg`` value of that class over its pixels.
        """
        out = []
        scores = self.sem_seg.detach().float().cpu()
        for k in np.unique(self.label_map).tolist():
            inside = self.label_map == k
            score = float(scores[k][torch.from_numpy(inside)].mean())
            mask = Image.fromarray((inside * 255).astype(np.uint8), mode="L")
            out.append({"label": self.class_names[k], "score": score, "mask": mask})
        return out
