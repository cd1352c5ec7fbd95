"""SemSegEvaluator: hand-computed confusion matrices and the official metric definitions."""

import math

import numpy as np
import pytest

from ovseg.evaluation import SemSegEvaluator, image_confusion, metrics_from_confusion
from ovseg.evaluation.sem_seg import to_sparse

NAMES = ["a", "b", "c"]


def test_hand_computed_confusion_and_metrics():
    gt = np.array([[0, 0, 1], [1, 2, -1]])
    pred = np.array([[0, 1, 1], [1, 1, 2]])
    ev = SemSegEvaluator(NAMES)
    ev.update(pred, gt)
    # conf[pred, gt]; the ignored pixel (pred c) lands in the last column
    expected = np.array([[1, 0, 0, 0], [1, 2, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(ev.confusion, expected)
    m = ev.compute()
    # TP a=1 b=2 c=0; GT a=2 b=2 c=1; Pred a=1 b=4 c=0 (ignored pixel not counted)
    assert m["per_class_iou"] == {"a": 50.0, "b": 50.0, "c": 0.0}
    assert m["per_class_acc"] == {"a": 50.0, "b": 100.0, "c": 0.0}
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["fwIoU"] == pytest.approx(40.0)
    assert m["pACC"] == pytest.approx(60.0)
    assert m["mACC"] == pytest.approx(50.0)
    assert m["num_pixels"] == 5


def test_class_absent_from_gt_follows_detectron2():
    # GT holds only a; b is predicted on one scored pixel, c is nowhere.
    gt = np.array([[0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 1]])
    m = SemSegEvaluator(NAMES).update(pred, gt)
    m = metrics_from_confusion(m, NAMES)
    assert m["per_class_iou"] == {"a": 75.0, "b": None, "c": None}
    # detectron2: sum of IoU over GT classes / number of classes in GT or prediction
    assert m["mIoU"] == pytest.approx(75.0 / 2)
    assert m["mACC"] == pytest.approx(75.0)


def test_accumulates_over_images_and_reset():
    ev = SemSegEvaluator(NAMES)
    ev.update(np.array([[0, 1]]), np.array([[0, 1]]))
    ev.update(np.array([[2, 2]]), np.array([[2, 0]]))
    assert ev.compute()["per_class_iou"] == {"a": 50.0, "b": 100.0, "c": 50.0}
    ev.reset()
    assert ev.confusion.sum() == 0


def test_ground_truth_as_prediction_is_exactly_100():
    rng = np.random.default_rng(0)
    gt = rng.integers(-1, 7, size=(40, 50))
    pred = np.where(gt < 0, 3, gt)
    m = SemSegEvaluator([str(i) for i in range(7)]).update(pred, gt)
    m = metrics_from_confusion(m, [str(i) for i in range(7)])
    assert (m["mIoU"], m["fwIoU"], m["pACC"], m["mACC"]) == (100.0, 100.0, 100.0, 100.0)


def test_seen_unseen_split():
    gt = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 0, 1, 0, 0, 0]])
    ev = SemSegEvaluator(NAMES, seen_classes=["a"])
    ev.update(pred, gt)
    m = ev.compute()
    # IoU a = 2/5, b = 1/2, c = 0
    assert m["mIoU-seen"] == pytest.approx(40.0)
    assert m["mIoU-unseen"] == pytest.approx(25.0)
    assert m["pACC-seen"] == pytest.approx(100.0)
    assert m["pACC-unseen"] == pytest.approx(25.0)
    assert m["hIoU"] == pytest.approx(2 * 40 * 25 / 65)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        SemSegEvaluator(NAMES, seen_classes=["zebra"])


def test_sparse_round_trip():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(-1, 3, (9, 9)), rng.integers(0, 3, (9, 9))
    conf = image_confusion(pred, gt, 3)
    ev = SemSegEvaluator(NAMES)
    ev.add_sparse(*to_sparse(conf))
    np.testing.assert_array_equal(ev.confusion, conf)


def test_all_ignored_gives_null_metrics():
    m = SemSegEvaluator(NAMES).compute()
    assert m["mIoU"] is None and m["pACC"] is None
    assert all(v is None for v in m["per_class_iou"].values())


def test_bad_inputs():
    ev = SemSegEvaluator(NAMES)
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="0..2"):
        ev.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="ground truth"):
        ev.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="confusion matrix"):
        metrics_from_confusion(np.zeros((3, 3)), NAMES)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    m = SemSegEvaluator(NAMES).update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert m.sum() == 2 and not math.isnan(metrics_from_confusion(m, NAMES)["mIoU"])


def test_unlabelled_predictions_count_as_misses():
    gt = np.array([[0, 0, 1, 1, -1]])
    pred = np.array([[0, -1, 1, -1, -1]])
    ev = SemSegEvaluator(NAMES)
    ev.update(pred, gt)
    assert ev.confusion[3].tolist() == [1, 1, 0, 1]  # the "no prediction" row
    m = ev.compute()
    # TP a=1 b=1; GT a=2 b=2; Pred a=1 b=1 -> IoU 1 / (2 + 1 - 1) = 50 each
    assert m["per_class_iou"] == {"a": 50.0, "b": 50.0, "c": None}
    assert m["pACC"] == pytest.approx(50.0) and m["num_pixels"] == 4
    with pytest.raises(ValueError, match="-1"):
        ev.update(np.full((1, 5), -2), gt)
