"""``--refine sam``: SegmentAnyRGBD's majority rule, by hand and through the Predictor."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

import ovseg
from ovseg.inference.refine import PackedMasks, majority_refine
from tests.conftest import DATA, require


def _mask(shape, rows, cols) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def test_majority_rule_by_hand():
    labels = np.array(
        [
            [0, 0, 1, 1, 2, 2],
            [0, 0, 1, 1, 2, 2],
            [3, 3, 3, 1, 2, -1],
            [3, 3, 3, 1, -1, -1],
        ]
    )
    shape = labels.shape
    left = _mask(shape, slice(0, 4), slice(0, 3))  # 0 x4, 1 x2, 3 x6 -> 3
    out = majority_refine(labels, [left])
    assert (out[:, :3] == 3).all() and np.array_equal(out[:, 3:], labels[:, 3:])
    # sequential: the second mask sees the first one's relabelling. Columns 2-3: after
    # `left`, column 2 is all 3 and column 3 is [1, 1, 1, 1] -> a tie 3 x4 / 1 x4 -> 1 (smaller)
    middle = _mask(shape, slice(0, 4), slice(2, 4))
    out = majority_refine(labels, [left, middle])
    assert (out[:, 2:4] == 1).all() and (out[:, :2] == 3).all()
    # on the original map the same middle mask has 1 x6, 3 x2 -> 1 too, but a mask over
    # columns 1-2 shows the order matters: original 0 x2, 1 x2, 3 x4 -> 3; after `middle`
    # first, column 2 is 1: 0 x2, 1 x4, 3 x2 -> 1
    narrow = _mask(shape, slice(0, 4), slice(1, 3))
    assert (majority_refine(labels, [narrow])[:, 1:3] == 3).all()
    assert (majority_refine(labels, [middle, narrow])[:, 1:3] == 1).all()
    # unlabelled (-1) votes like a label and wins ties (the smallest value)
    corner = _mask(shape, slice(2, 4), slice(4, 6))  # 2 x1, -1 x3 -> -1
    assert (majority_refine(labels, [corner])[2:, 4:] == -1).all()
    tie = _mask(shape, slice(1, 3), slice(5, 6))  # 2 x1, -1 x1 -> -1
    assert (majority_refine(labels, [tie])[1:3, 5] == -1).all()
    # an empty mask changes nothing; the input is not modified
    assert np.array_equal(majority_refine(labels, [np.zeros(shape, bool)]), labels)
    assert labels[0, 2] == 1
    with pytest.raises(ValueError, match="mask shape"):
        majority_refine(labels, [np.zeros((2, 2), bool)])


def test_packed_masks_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 13)) > 0.5 for _ in range(3)]
    packed = PackedMasks(masks, (7, 13))
    assert len(packed) == 3
    assert all(np.array_equal(a, b) for a, b in zip(packed, masks))
    assert sum(p.nbytes for p in packed.packed) < sum(m.nbytes for m in masks) / 7


def _segment_any_rgbd(pred: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """SegmentAnyRGBD's loop as its run_on_image_sam states it (np.unique, argmax of the
    counts, written back in place, masks in SAM's order), independently of ovseg."""
    out = pred.copy()
    for m in masks:
        values, counts = np.unique(out[m], return_counts=True)
        out[m] = values[np.argmax(counts)]
    return out


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    path = require(DATA / "camvid" / "val" / "images")
    files = sorted(path.glob("*.jpg"))
    if not files:
        pytest.skip(f"no photos in {path}")
    return np.array(Image.open(files[0]).convert("RGB"))[::3, ::3]


class StubMasks:
    """A refinement generator with known masks on the photo (what SAM would return)."""

    def __init__(self, masks):
        self.masks = masks
        self.seen = []

    def mask_records(self, image):
        self.seen.append(tuple(image.shape))
        return [{"segmentation": m} for m in self.masks]


def test_predictor_refines_every_prediction(tiny_model, photo):
    """Known masks: a block around the demo prediction's unlabelled pixels (so it is mixed)
    and then the left half; every predict() of the image is refined, the scores are not."""
    from ovseg.inference.refine import SamRefiner

    names = ["road", "sky", "building", "tree", "car"]
    plain = ovseg.Predictor(tiny_model)
    plain.set_image(photo)
    base = plain.predict(names, mode="demo")
    ys, xs = np.nonzero(base.label_map < 0)
    assert len(ys), "the demo prediction leaves some pixels unlabelled on this photo"
    h, w = base.label_map.shape
    block = np.zeros((h, w), bool)
    block[max(ys[0] - 3, 0) : ys[0] + 4, max(xs[0] - 3, 0) : xs[0] + 4] = True
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    stub = StubMasks([block, left])
    predictor = ovseg.Predictor(tiny_model, refiner=SamRefiner(stub))
    predictor.set_image(photo)
    assert stub.seen == [(3, h, w)]  # SAM sees the photo at its own size
    for mode in ("demo", "eval"):
        seg = predictor.predict(names, mode=mode)
        unrefined = plain.predict(names, mode=mode)
        expected = _segment_any_rgbd(unrefined.label_map, [block, left])
        assert np.array_equal(seg.label_map, expected)
        assert np.array_equal(seg.sem_seg, unrefined.sem_seg)
        if mode == "demo":
            assert not np.array_equal(seg.label_map, unrefined.label_map)


def test_predictor_refines_with_the_photos_sam_masks(tiny_model, photo):
    pytest.importorskip("segment_anything")
    pytest.importorskip("cv2")
    from ovseg.inference.spec import ProposalSource

    names = ["road", "sky", "building", "tree", "car"]
    source = ProposalSource("sam", {"model_type": "test_tiny", "points_per_side": 4})
    refiner = source.refiner(tiny_model)
    assert refiner.generator.amg.min_mask_region_area == 100  # SegmentAnyRGBD's clean-up
    assert refiner.generator.long_side is None  # SAM runs on the photo at its own size
    predictor = ovseg.Predictor(tiny_model, refiner=refiner)
    predictor.set_image(photo)
    refined = predictor.predict(names, mode="demo")
    plain = ovseg.Predictor(tiny_model)
    plain.set_image(photo)
    base = plain.predict(names, mode="demo")
    masks = list(predictor.refine_masks)
    assert len(masks) >= 1 and masks[0].shape == photo.shape[:2]
    # the masks are SAM's on the photo itself, in SAM's order
    import torch

    records = refiner.generator.mask_records(torch.from_numpy(photo).permute(2, 0, 1))
    assert all(np.array_equal(r["segmentation"], m) for r, m in zip(records, masks))
    assert np.array_equal(refined.label_map, _segment_any_rgbd(base.label_map, masks))


def test_segment_refine_sam_command(tmp_path, photo, capsys, monkeypatch):
    pytest.importorskip("segment_anything")
    pytest.importorskip("cv2")
    from ovseg.cli import main

    Image.fromarray(photo).save(tmp_path / "street.png")
    argv = ["segment", str(tmp_path / "street.png"), "--classes", "road, sky, car"]
    argv += ["--model", "ovseg-test-tiny", "--out", str(tmp_path / "out")]
    refine = ["--refine", "sam", "--sam-model-type", "test_tiny", "--sam-points-per-side", "4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, *refine]) == 0
    record = json.loads((tmp_path / "out" / "street.json").read_text())
    assert record["options"]["refine"]["name"] == "sam"
    assert record["options"]["refine"]["options"]["points_per_side"] == 4
    # without --refine the SAM flags still belong to --proposals sam only
    assert main([*argv, "--sam-points-per-side", "4"]) == 2
    assert "--sam-points-per-side does not apply to --proposals maskformer" in (
        capsys.readouterr().err
    )
    # SegmentAnyRGBD's ViT-H by default: the download, named in the error when absent
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    assert main([*argv, "--refine", "sam"]) == 2
    assert "ovseg download sam-vit-h" in capsys.readouterr().err
