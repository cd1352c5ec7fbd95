"""Any image that decodes is segmented: 1xN, Nx1 and extreme aspect ratios, in
``set_image``, TTA, the generators and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import ovseg
from ovseg.data.transforms import shortest_edge_size
from ovseg.inference.options import InferenceOptions

EDGES = [(1, 1), (1, 3000), (3000, 1), (2, 5000), (1, 40000)]


def test_the_resize_never_gives_an_empty_side():
    # detectron2's rule, by hand: 1 x 3000 at (320, 1280) (the tiny variant's sizes) ->
    # 320 x 960000 -> long side 1280: 320 * 1280 / 960000 = 0.427 -> int(0.927) = 0, which
    # PIL cannot resize to; kept at 1. At (640, 2560): 0.853 -> int(1.353) = 1 already.
    assert shortest_edge_size(1, 3000, 320, 1280) == (1, 1280)
    assert shortest_edge_size(1, 3000, 640, 2560) == (1, 2560)
    assert shortest_edge_size(40000, 1, 640, 2560) == (2560, 1)  # 0.04 -> 0, kept at 1
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)  # unchanged elsewhere


@pytest.mark.parametrize("shape", EDGES)
def test_set_image_takes_extreme_shapes(tiny_model, shape):
    predictor = ovseg.Predictor(tiny_model)
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    predictor.set_image(image)
    for mode in ("demo", "eval"):
        seg = predictor.predict(["sky", "tree"], mode=mode)
        assert seg.label_map.shape == shape and seg.sem_seg.shape[1:] == shape


def test_tta_views_of_extreme_shapes(tiny_model):
    options = InferenceOptions(tta=True, tta_min_sizes=(16,), tta_flip=False, tta_max_size=640)
    predictor = ovseg.Predictor(tiny_model, options=options)
    for shape in [(1, 3000), (3000, 1)]:
        predictor.set_image(np.full((*shape, 3), 90, np.uint8))
        assert predictor.predict(["sky", "tree"], mode="eval").label_map.shape == shape


@pytest.mark.parametrize("generator", ["superpixels", "sam"])
def test_generators_take_extreme_shapes(tiny_model, generator):
    from ovseg.proposals import build_generator

    options = {"model_type": "test_tiny", "points_per_side": 4} if generator == "sam" else {}
    predictor = ovseg.Predictor(tiny_model, build_generator(generator, tiny_model, **options))
    for shape in [(1, 3000), (3000, 1), (1, 1)]:
        predictor.set_image(np.full((*shape, 3), 128, np.uint8))
        assert predictor.predict(["sky", "tree"]).label_map.shape == shape


def test_segment_command_takes_a_one_pixel_high_image(tmp_path, capsys):
    from ovseg.cli import main

    Image.fromarray(np.full((1, 3000, 3), 200, np.uint8)).save(tmp_path / "line.png")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "line.png"), "--classes", "sky, Sky, tree"]
    assert main(argv + ["--model", "ovseg-test-tiny", "--out", str(out)]) == 0
    record = json.loads((out / "line.json").read_text())
    assert (record["height"], record["width"]) == (1, 3000)
    assert record["vocabulary"] == ["sky", "tree"]
    assert "merged 1 repeated class name(s)" in capsys.readouterr().err
