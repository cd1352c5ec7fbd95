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
