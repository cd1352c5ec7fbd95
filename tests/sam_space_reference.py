"""A stand-alone reproduction of the authors' SAM space's labelling, for tests.

Source: the Hugging Face space facebook/ov-seg ("OVSeg (+ Segment_Anything)"), file
``open_vocab_seg/utils/predictor.py``, ``SAMVisualizationDemo.run_on_image``, read in a public
copy (GitHub aditimahe/ov_seg at commit 33cb32354a2923ade3f2b213962729ad502329ac; the same
method is in the other public copies of the space). Written from that rule with numpy, torch
and cv2 only: nothing here imports ovseg, so the tests compare ovseg with an independent
computation. The steps that come before (SAM, the masked crops, the CLIP towers) are inputs
here: the masks at the working size, the CLIP image features of the masks and the text
features of the names.

The rule, step by step:

1. working size: the longer side becomes 1280, the other ``int((1280 / longer) * other)``
   (width when ``width > height``, else height);
2. a vocabulary of one name gets ``"others"`` appended;
3. ``probs = softmax(100 * img @ txt.T)`` with both feature sets divided by their norms;
4. each name's column picks its best mask (``torch.max`` over masks); ``others`` picks none
   when the vocabulary is exactly ``[name, "others"]``; below granularity 1 every mask with
   ``probs[m, c] > max_m probs[m, c] * granularity`` is picked instead;
5. picked masks keep their whole row, the rest are zero; ``semseg = einsum("qc,qhw->chw")``;
6. ``semseg[0] == 0`` is blank (255), the rest is the argmax over classes;
7. the label map goes back to the photo size with ``cv2.resize(..., INTER_NEAREST)``.
"""

from __future__ import annotations

import numpy as np
import torch

LONG_SIDE = 1280
BLANK = 255


def working_size(height: int, width: int) -> tuple[int, int]:
    """Step 1: (height, width) of the image SAM sees."""
    if width > height:
        return int((LONG_SIDE / width) * height), LONG_SIDE
    return LONG_SIDE, int((LONG_SIDE / height) * width)


def with_others(class_names: list[str]) -> list[str]:
    """Step 2."""
    names = list(class_names)
    if len(names) == 1:
        names.append("others")
    return names


def class_probabilities(image_features: np.ndarray, text_features: np.ndarray) -> torch.Tensor:
    """Step 3: (M, C) and (K, C) features -> (M, K) float32 probabilities."""
    img = torch.as_tensor(np.asarray(image_features, dtype=np.float32))
    txt = torch.as_tensor(np.asarray(text_features, dtype=np.float32))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (100.0 * img @ txt.T).softmax(dim=-1)


def picked_masks(probs: torch.Tensor, class_names: list[str], granularity: float) -> list[int]:
    """Step 4: the mask indices the space copies rows for (repeats allowed, as there)."""
    contrast = len(class_names) == 2 and class_names[-1] == "others"
    top, top_index = torch.max(probs, dim=0)
    if granularity >= 1:
        picks = top_index[:-1] if contrast else top_index
        return [int(i) for i in picks]
    limits = top * granularity
    if contrast:
        limits = limits[:-1]
    picks: list[int] = []
    for column, limit in enumerate(limits):
        picks.extend(torch.where(probs[:, column] > limit)[0].tolist())
    return picks


def labels_from_probs(
    masks: np.ndarray,
    probs: np.ndarray | torch.Tensor,
    class_names: list[str],
    granularity: float,
    photo_size: tuple[int, int],
) -> np.ndarray:
    """Steps 4-7: (M, h, w) bool masks at the working size and (M, K) float32 probabilities
    (K names, ``others`` included) -> (H, W) int32 labels at ``photo_size``, 255 = blank."""
    import cv2

    probs = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    rows = torch.zeros_like(probs)
    for index in picked_masks(probs, class_names, granularity):
        rows[index] = probs[index]
    stack = torch.as_tensor(np.asarray(masks, dtype=bool)).float()
    semseg = torch.einsum("qc,qhw->chw", rows.float(), stack)
    blank = semseg[0] == 0
    labels = semseg.argmax(dim=0)
    labels[blank] = BLANK
    labels = labels.numpy().astype(np.int32)
    height, width = photo_size
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def run_on_image_labels(
    masks: np.ndarray,
    image_features: np.ndarray,
    text_features: np.ndarray,
    class_names: list[str],
    granularity: float,
    photo_size: tuple[int, int],
) -> np.ndarray:
    """Steps 3-7 from features: ``text_features`` are those of ``with_others(class_names)``."""
    names = with_others(class_names)
    probs = class_probabilities(image_features, text_features)
    return labels_from_probs(masks, probs, names, granularity, photo_size)
