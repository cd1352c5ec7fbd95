"""GT pairs from a semantic-segmentation folder, and held-out crop accuracy."""

import numpy as np
from PIL import Image

from ovseg.train.pairs import PairDataset
from ovseg.train.semseg_data import open_source
from ovseg.train.semseg_pairs import crop_accuracy, semseg_pairs
from tests.train_fixtures import make_tiny_model, semseg_folder


def test_one_pair_per_image_and_class_present(tmp_path):
    data = semseg_folder(tmp_path / "data", n_train=3)
    model = make_tiny_model()
    stats = semseg_pairs(model, open_source("folder", data, "train"), tmp_path / "pairs",
                         min_pixels=400, progress=False)  # fmt: skip
    expected = []
    names = ["sky", "road", "car"]
    for i in range(3):
        label = np.array(Image.open(data / "train" / "labels" / f"{i:03d}.png"))
        for c in range(3):
            if (label == c).sum() >= 400:
                expected.append((i, names[c]))
    ds = PairDataset(tmp_path / "pairs", vocabulary=names)
    got = [(r["image_id"], r["noun"]) for r in ds.records]
    assert sorted(got) == sorted(expected) and stats["pairs"] == len(expected)
    # the car is a square block: its crop (the region's box) is all foreground
    car = next(i for i, r in enumerate(ds.records) if r["noun"] == "car")
    assert ds[car]["mask"].mean() > 0.9
    scores = crop_accuracy(model, tmp_path / "pairs", names, use_prompts=True)
    assert set(scores) == {"accuracy_vild", "accuracy_raw"}
    # percentages of len(expected) crops
    for value in scores.values():
        count = value * len(expected) / 100
        assert 0 <= value <= 100 and abs(count - round(count)) < 1e-3
