"""detectron2's ResizeShortestEdge arithmetic and padding, by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovseg.data.transforms import normalize_and_pad, resize_shortest_edge, shortest_edge_size


def test_shortest_edge_sizes():
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)  # 853.33 -> 853
    assert shortest_edge_size(333, 500, 640, 2560) == (640, 961)  # 960.96 -> 961
    assert shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)  # long side capped
    assert shortest_edge_size(640, 640, 640, 2560) == (640, 640)


def test_resize_uses_pil_bilinear_and_keeps_uint8():
    image = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    out = resize_shortest_edge(image, 60, 2560)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8


def test_normalize_and_pad():
    image = torch.full((3, 5, 7), 10.0)
    x = normalize_and_pad(image, torch.tensor([10.0, 0, 0]), torch.tensor([1.0, 2, 5]), 4)
    assert x.shape == (1, 3, 8, 8)
    assert x[0, 0, :5, :7].abs().max() == 0 and x[0, 1, 0, 0] == 5 and x[0, 2, 0, 0] == 2
    assert x[0, :, 5:].abs().max() == 0 and x[0, :, :, 7:].abs().max() == 0


def test_resize_values_against_pil_and_interpolate():
    """The resized pixels: PIL's BILINEAR (what detectron2 calls), and within one grey level of
    an independent float bilinear resize (``F.interpolate``, half-pixel centres; PIL filters
    with antialiasing when shrinking, so ``antialias=True`` there)."""
    import torch.nn.functional as F
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (150, 226, 3), dtype=np.uint8)
    for short, antialias in ((192, False), (100, True)):
        out = resize_shortest_edge(image, short, 320)
        h, w = shortest_edge_size(150, 226, short, 320)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8 and h == short
        pil = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        assert np.array_equal(out, pil)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].double()
        ref = F.interpolate(
            x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias
        )
        assert np.abs(out.astype(np.float64) - ref[0].permute(1, 2, 0).numpy()).max() < 1.0
    assert resize_shortest_edge(image, 150, 320) is image  # already at size: untouched


def test_resize_equals_the_official_demo_model_input():
    """official-demo: the official predictor's ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)
    of its config (288, 400 for 240x320 in)."""
    from safetensors.torch import load_file

    from ovseg.weights.official_yaml import read_official_yaml
    from tests.conftest import FIXTURES, require

    folder = require(FIXTURES / "official-demo")
    out = load_file(str(folder / "outputs.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    test_input = read_official_yaml(folder / "config.yaml")["INPUT"]
    image = out["input_image_uint8_HWC_RGB"].numpy()
    assert list(image.shape[:2]) == meta["orig_hw"]
    resized = resize_shortest_edge(image, test_input["MIN_SIZE_TEST"], test_input["MAX_SIZE_TEST"])
    for run in meta["vocabularies"].values():
        assert list(resized.shape[:2]) == run["model_input_hw"]
    assert np.array_equal(resized.transpose(2, 0, 1), out["model_input_image_uint8"].numpy())


def test_longest_side_size_truncates_as_the_space():
    from ovseg.data.transforms import longest_side_size

    # The space: width > height -> width 1280, height int((1280 / width) * height).
    assert longest_side_size(640, 971, 1280) == (843, 1280)  # 843.69; rounding would give 844
    assert longest_side_size(971, 640, 1280) == (1280, 843)
    assert longest_side_size(480, 640, 1280) == (960, 1280)
    assert longest_side_size(700, 700, 1280) == (1280, 1280)
    # (1280 / 77) * 77 is 1279.9999999999998 in doubles: the space's int() gives 1279.
    assert (1280 / 77) * 77 < 1280
    assert longest_side_size(77, 77, 1280) == (1280, 1279)
    assert longest_side_size(1, 5000, 1280) == (1, 1280)  # 0.256 -> kept at one pixel


def test_nearest_rule_equals_cv2_inter_nearest():
    """cv2 itself is the reference: label maps resized with INTER_NEAREST, many size pairs
    (shrinking and enlarging, the sizes SAM working maps have), several dtypes."""
    cv2 = pytest.importorskip("cv2")
    from ovseg.data.transforms import nearest_indices, resize_nearest

    rng = np.random.default_rng(0)
    sizes = list(range(1, 48)) + [97, 333, 427, 480, 640, 843, 853, 960, 1279, 1280, 3024]
    for src in sizes:
        column = rng.integers(0, 150, (src, 1), dtype=np.uint8)
        for dst in sizes:
            expected = cv2.resize(column, (1, dst), interpolation=cv2.INTER_NEAREST)
            got = resize_nearest(column, (dst, 1))
            assert np.array_equal(got, expected.reshape(dst, 1)), (src, dst)
    # 2-D, int32 labels with 255 for unlabelled, and the torch path
    labels = rng.integers(0, 6, (853, 1280)).astype(np.int32)
    labels[labels == 5] = 255
    for size in ((640, 959), (1920, 1080), (427, 640), (3024, 4032)):
        expected = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(resize_nearest(labels, size), expected)
        assert np.array_equal(resize_nearest(torch.from_numpy(labels), size).numpy(), expected)
    # The rule is not floor(x * src / dst): the double 1 / (dst / src) differs at some sizes.
    differs = [
        (s, d)
        for s in range(1, 200)
        for d in range(1, 200)
        if not np.array_equal(nearest_indices(s, d), np.minimum(np.arange(d) * s // d, s - 1))
    ]
    assert differs, "expected size pairs where the integer rule and cv2's rule differ"
    s, d = differs[0]
    column = np.arange(s, dtype=np.uint8).reshape(s, 1)
    expected = cv2.resize(column, (1, d), interpolation=cv2.INTER_NEAREST).ravel()
    assert np.array_equal(nearest_indices(s, d), expected)


def test_longest_side_resize_against_cv2_bilinear():
    """cv2.resize's default (INTER_LINEAR), as the space calls it: equal except in the rows
    whose vertical taps are clamped at the image's edges when enlarging (one grey level)."""
    cv2 = pytest.importorskip("cv2")
    from ovseg.data.transforms import longest_side_size, resize_longest_side

    rng = np.random.default_rng(1)
    for shape in ((480, 640), (640, 971), (1500, 1000), (2000, 3000), (700, 700), (37, 53)):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        h, w = longest_side_size(*shape, 1280)
        expected = cv2.resize(image, (w, h))
        got = resize_longest_side(image, 1280)
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1, shape
        # rows whose taps are not clamped: exactly cv2's
        scale = shape[0] / h
        centre = (np.arange(h) + 0.5) * scale - 0.5
        inner = (centre >= 0) & (np.floor(centre) < shape[0] - 1)
        assert diff[inner].max() == 0, shape
        if h < shape[0]:  # shrinking: every pixel equal (no antialiasing, unlike PIL)
            assert diff.max() == 0, shape
