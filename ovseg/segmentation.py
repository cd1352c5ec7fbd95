"""The result of segmenting one image with one vocabulary."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ovseg.fileio import atomic_path, write_atomic


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
        for k, inside, score in self._present():
            mask = Image.fromarray((inside * 255).astype(np.uint8), mode="L")
            out.append({"label": self.class_names[k], "score": score, "mask": mask})
        return out

    def _present(self) -> list[tuple[int, np.ndarray, float]]:
        """(class index, (H, W) bool mask, mean score inside) for each class present."""
        scores = self.sem_seg.detach().float().cpu()
        out = []
        for k in np.unique(self.label_map).tolist():
            inside = self.label_map == k
            out.append((k, inside, float(scores[k][torch.from_numpy(inside)].mean())))
        return out

    def to_json(self) -> dict:
        """A JSON-ready dict: image size, vocabulary, and one entry per class present.

        ``{"height", "width", "class_names", "segments": [{"id", "label", "score", "area",
        "bbox", "rle"}]}``. ``id`` indexes ``class_names``; ``area`` is the pixel count;
        ``bbox`` is COCO ``[x, y, w, h]``; ``rle`` is a COCO compressed RLE
        ``{"size": [H, W], "counts": str}`` that ``pycocotools.mask.decode`` turns back into
        exactly ``label_map == id`` (after encoding ``counts`` to bytes).
        """
        from pycocotools import mask as mask_utils

        height, width = self.label_map.shape
        segments = []
        for k, inside, score in self._present():
            rle = mask_utils.encode(np.asfortranarray(inside.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            segments.append(
                {
                    "id": int(k),
                    "label": self.class_names[k],
                    "score": round(score, 6),
                    "area": int(inside.sum()),
                    "bbox": bbox,
                    "rle": {"size": [int(height), int(width)], "counts": rle["counts"].decode()},
                }
            )
        return {
            "height": int(height),
            "width": int(width),
            "class_names": list(self.class_names),
            "segments": segments,
        }

    def overlay(self, image=None, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """Coloured overlay with a legend naming each class present (largest first).

        Args:
            image: the segmented image (HxWx3 uint8 array or PIL image, same size as
                ``label_map``), or None for the colour map alone.
            alpha: weight of the class colours in [0, 1].
            legend: add the legend panel to the right.
        """
        from ovseg.visualize import overlay_image

        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        return overlay_image(image, self.label_map, self.class_names, alpha=alpha, legend=legend)

    def label_image(self) -> Image.Image:
        """The label map as an index PNG image: mode "P" with the class palette when there are
        at most 256 classes (pixel value = class index, shown in colour), else 16-bit "I;16"."""
        from ovseg.visualize import palette

        k = len(self.class_names)
        if k <= 256:
            out = Image.fromarray(self.label_map.astype(np.uint8)).convert("P")
            out.putpalette(palette(max(k, 1)).ravel().tolist())
            return out
        if k > 65536:
            raise ValueError(f"at most 65536 classes fit a 16-bit label PNG, got {k}")
        return Image.fromarray(self.label_map.astype(np.uint16))

    def save(
        self,
        directory: str | os.PathLike,
        stem: str = "segmentation",
        image=None,
        alpha: float = 0.5,
        extra: dict | None = None,
    ) -> dict:
        """Write ``<stem>.png`` (label map, see ``label_image``), ``<stem>_overlay.png`` and
        ``<stem>.json`` (``to_json``, plus the keys of ``extra``) into ``directory``; returns
        their paths by kind. ``image`` and ``alpha`` are passed to ``overlay``.

        Each file is written to a temporary name in the same folder and then renamed, so a
        reader never sees a partial file. The JSON is written last: its presence means the
        three files are complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "label_map": directory / f"{stem}.png",
            "overlay": directory / f"{stem}_overlay.png",
            "json": directory / f"{stem}.json",
        }
        with atomic_path(paths["label_map"]) as tmp:
            self.label_image().save(tmp, format="PNG")
        with atomic_path(paths["overlay"]) as tmp:
            self.overlay(image, alpha=alpha).save(tmp, format="PNG")
        record = {**self.to_json(), **(extra or {})}
        write_atomic(paths["json"], json.dumps(record, separators=(",", ":")).encode())
        return paths
