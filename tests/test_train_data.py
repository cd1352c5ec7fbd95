"""Training data: the official augmentation on real images, the mapper's padding against the
official fixture, MaskFormer targets, determinism."""

import json

import numpy as np
import pytest
import torch

from ovseg.train.augment import (
    OfficialAugmentation,
    color_aug_ssd,
    crop_window,
    hsv_to_rgb,
    pad_pair,
    rgb_to_hsv,
    shortest_edge_size,
)
from ovseg.train.recipes import SWIN_MIN_SIZES, get_recipe
from ovseg.train.semseg_data import IGNORE, SemSegTrainSet, label_targets, open_source
from tests.conftest import DATA, FIXTURES, require
from tests.train_fixtures import semseg_folder


def swin_augmentation(**kw):
    r = get_recipe("swinB-coco-stuff")
    args = dict(
        min_sizes=r["min_size_train"], max_size=r["max_size_train"], crop=r["crop"],
        single_category_max_area=r["single_category_max_area"], color_aug=r["color_aug_ssd"],
        flip=r["flip"], pad_to=r["pad_to"],
    )  # fmt: skip
    return OfficialAugmentation(**(args | kw))


def test_label_targets_by_hand():
    label = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [IGNORE] * 4, [IGNORE] * 4])
    t = label_targets(label)
    assert t["labels"].tolist() == [0, 2]
    assert t["masks"].tolist() == [
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    ]


def test_shortest_edge_size_by_hand():
    assert shortest_edge_size(360, 480, 320, 2560) == (320, 427)  # 480 * 320/360 = 426.67
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert shortest_edge_size(480, 360, 1280, 2560) == (1707, 1280)


def test_mapper_padding_equals_the_official_fixture():
    """No random step: padding alone reproduces the official mapper's image, sem_seg,
    gt_classes and gt_masks (fixtures/official-criterion/mapper.*)."""
    from PIL import Image
    from safetensors.torch import load_file

    folder = require(FIXTURES / "official-criterion")
    tensors = load_file(str(folder / "criterion.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    side, other = meta["padded_image_hw"]  # the mapper pads to exactly SIZE_DIVISIBILITY
    assert side == other
    for i in range(meta["batch_B"]):
        image = np.array(Image.open(folder / f"image_{i}.png").convert("RGB"))
        raw = np.array(Image.open(folder / f"label_{i}.png")).astype(np.int64)
        assert list(raw.shape) == meta["label_map_sizes_before_padding"][i]
        label = np.where(raw == 255, IGNORE, raw)
        image, label, pad = pad_pair(image, label, side)
        want_image = tensors[f"mapper.{i}.image_uint8_CHW"]
        assert torch.equal(torch.from_numpy(image).permute(2, 0, 1), want_image)
        sem_seg = np.where(label == IGNORE, 255, label)
        assert torch.equal(torch.from_numpy(sem_seg), tensors[f"mapper.{i}.sem_seg"])
        targets = label_targets(torch.from_numpy(label))
        assert torch.equal(targets["labels"], tensors[f"mapper.{i}.gt_classes"])
        assert targets["labels"].tolist() == meta["classes_per_image"][i]
        assert torch.equal(targets["masks"].to(torch.uint8), tensors[f"mapper.{i}.gt_masks"])


class CocoBoxes:
    """coco-mini images (real COCO photos; the folder has no stuff maps) with a label made of
    their instance boxes, class = index of the category id."""

    def __init__(self, root):
        import json

        from ovseg.data.image import read_image

        self.read_image, self.root = read_image, root
        data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
        ids = sorted(c["id"] for c in data["categories"])
        self.class_names = [str(i) for i in ids]
        self.images = sorted(data["images"], key=lambda im: im["file_name"])[:3]
        self.boxes = {im["id"]: [] for im in self.images}
        for a in data["annotations"]:
            if a["image_id"] in self.boxes:
                self.boxes[a["image_id"]].append((ids.index(a["category_id"]), a["bbox"]))

    def load(self, i):
        meta = self.images[i]
        image = self.read_image(self.root / "train2017" / meta["file_name"])
        label = np.full(image.shape[:2], IGNORE, np.int64)
        for cls, (x, y, w, h) in self.boxes[meta["id"]]:
            label[int(y) : int(y + h), int(x) : int(x + w)] = cls
        return image, label


@pytest.mark.parametrize("name", ["camvid", "coco-mini"])
def test_official_augmentation_on_real_images(name):
    root = require(DATA / name)
    source = open_source("camvid", root, "train") if name == "camvid" else CocoBoxes(root)
    aug = swin_augmentation()
    for i in range(3):
        image, label = source.load(i)
        rng = np.random.default_rng([0, 0, i])
        out_image, out_label, pad = aug(image, label, rng)
        assert out_image.shape == (640, 640, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (640, 640)
        # the resized size is one of the official choices (or capped by the long side)
        h, w = (~pad).sum(0).max(), (~pad).sum(1).max()
        rng = np.random.default_rng([0, 0, i])
        short = SWIN_MIN_SIZES[int(rng.integers(len(SWIN_MIN_SIZES)))]
        nh, nw = shortest_edge_size(*label.shape, short, 2560)
        assert min(nh, nw) == short
        assert (h, w) == (min(nh, 640), min(nw, 640))
        # the padding, before normalisation: 128 image, ignore label
        assert (out_image[pad] == 128).all() and (out_label[pad] == IGNORE).all()
        assert set(np.unique(out_label[~pad])) <= set(range(len(source.class_names))) | {IGNORE}


def test_area_constraint_holds_when_satisfiable():
    source = open_source("camvid", require(DATA / "camvid"), "train")
    _, label = source.load(0)
    satisfied = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y0, x0, ch, cw = crop_window(label, 200, 0.5, rng)
        window = label[y0 : y0 + ch, x0 : x0 + cw]
        _, counts = np.unique(window[window != IGNORE], return_counts=True)
        satisfied += len(counts) > 1 and counts.max() < 0.5 * counts.sum()
    assert satisfied >= 18  # ten tries almost always find a mixed 200 px window
    # an unsatisfiable limit keeps the last of exactly 10 draws (2 integers each)
    one_class = np.zeros((50, 50), np.int64)
    rng, twin = np.random.default_rng(1), np.random.default_rng(1)
    got = crop_window(one_class, 20, 0.5, rng)
    for _ in range(10):
        want = (int(twin.integers(0, 31)), int(twin.integers(0, 31)), 20, 20)
    assert got == want


def test_color_aug_keeps_uint8_and_changes_colours():
    source = open_source("camvid", require(DATA / "camvid"), "train")
    image, _ = source.load(0)
    changed = 0
    for seed in range(8):
        out = color_aug_ssd(image.copy(), np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        changed += not np.array_equal(out, image)
    assert changed >= 6
    # HSV round trip (OpenCV's 8-bit ranges) is within rounding of the identity
    back = hsv_to_rgb(rgb_to_hsv(image))
    assert np.abs(back.astype(int) - image.astype(int)).max() <= 3
    # pure colours by hand: red H 0, green H 60, blue H 120 (degrees / 2), S = V = 255
    pure = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert rgb_to_hsv(pure).tolist() == [[[0, 255, 255], [60, 255, 255], [120, 255, 255]]]
    assert np.array_equal(hsv_to_rgb(rgb_to_hsv(pure)), pure)


def test_flip_flips_image_and_label_together():
    source = open_source("camvid", require(DATA / "camvid"), "train")
    image, label = source.load(0)
    aug = swin_augmentation(min_sizes=[360], crop=4000, pad_to=480, color_aug=False)
    flips = 0
    for seed in range(6):
        out_image, out_label, pad = aug(image, label, np.random.default_rng(seed))
        h, w = label.shape
        if np.array_equal(out_label[:h, :w], label[:, ::-1]):
            assert np.array_equal(out_image[:h, :w], image[:, ::-1])
            flips += 1
        else:
            assert np.array_equal(out_label[:h, :w], label)
            assert np.array_equal(out_image[:h, :w], image)
    assert 0 < flips < 6


def test_augmentation_depends_on_seed_epoch_index_only(tmp_path):
    source = open_source("folder", semseg_folder(tmp_path / "d"), "train")
    ds = SemSegTrainSet(source, swin_augmentation(min_sizes=[48, 64], crop=48, pad_to=48), seed=3)
    a = ds[1]
    ds.set_epoch(1)
    b = ds[1]
    ds.set_epoch(0)
    again = ds[1]
    assert torch.equal(a["image"], again["image"]) and torch.equal(a["label"], again["label"])
    assert not torch.equal(a["image"], b["image"])
    assert set(a["label"].unique().tolist()) <= {IGNORE, 0, 1, 2}
