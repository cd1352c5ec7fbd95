"""``Segmentation.to_json / overlay / save`` on hand-made segmentations."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ovseg.inference.segmentation import Segmentation
from ovseg.inference.visualize import palette


def _hand_made(num_classes: int = 3) -> Segmentation:
    scores = torch.zeros(num_classes, 6, 8)
    scores[0] = 0.1  # background class everywhere
    scores[1, 1:3, 2:6] = 0.9  # a 2x4 rectangle
    scores[num_classes - 1, 4:, :3] = 0.7  # a 2x3 block in the bottom-left corner
    return Segmentation.from_scores([f"class {k}" for k in range(num_classes)], scores)


def test_to_json_rle_decodes_to_the_label_map():
    seg = _hand_made()
    out = json.loads(json.dumps(seg.to_json()))  # survives a JSON round trip
    assert (out["height"], out["width"]) == (6, 8)
    assert out["class_names"] == ["class 0", "class 1", "class 2"]
    by_id = {s["id"]: s for s in out["segments"]}
    assert sorted(by_id) == [0, 1, 2]
    assert by_id[1] == {
        "id": 1,
        "label": "class 1",
        "score": pytest.approx(0.9),
        "area": 8,
        "bbox": [2.0, 1.0, 4.0, 2.0],
        "rle": by_id[1]["rle"],
    }
    # score = mean of sem_seg[k] / sum_j sem_seg[j]: 0.9 / (0.1 + 0.9), 0.7 / (0.1 + 0.7), 1
    assert by_id[2]["area"] == 6 and by_id[2]["score"] == pytest.approx(0.875)
    assert by_id[0]["area"] == 48 - 8 - 6 and by_id[0]["score"] == pytest.approx(1.0)
    assert out["unlabelled"] == {"value": 255, "area": 0, "no_evidence": 0}
    assert out["no_evidence"] is False
    assert out["mode"] == "eval" and "[0, 1]" in out["score_definition"]
    for k, segment in by_id.items():
        rle = dict(segment["rle"], counts=segment["rle"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), seg.label_map == k)


def test_overlay_blends_and_adds_a_legend():
    seg = _hand_made()
    image = np.full((6, 8, 3), 200, dtype=np.uint8)
    plain = seg.overlay(image, alpha=0.5, legend=False)
    assert plain.size == (8, 6)
    colours = palette(3).astype(np.float32)
    expected = np.floor(0.5 * 200 + 0.5 * colours[1] + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(plain)[1, 2], expected)
    assert np.array_equal(np.asarray(seg.overlay(image, alpha=0.0, legend=False)), image)
    with_legend = seg.overlay(image)
    assert with_legend.height == 6 and with_legend.width > 8
    big = Segmentation(seg.class_names, seg.sem_seg, np.kron(seg.label_map, np.ones((40, 40), int)))
    legend = np.asarray(big.overlay(None))[:, 320:]
    for k in range(3):  # each present class has a swatch of its colour in the legend
        assert (legend == palette(3)[k]).all(axis=-1).sum() > 50


def test_palette_is_deterministic_and_distinct():
    a, b = palette(1000), palette(1000)
    assert np.array_equal(a, b)
    assert len({tuple(c) for c in a.tolist()}) == 1000
    assert np.array_equal(palette(10), a[:10])


def test_save_writes_three_files_atomically(tmp_path):
    seg = _hand_made()
    paths = seg.save(tmp_path / "out", "photo", image=np.zeros((6, 8, 3), np.uint8))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "photo.json",
        "photo.png",
        "photo_overlay.png",
    ]
    label = Image.open(paths["label_map"])
    assert label.mode == "P"
    assert np.array_equal(np.asarray(label), seg.label_map)
    assert Image.open(paths["overlay"]).mode == "RGB"
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(seg.to_json()))
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths.values())


def test_label_png_for_more_than_256_classes(tmp_path):
    seg = _hand_made(300)
    paths = seg.save(tmp_path, "many")
    label = np.asarray(Image.open(paths["label_map"]))
    assert label.dtype != np.uint8 and np.array_equal(label.astype(np.int64), seg.label_map)
    assert set(np.unique(label).tolist()) == {0, 1, 299}


def _with_unlabelled(num_classes: int) -> Segmentation:
    """The hand-made segmentation with its right-most two columns unlabelled (12 pixels)."""
    seg = _hand_made(num_classes)
    unlabelled = np.zeros((6, 8), dtype=bool)
    unlabelled[:, 6:] = True
    return Segmentation.from_scores(seg.class_names, seg.sem_seg, unlabelled, mode="demo")


@pytest.mark.parametrize(("num_classes", "value"), [(3, 255), (255, 255), (256, 65535)])
def test_unlabelled_pixels_in_the_png_and_json(tmp_path, num_classes, value):
    seg = _with_unlabelled(num_classes)
    assert (seg.label_map == -1).sum() == 12
    paths = seg.save(tmp_path, "x", image=np.zeros((6, 8, 3), np.uint8))
    png = Image.open(paths["label_map"])
    assert png.mode == ("P" if num_classes <= 255 else "I;16")
    label = np.asarray(png).astype(np.int64)
    assert (label == value).sum() == 12 and np.array_equal(label[:, :6], seg.label_map[:, :6])
    record = json.loads(paths["json"].read_text())
    assert record["unlabelled"] == {"value": value, "area": 12, "no_evidence": 0}
    assert record["mode"] == "demo"
    covered = np.zeros((6, 8), dtype=bool)
    for segment in record["segments"]:
        rle = dict(segment["rle"], counts=segment["rle"]["counts"].encode())
        inside = mask_utils.decode(rle).astype(bool)
        assert not inside[:, 6:].any()
        assert 0.0 <= segment["score"] <= 1.0
        covered |= inside
    assert covered.sum() == 48 - 12


def test_class_255_and_unlabelled_differ_past_255_classes():
    scores = torch.zeros(256, 2, 2)
    scores[255] = 1.0
    seg = Segmentation.from_scores([str(k) for k in range(256)], scores, np.eye(2, dtype=bool))
    label = np.asarray(seg.label_image()).astype(np.int64)
    assert label.tolist() == [[65535, 255], [255, 65535]]


def test_overlay_leaves_unlabelled_pixels_uncoloured():
    from ovseg.inference.visualize import legend_entries

    seg = _with_unlabelled(3)
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    plain = np.asarray(seg.overlay(image, alpha=0.5, legend=False))
    assert np.array_equal(plain[:, 6:], image[:, 6:])
    assert not np.array_equal(plain[:, :6], image[:, :6])
    entries = legend_entries(seg.label_map, seg.class_names)
    assert entries[-1][0] == "unlabelled" and entries[-1][2] == pytest.approx(12 / 48)
    assert [e[0] for e in legend_entries(_hand_made().label_map, seg.class_names)] == [
        "class 0",
        "class 1",
        "class 2",
    ]
    assert np.asarray(seg.overlay(None, legend=False))[:, 6:].max() == 0  # black colour map


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    seg = _hand_made()

    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Segmentation, "to_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        seg.save(tmp_path, "x")
    # the three files are encoded before any is written: nothing, and no temp file, is left
    assert sorted(p.name for p in tmp_path.iterdir()) == []
