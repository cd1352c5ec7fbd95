"""detectron2's ResizeShortestEdge arithmetic and padding, by hand."""

from __future__ import annotations

import numpy as np
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
    """official-demo: the official predictor's ResizeShortestEdge([288, 288], 400), 240x320 in."""
    from safetensors.torch import load_file

    from tests.conftest import FIXTURES, require

    folder = require(FIXTURES / "official-demo")
    out = load_file(str(folder / "outputs.safetensors"))
    image = out["input_image_uint8_HWC_RGB"].numpy()
    resized = resize_shortest_edge(image, 288, 400)
    assert resized.shape == (288, 384, 3)
    assert np.array_equal(resized.transpose(2, 0, 1), out["model_input_image_uint8"].numpy())
