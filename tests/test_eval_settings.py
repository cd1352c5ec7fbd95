"""``ovseg eval`` applies the official per-dataset settings and records every setting used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.cli import main
from ovseg.evaluation.settings import PUBLISHED_ENSEMBLE_WEIGHTS, eval_ensemble_weight


def stand_in_pc59(root: Path) -> Path:
    """One image in the prepared Pascal Context 59 layout (``ovseg prepare pascal-context``)."""
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(root / "JPEGImages/2008_000001.jpg")
    label = np.zeros((24, 32), np.uint8)
    label[12:] = 5
    (root / "annotations_detectron2/pc59_val").mkdir(parents=True)
    Image.fromarray(label).save(root / "annotations_detectron2/pc59_val/2008_000001.png")
    return root


def stand_in_voc20(root: Path) -> Path:
    """One image in the original VOC2012 layout (palette PNG, list file)."""
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(root / "JPEGImages/2007_000033.jpg")
    label = np.zeros((24, 32), np.uint8)
    label[12:] = 15
    pal = Image.fromarray(label, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 750)
    (root / "SegmentationClass").mkdir()
    pal.save(root / "SegmentationClass/2007_000033.png")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    return root


def run_eval(tmp_path, dataset, root, *extra) -> dict:
    out = tmp_path / f"{dataset}.json"
    argv = ["eval", "--dataset", dataset, "--root", str(root), "--model", "ovseg-test-tiny"]
    assert main([*argv, "--quiet", "--json", str(out), *map(str, extra)]) == 0
    return json.loads(out.read_text())


def cache_dirs(tmp_path) -> int:
    return len(list((tmp_path / "home" / "eval-cache").iterdir()))


def test_published_weights():
    assert PUBLISHED_ENSEMBLE_WEIGHTS == {
        "pascal-context-59": 0.6,
        "pascal-context-459": 0.6,
        "pascal-voc-20": 0.45,
    }
    assert eval_ensemble_weight("ade20k-150", 0.7, None) == 0.7  # ADE keeps the config's
    assert eval_ensemble_weight("pascal-voc-20", 0.7, None) == 0.45
    assert eval_ensemble_weight("pascal-voc-20", 0.7, 0.3) == 0.3  # the user's wins


def test_eval_json_records_the_settings(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    pc = stand_in_pc59(tmp_path / "VOC2010")
    voc = stand_in_voc20(tmp_path / "VOC2012")
    common = {
        "mode": "eval",
        "templates": "vild",
        "clip_only": False,
        "clip_ensemble": True,
        "dtype": "fp32",
        "text_dtype": "fp32",
        "oracle": None,
    }
    first = run_eval(tmp_path, "pascal-context-59", pc)
    assert first["settings"] == {
        **common,
        "ensemble_weight": 0.6,
        "mask_threshold": 0.4,
        "tta": None,
        "proposals": "maskformer",
        "min_size_test": 320,
        "max_size_test": 1280,
    }
    assert first["ensemble_weight"] == 0.6 and first["mask_threshold"] == 0.4
    assert cache_dirs(tmp_path) == 1
    # the cache key holds the effective values: an explicit 0.6 is the same run ...
    assert run_eval(tmp_path, "pascal-context-59", pc, "--ensemble-weight", 0.6) == first
    assert cache_dirs(tmp_path) == 1
    # ... and another lambda is another run
    other = run_eval(tmp_path, "pascal-context-59", pc, "--ensemble-weight", 0.7)
    assert other["settings"]["ensemble_weight"] == 0.7 and cache_dirs(tmp_path) == 2
    voc_run = run_eval(tmp_path, "pascal-voc-20", voc, "--tta-sizes", "64", "--no-tta-flip")
    assert voc_run["settings"]["ensemble_weight"] == 0.45
    assert voc_run["settings"]["tta"] == {
        "min_sizes": [64],
        "max_size": 3584,
        "flip": False,
        "sliding_window": False,
        "tile_size": 224,
        "overlap": 2 / 3,
    }
    assert cache_dirs(tmp_path) == 3
