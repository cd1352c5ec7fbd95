"""Training data: MaskFormer targets from labels, augmentation determinism, real CamVid."""

import torch

from ovseg.train.semseg_data import IGNORE, SemSegTrainSet, label_targets, open_source
from tests.conftest import DATA, require
from tests.train_fixtures import semseg_folder


def test_label_targets_by_hand():
    label = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [IGNORE] * 4, [IGNORE] * 4])
    t = label_targets(label)
    assert t["labels"].tolist() == [0, 2]
    assert t["masks"].tolist() == [
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    ]


def test_augmentation_depends_on_seed_epoch_index_only(tmp_path):
    source = open_source("folder", semseg_folder(tmp_path / "d"), "train")
    ds = SemSegTrainSet(source, crop=48, short_side=64, seed=3)
    a = ds[1]
    ds.set_epoch(1)
    b = ds[1]
    ds.set_epoch(0)
    again = ds[1]
    assert torch.equal(a["image"], again["image"]) and torch.equal(a["label"], again["label"])
    assert not torch.equal(a["image"], b["image"])
    assert set(a["label"].unique().tolist()) <= {IGNORE, 0, 1, 2}


def test_real_camvid_through_the_evaluation_reader():
    root = require(DATA / "camvid")
    source = open_source("camvid", root, "train")
    assert len(source) == 367 and source.class_names[0] == "sky"
    item = SemSegTrainSet(source, crop=96, short_side=96)[0]
    assert item["image"].shape == (3, 96, 96) and item["label"].shape == (96, 96)
    targets = label_targets(item["label"])
    assert targets["masks"].shape[1:] == (96, 96)
    assert ((targets["labels"] >= 0) & (targets["labels"] < 11)).all()
