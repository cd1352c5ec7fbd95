"""The paper's two oracle analyses.

- **GT-mask oracle**: the ground-truth class masks of an image are classified by the CLIP
  branch alone; every pixel of a mask gets the mask's predicted class, so the only error
  left is classification (a perfect classifier scores 100 mIoU). Paper: 20.1 A-150 with
  plain CLIP.
- **Proposal oracle**: the model's own proposals are labelled by an oracle that gives each
  proposal the GT class it overlaps most, then fused like the model's semantic inference;
  the only error left is mask quality. Paper: 66.5 A-150.

The pure parts (mask extraction, overlap assignment, fusion) take plain tensors; the model
parts use the model's stages (``resize_shortest_edge``, ``OVSeg.clip_image_features``,
``encode_text``, ``clip_adapter.similarity_logits``, ``clip_class_probs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.data.datasets.base import IGNORE_LABEL
from ovseg.proposals.ground_truth import class_masks, resize_label

# classify(image (H, W, 3) uint8, masks (M, H, W) bool) -> (M, K) probabilities
MaskClassifier = Callable[[np.ndarray, torch.Tensor], torch.Tensor]


def paint_mask_classes(
    label: torch.Tensor | np.ndarray,
    classes: torch.Tensor,
    predicted: torch.Tensor,
    num_classes: int,
) -> np.ndarray:
    """Label every pixel of GT class ``classes[i]`` with ``predicted[i]``.

    A mask with ``predicted[i] < 0`` (not classified) counts as a miss: its pixels get
    ``(classes[i] + 1) % K``. Ignored pixels get class 0 (they are not scored).

    Returns:
        (H, W) int64 prediction.
    """
    label = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    predicted = torch.where(predicted < 0, (classes + 1) % num_classes, predicted)
    lookup = torch.zeros(num_classes + 1, dtype=torch.long)
    lookup[classes] = predicted.long()
    index = torch.where(label.long() < 0, torch.full_like(label.long(), num_classes), label.long())
    return lookup[index].numpy()


def gt_mask_oracle(
    image: np.ndarray, label: np.ndarray, classify: MaskClassifier, num_classes: int
) -> np.ndarray:
    """Prediction of the GT-mask oracle for one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) int64 ground truth with ``IGNORE_LABEL``.
        classify: gives (M, K) class probabilities for (M, H, W) binary masks; an all-zero row
            means the mask could not be classified.
    """
    classes, masks = class_masks(label, IGNORE_LABEL)
    if len(classes) == 0:
        return np.zeros(np.shape(label), dtype=np.int64)
    probs = classify(image, masks)
    if probs.shape != (len(classes), num_classes):
        raise ValueError(
            f"classifier returned {tuple(probs.shape)}, expected {(len(classes), num_classes)}"
        )
    predicted = probs.argmax(dim=1)
    predicted[probs.sum(dim=1) <= 0] = -1
    return paint_mask_classes(label, classes, predicted, num_classes)


def assign_by_overlap(masks: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The GT class each mask overlaps most (soft overlap: sum of mask values per class).

    Args:
        masks: (N, h, w) float in [0, 1].
        label: (h, w) int64 ground truth with ``IGNORE_LABEL``.

    Returns:
        (N,) int64 class index, -1 for a mask that touches no scored pixel.
    """
    label = label.long().reshape(-1)
    classes = torch.unique(label)
    classes = classes[(classes >= 0) & (classes < num_classes)]
    n = masks.shape[0]
    if len(classes) == 0 or n == 0:
        return torch.full((n,), -1, dtype=torch.long)
    onehot = (label[:, None] == classes[None]).to(masks.dtype)  # (P, C)
    overlap = masks.reshape(n, -1) @ onehot  # (N, C)
    best = overlap.argmax(dim=1)
    return torch.where(overlap.amax(dim=1) > 0, classes[best], torch.full_like(best, -1))


def oracle_fusion(
    masks: torch.Tensor, assigned: torch.Tensor, num_classes: int, out_size: tuple[int, int]
) -> np.ndarray:
    """MaskFormer semantic fusion with one-hot oracle classes, upsampled to ``out_size``.

    Args:
        masks: (N, h, w) soft masks at the model-input size.
        assigned: (N,) class per mask, -1 for none.

    Returns:
        (H, W) int64 argmax of ``sum_i onehot[i, k] * mask_i``, resized bilinearly
        (align_corners=False) to ``out_size`` before the argmax, like the predictor.
    """
    # Only the assigned classes (and class 0, the argmax where no mask covers a pixel) can
    # win, so the (K, H, W) map is computed over those columns alone; ties resolve to the
    # lower class index exactly as the full argmax does, because the columns stay sorted.
    columns = torch.unique(torch.cat([assigned[assigned >= 0], assigned.new_zeros(1)]))
    probs = (assigned[:, None] == columns[None]).to(masks.dtype)  # (N, C)
    sem = torch.einsum("nc,nhw->chw", probs, masks)
    if tuple(sem.shape[-2:]) != tuple(out_size):
        sem = F.interpolate(sem[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return columns[sem.argmax(dim=0)].numpy().astype(np.int64)


def proposal_oracle(
    image: np.ndarray,
    label: np.ndarray,
    propose: Callable[[np.ndarray], torch.Tensor],
    num_classes: int,
) -> np.ndarray:
    """Prediction of the proposal oracle for one image.

    Args:
        image: (H, W, 3) uint8 RGB at the original size.
        label: (H, W) ground truth.
        propose: image -> (N, h, w) soft masks at the model-input size.
    """
    masks = propose(image).float().cpu()
    gt = resize_label(label, (masks.shape[-2], masks.shape[-1]))
    assigned = assign_by_overlap(masks, gt, num_classes)
    return oracle_fusion(masks, assigned, num_classes, tuple(np.shape(label)))


def model_input(model, image: np.ndarray) -> torch.Tensor:
    """The (3, h, w) uint8 model input of an (H, W, 3) image: the predictor's test resize."""
    from ovseg.data.transforms import resize_shortest_edge

    cfg = model.config
    resized = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
    return torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)


class ModelProposer:
    """``propose`` for ``proposal_oracle``: a generator (default the model's head) on the input."""

    def __init__(self, model, generator=None) -> None:
        self.model = model
        self.generator = generator if generator is not None else model.propose

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.generator(model_input(self.model, image).to(self.model.device)).masks


class CLIPMaskClassifier:
    """``classify`` for ``gt_mask_oracle``: the model's CLIP branch on masked crops.

    The masks are resized (nearest) to the model-input size, cropped as the predictor crops
    its proposals, encoded with mask prompts and compared with the vocabulary's text
    features. A mask that is empty at the input size gets an all-zero row.
    """

    def __init__(self, model, class_names: Sequence[str]) -> None:
        self.model = model
        self.class_names = list(class_names)
        self._text = None

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        from ovseg.modeling.fusion import clip_class_probs

        model = self.model
        if self._text is None:
            self._text = model.clip_adapter.with_void(model.encode_text(self.class_names))
        chw = model_input(model, image).to(model.device)
        size = (chw.shape[-2], chw.shape[-1])
        small = F.interpolate(masks[None].float(), size=size, mode="nearest")[0]
        clip = model.clip_image_features(chw, small.to(model.device), 0.5)
        probs = torch.zeros(masks.shape[0], len(self.class_names))
        if clip.features.shape[0]:
            logits = model.clip_adapter.similarity_logits(clip.features, self._text)
            probs[clip.valid.cpu()] = clip_class_probs(logits).float().cpu()
        return probs
