"""Semantic segmentation evaluator: a confusion matrix and the official metrics.

The metrics follow detectron2's ``SemSegEvaluator`` as the official OVSeg evaluation runs it:

- the confusion matrix ``conf`` is (K+1, K+1) int64 with ``conf[pred, gt]``; the last column
  collects the ignored ground-truth pixels, which are never scored; the last row collects
  unlabelled predictions (demo mode, label -1): each counts as a miss of its ground-truth
  class and as a prediction of no class (the official evaluation never has any);
- per-class IoU = TP / (GT + Pred - TP) and accuracy = TP / GT, defined (not NaN) only for
  classes present in the ground truth;
- mIoU = sum of those IoUs / number of classes present in the GT *or* predicted on scored
  pixels: a class that is predicted but absent from the GT counts with IoU 0, exactly as in
  the official code; over a full benchmark every class is normally in the GT and this is the
  mean over GT classes;
- mACC = mean accuracy over GT classes, pACC = TP / GT pixels, fwIoU = IoU weighted by GT
  frequency;
- with ``seen_classes``, mIoU and pACC are also reported over the seen and the unseen classes,
  with their harmonic mean hIoU.

All values are in percent. Under ``torch.distributed`` the matrices of all ranks are summed
(an exact int64 all-reduce) before the metrics are computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ovseg.data.datasets.base import IGNORE_LABEL


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def image_confusion(pred, gt, num_classes: int, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """The (K+1, K+1) int64 confusion matrix ``conf[pred, gt]`` of one image.

    Args:
        pred: (H, W) integer predictions in ``0..K-1``, or -1 for unlabelled (numpy or torch).
        gt: (H, W) integer ground truth in ``0..K-1`` or ``ignore_label``.

    Raises:
        ValueError when shapes differ or a value is out of range.
    """
    pred, gt = _as_numpy(pred), _as_numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
    pred = pred.astype(np.int64, copy=False).reshape(-1)
    gt = gt.astype(np.int64).reshape(-1)
    if pred.size and (pred.min() < -1 or pred.max() >= num_classes):
        raise ValueError(
            f"predictions must be class indices in 0..{num_classes - 1} or -1 (unlabelled), "
            f"got values in {int(pred.min())}..{int(pred.max())}"
        )
    pred = np.where(pred < 0, num_classes, pred)
    ignored = gt == ignore_label
    gt[ignored] = num_classes
    if gt.size and (gt.min() < 0 or gt.max() > num_classes):
        raise ValueError(
            f"ground truth must be in 0..{num_classes - 1} or ignore {ignore_label}, "
            f"got values in {int(gt.min())}..{int(gt.max())}"
        )
    n = num_classes + 1
    return np.bincount(n * pred + gt, minlength=n * n).reshape(n, n)


def to_sparse(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero entries of a confusion matrix as (flat indices int64, counts int64)."""
    flat = conf.reshape(-1)
    index = np.flatnonzero(flat)
    return index.astype(np.int64), flat[index].astype(np.int64)


class SemSegEvaluator:
    """Accumulates a confusion matrix over images; ``compute`` returns the metrics.

    Args:
        class_names: the vocabulary, in class-index order (K names).
        ignore_label: ground-truth value that is not scored.
        seen_classes: names of the classes seen in training, for seen/unseen splits.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_label: int = IGNORE_LABEL,
        seen_classes: Sequence[str] | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_label = ignore_label
        self.seen_mask = None
        if seen_classes is not None:
            unknown = sorted(set(seen_classes) - set(self.class_names))
            if unknown:
                raise ValueError(f"seen classes {unknown[:5]} are not in the vocabulary")
            seen = set(seen_classes)
            self.seen_mask = np.array([name in seen for name in self.class_names])
        self.reset()

    def reset(self) -> None:
        n = self.num_classes + 1
        self.confusion = np.zeros((n, n), dtype=np.int64)

    def update(self, pred, gt) -> np.ndarray:
        """Add one image. ``pred`` and ``gt`` are (H, W); returns that image's matrix."""
        conf = image_confusion(pred, gt, self.num_classes, self.ignore_label)
        self.confusion += conf
        return conf

    def add_sparse(self, index: np.ndarray, counts: np.ndarray) -> None:
        """Add a matrix stored by ``to_sparse`` (e.g. read back from a cache)."""
        np.add.at(self.confusion.reshape(-1), np.asarray(index, np.int64), counts)

    def synchronized_confusion(self) -> np.ndarray:
        """The sum of the matrices of all ranks (this rank's own when not distributed)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.confusion.copy()
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.from_numpy(self.confusion).to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def compute(self) -> dict:
        """Metrics of everything added so far, summed over ranks (a collective call)."""
        return metrics_from_confusion(
            self.synchronized_confusion(), self.class_names, self.seen_mask
        )


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * float(value)


def metrics_from_confusion(
    conf: np.ndarray, class_names: Sequence[str], seen_mask: np.ndarray | None = None
) -> dict:
    """mIoU, fwIoU, mACC, pACC (percent), per-class IoU / accuracy, optional seen/unseen.

    Args:
        conf: (K+1, K+1) matrix ``conf[pred, gt]``, last column = ignored GT, last row =
            unlabelled predictions.
        class_names: K names.
        seen_mask: (K,) bool, True for seen classes.

    Returns:
        a dict with ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``per_class_iou`` and
        ``per_class_acc`` ({name: percent, or None for classes absent from the GT}),
        ``num_pixels`` (scored pixels), and with ``seen_mask`` also ``mIoU-seen``,
        ``mIoU-unseen``, ``pACC-seen``, ``pACC-unseen`` and ``hIoU``.
    """
    k = len(class_names)
    if conf.shape != (k + 1, k + 1):
        raise ValueError(
            f"confusion matrix must be {(k + 1, k + 1)} for {k} classes, got {conf.shape}"
        )
    conf = conf.astype(np.float64)
    tp = conf.diagonal()[:-1]
    pos_gt = conf[:, :-1].sum(axis=0)  # unlabelled predictions (last row) are misses
    pos_pred = conf[:-1, :-1].sum(axis=1)
    gt_present = pos_gt > 0
    scored = (pos_gt + pos_pred) > 0
    iou = np.full(k, np.nan)
    acc = np.full(k, np.nan)
    iou[gt_present] = tp[gt_present] / (pos_gt + pos_pred - tp)[gt_present]
    acc[gt_present] = tp[gt_present] / pos_gt[gt_present]
    total = pos_gt.sum()

    def mean_iou(select: np.ndarray) -> float:
        count = (scored & select).sum()
        return iou[gt_present & select].sum() / count if count else math.nan

    def pixel_acc(select: np.ndarray) -> float:
        count = pos_gt[select].sum()
        return tp[select].sum() / count if count else math.nan

    everything = np.ones(k, dtype=bool)
    out = {
        "mIoU": _pct(mean_iou(everything)),
        "fwIoU": _pct((iou[gt_present] * pos_gt[gt_present]).sum() / total if total else math.nan),
        "mACC": _pct(acc[gt_present].mean() if gt_present.any() else math.nan),
        "pACC": _pct(pixel_acc(everything)),
        "num_pixels": int(total),
        "per_class_iou": {name: _pct(v) for name, v in zip(class_names, iou)},
        "per_class_acc": {name: _pct(v) for name, v in zip(class_names, acc)},
    }
    if seen_mask is not None:
        seen_mask = np.asarray(seen_mask, dtype=bool)
        seen, unseen = mean_iou(seen_mask), mean_iou(~seen_mask)
        out["mIoU-seen"], out["mIoU-unseen"] = _pct(seen), _pct(unseen)
        out["pACC-seen"], out["pACC-unseen"] = (
            _pct(pixel_acc(seen_mask)),
            _pct(pixel_acc(~seen_mask)),
        )
        harmonic = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else math.nan
        out["hIoU"] = _pct(harmonic)
    return out
