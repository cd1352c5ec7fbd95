"""The result of segmenting one image with one vocabulary."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovseg.data.transforms import resize_nearest
from ovseg.fileio import write_atomic
from ovseg.modeling.fusion import demo_unlabelled

UNLABELLED = -1  # label_map value of unlabelled pixels
MAX_PALETTE_CLASSES = 255  # a P-mode PNG holds classes 0..254 and 255 for unlabelled

SCORE_DEFINITION = (
    "confidence in [0, 1]: the mean, over the segment's pixels, of the pixel's normalised "
    "score sem_seg[k] / sum_j sem_seg[j] (the share of all class scores at that pixel that "
    "goes to the segment's class; 0 where all scores are 0)"
)


def unlabelled_png_values(num_classes: int) -> tuple[int, ...]:
    """Label-PNG values that mean "unlabelled" for ``num_classes`` classes: 65535, and 255
    while 255 cannot be a class (at most 255 classes)."""
    return (255, 65535) if num_classes <= MAX_PALETTE_CLASSES else (65535,)


def unlabelled_as_negative(label: np.ndarray, num_classes: int) -> np.ndarray:
    """A label PNG's values as int64 with the unlabelled values mapped to ``UNLABELLED``."""
    out = label.astype(np.int64)
    out[np.isin(out, unlabelled_png_values(num_classes))] = UNLABELLED
    return out


def no_evidence(sem_seg: torch.Tensor) -> np.ndarray:
    """(H, W) bool: pixels where every class scores 0 (scores are >= 0), i.e. no surviving
    mask reaches them; all of them when no mask survived the threshold."""
    return (
        (sem_seg.amax(dim=0) <= 0).cpu().numpy()
        if sem_seg.shape[0]
        else np.ones(sem_seg.shape[1:], dtype=bool)
    )


def pixel_confidence(sem_seg: torch.Tensor, label_map: np.ndarray) -> np.ndarray:
    """(H, W) float64 normalised score of each pixel's label: ``sem_seg[l] / sum_j sem_seg[j]``
    (scores are >= 0); 0 where the scores sum to 0 or the pixel is unlabelled."""
    scores = sem_seg.detach().float().cpu()  # no copy for the predictor's float32 scores
    labels = torch.from_numpy(np.maximum(label_map, 0))
    top = scores.gather(0, labels[None])[0].double()
    total = scores.sum(dim=0, dtype=torch.float64)
    share = torch.where(total > 0, top / total.clamp_min(1e-300), torch.zeros_like(top))
    share[torch.from_numpy(label_map < 0)] = 0.0
    return share.numpy()


@dataclass
class ProposalRecord:
    """The masks one prediction fused and what it did with them ("why this label").

    Attributes:
        working_size: (H, W), the size at which the masks were fused (the model input: 1280
            on the longer side in the SAM space mode).
        masks: (N, H, W) bool masks at ``working_size`` (soft masks binarised at the
            prediction's mask threshold).
        probs: (N, K) float32, the class-probability row of each mask that the fusion used
            (``others`` included when the vocabulary has it).
        kept: (N,) bool, whether the fusion kept the mask (eval mode keeps all).
    """

    working_size: tuple[int, int]
    masks: torch.Tensor
    probs: torch.Tensor
    kept: torch.Tensor

    def to_json(self) -> dict:
        """``{"working_size": [H, W], "items": [{"rle", "probs", "kept"}]}``: ``rle`` a COCO
        compressed RLE at ``working_size`` (``{"size": [H, W], "counts": str}``), ``probs``
        the float32 values written in full (each reads back to the same float32)."""
        from pycocotools import mask as mask_utils

        masks = self.masks.detach().cpu().numpy().astype(np.uint8)
        probs = self.probs.detach().float().cpu().tolist()  # exact float32 values as floats
        kept = self.kept.detach().cpu().tolist()
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
        h, w = self.working_size
        items = [
            {
                "rle": {"size": [int(h), int(w)], "counts": rle["counts"].decode()},
                "probs": row,
                "kept": bool(keep),
            }
            for rle, row, keep in zip(rles, probs, kept)
        ]
        return {"working_size": [int(h), int(w)], "items": items}


@dataclass
class Segmentation:
    """Per-pixel labelling of one image.

    Attributes:
        class_names: the classes used, in class-index order (in demo mode a single name gets
            ``others`` appended).
        sem_seg: (K, H, W) float32 raw scores (>= 0) at the original image size; not
            normalised (eval mode sums over all masks, so they may exceed 1).
        label_map: (H, W) int64 index into ``class_names`` (argmax of ``sem_seg``), or
            ``UNLABELLED`` (-1) where no class applies (demo mode only).
        mode: "eval" or "demo", the fusion that made ``sem_seg``.
        proposals: the fused masks, their probabilities and whether each was kept
            (``predict(..., save_proposals=True)``), else None.
    """

    class_names: list[str]
    sem_seg: torch.Tensor
    label_map: np.ndarray
    mode: str = "eval"
    proposals: ProposalRecord | None = None

    @classmethod
    def from_scores(
        cls,
        class_names: list[str],
        sem_seg: torch.Tensor,
        unlabelled: torch.Tensor | np.ndarray | None = None,
        mode: str = "eval",
    ) -> Segmentation:
        """Label map = argmax of ``sem_seg`` (K, H, W), ``UNLABELLED`` where ``unlabelled``
        ((H, W) bool) is True and, in both modes, where no class has any evidence (every
        score 0: no surviving mask reaches the pixel; ``no_evidence``). ``sem_seg`` may be on
        a GPU: the argmax runs there (a host argmax over 150 classes costs ~0.1 s per image)
        and the scores are copied after."""
        label_map = sem_seg.argmax(dim=0).cpu().numpy().astype(np.int64)
        sem_seg = sem_seg.cpu()
        if unlabelled is not None:
            mask = unlabelled.cpu().numpy() if torch.is_tensor(unlabelled) else unlabelled
            label_map[np.asarray(mask, dtype=bool)] = UNLABELLED
        label_map[no_evidence(sem_seg)] = UNLABELLED
        return cls(list(class_names), sem_seg, label_map, mode)

    @classmethod
    def from_fused(
        cls,
        class_names: list[str],
        fused,
        original_size: tuple[int, int],
        mode: str,
        record: ProposalRecord | None = None,
    ) -> Segmentation:
        """The result of ``ovseg.modeling.classify.fuse_masks`` (``fused``, at the masks'
        size) at ``original_size``: with the space rule (``fused.covered``) the scores and
        the covered pixels go back by nearest neighbour (cv2's rule) and uncovered pixels are
        unlabelled; otherwise the scores are resized bilinearly and, in demo mode, pixels
        whose channel 0 scores 0 are unlabelled (the official demo's rule)."""
        if fused.covered is not None:
            sem_seg = resize_nearest(fused.sem_seg, original_size).float()
            unlabelled = ~resize_nearest(fused.covered, original_size)
        else:
            sem_seg = F.interpolate(
                fused.sem_seg[None], size=original_size, mode="bilinear", align_corners=False
            )[0].float()
            unlabelled = demo_unlabelled(sem_seg) if mode == "demo" else None
        seg = cls.from_scores(class_names, sem_seg, unlabelled, mode=mode)
        seg.proposals = record
        return seg

    @property
    def official_label_map(self) -> np.ndarray:
        """(H, W) int64 argmax of ``sem_seg`` with every pixel labelled: what the official
        evaluation scores (class 0 where no class has evidence). ``ovseg eval`` uses it;
        ``label_map`` is the labelling to show (no evidence, no label)."""
        return self.sem_seg.argmax(dim=0).cpu().numpy().astype(np.int64)

    @property
    def unlabelled_value(self) -> int:
        """Value of unlabelled pixels in ``label_image``: 255 (8-bit, at most 255 classes) or
        65535 (16-bit)."""
        return 255 if len(self.class_names) <= MAX_PALETTE_CLASSES else 65535

    @property
    def segments(self) -> list[dict]:
        """One entry per class present, as Hugging Face's image-segmentation pipeline does.

        ``{"label": str, "score": float, "mask": PIL.Image mode "L" (255 inside)}``; the score
        is a confidence in [0, 1], see ``SCORE_DEFINITION``. Unlabelled pixels belong to no
        segment.
        """
        out = []
        for k, inside, score in self._present():
            mask = Image.fromarray((inside * 255).astype(np.uint8), mode="L")
            out.append({"label": self.class_names[k], "score": score, "mask": mask})
        return out

    def _present(self) -> list[tuple[int, np.ndarray, float]]:
        """(class index, (H, W) bool mask, confidence) for each class present."""
        confidence = pixel_confidence(self.sem_seg, self.label_map)
        out = []
        for k in np.unique(self.label_map).tolist():
            if k < 0:
                continue
            inside = self.label_map == k
            out.append((k, inside, float(confidence[inside].mean())))
        return out

    def to_json(self) -> dict:
        """A JSON-ready dict: image size, vocabulary, and one entry per class present.

        ``{"height", "width", "class_names", "mode", "score_definition", "unlabelled":
        {"value", "area", "no_evidence"}, "no_evidence", "segments": [{"id", "label",
        "score", "area", "bbox", "rle"}]}``. ``unlabelled.no_evidence`` counts the
        unlabelled pixels no surviving mask reaches (every class scored 0), and the
        top-level ``no_evidence`` is true when that is every pixel (no mask survived).
        ``id`` indexes ``class_names``; ``score`` is a confidence in [0, 1]
        (``SCORE_DEFINITION``); ``area`` is the pixel count;
        ``bbox`` is COCO ``[x, y, w, h]``; ``rle`` is a COCO compressed RLE
        ``{"size": [H, W], "counts": str}`` that ``pycocotools.mask.decode`` turns back into
        exactly ``label_map == id`` (after encoding ``counts`` to bytes). Unlabelled pixels
        have no segment; ``unlabelled`` gives their value in the label PNG and their count.
        With ``proposals`` set, a ``"proposals"`` block (``ProposalRecord.to_json``) is added.
        """
        from pycocotools import mask as mask_utils

        height, width = self.label_map.shape
        without_evidence = no_evidence(self.sem_seg) & (self.label_map < 0)
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
        out = {
            "height": int(height),
            "width": int(width),
            "class_names": list(self.class_names),
            "mode": self.mode,
            "score_definition": SCORE_DEFINITION,
            "unlabelled": {
                "value": self.unlabelled_value,
                "area": int((self.label_map < 0).sum()),
                "no_evidence": int(without_evidence.sum()),
            },
            "no_evidence": bool(without_evidence.all()),
            "segments": segments,
        }
        if self.proposals is not None:
            out["proposals"] = self.proposals.to_json()
        return out

    def overlay(self, image=None, alpha: float = 0.5, legend: bool | str = True) -> Image.Image:
        """Coloured overlay with a legend naming each class present (largest first).

        Args:
            image: the segmented image (HxWx3 uint8 array or PIL image, same size as
                ``label_map``), or None for the colour map alone.
            alpha: weight of the class colours in [0, 1].
            legend: add the legend panel to the right; "inset": inside the image (the size
                stays the image's).
        """
        from ovseg.inference.visualize import overlay_image

        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        return overlay_image(image, self.label_map, self.class_names, alpha=alpha, legend=legend)

    def label_image(self) -> Image.Image:
        """The label map as an index PNG image (pixel value = class index).

        Up to 255 classes: mode "P" with the class palette, unlabelled = 255 (black). More:
        16-bit "I;16", unlabelled = 65535. ``unlabelled_value`` says which.
        """
        from ovseg.inference.visualize import UNLABELLED_RGB, palette

        k = len(self.class_names)
        if k > 65535:
            raise ValueError(f"at most 65535 classes fit a 16-bit label PNG, got {k}")
        dtype = np.uint8 if k <= MAX_PALETTE_CLASSES else np.uint16
        values = np.where(self.label_map < 0, self.unlabelled_value, self.label_map)
        if dtype is np.uint16:
            return Image.fromarray(values.astype(np.uint16))
        out = Image.fromarray(values.astype(np.uint8)).convert("P")
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[:k] = palette(max(k, 1))[:k]
        colours[255] = UNLABELLED_RGB
        out.putpalette(colours.ravel().tolist())
        return out

    def files(
        self, stem: str = "segmentation", image=None, alpha: float = 0.5, extra: dict | None = None
    ) -> dict[str, bytes]:
        """The contents of the three output files, by file name, in the order ``save`` writes
        them (the JSON last): ``<stem>.png`` (``label_image``), ``<stem>_overlay.png``
        (``overlay(image, alpha)``) and ``<stem>.json`` (``to_json`` plus the keys of
        ``extra``)."""
        label, overlay = io.BytesIO(), io.BytesIO()
        self.label_image().save(label, format="PNG")
        self.overlay(image, alpha=alpha).save(overlay, format="PNG")
        record = {**self.to_json(), **(extra or {})}
        return {
            f"{stem}.png": label.getvalue(),
            f"{stem}_overlay.png": overlay.getvalue(),
            f"{stem}.json": json.dumps(record, separators=(",", ":")).encode(),
        }

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
        contents = self.files(stem, image=image, alpha=alpha, extra=extra)
        for name, data in contents.items():
            write_atomic(directory / name, data)
        label, overlay, record = (directory / name for name in contents)
        return {"label_map": label, "overlay": overlay, "json": record}
