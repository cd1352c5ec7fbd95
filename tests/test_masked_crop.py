"""Masked crops: hand-computed boxes, fill, normalisation, and resize."""

from __future__ import annotations

import pytest
import torch

from ovseg.data.masked_crops import MEAN_FILL, expand_boxes, mask_boxes, masked_crops
from ovseg.data.transforms import CLIP_MEAN, CLIP_STD


def test_tight_boxes_are_exclusive_on_the_right():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1..2, cols 2..4
    masks[1, 5, 7] = True  # one pixel in the corner
    assert mask_boxes(masks).tolist() == [[2, 1, 5, 3], [7, 5, 8, 6]]


def test_expand_box_truncates_and_clamps():
    boxes = torch.tensor([[2.0, 1.0, 5.0, 3.0]])
    assert expand_boxes(boxes, 1.0, 6, 8).tolist() == [[2, 1, 5, 3]]
    # ratio 3: centre (3.5, 2), half sizes (4.5, 3) -> (-1, -1, 8, 5) -> clamp
    assert expand_boxes(boxes, 3.0, 6, 8).tolist() == [[0, 0, 8, 5]]


def test_crop_values_by_hand():
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 1, 1] = False  # an L shape inside a 2x2 box
    masks[2, 0, 0] = True  # mask 1 stays empty
    out = masked_crops(image, masks, size=2)  # 2x2 box resized to 2x2: identity resize
    assert out.valid.tolist() == [True, False, True]
    assert out.boxes.tolist() == [[1, 1, 3, 3], [0, 0, 1, 1]]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255
    region = image[:, 1:3, 1:3].clone()
    region[:, 0, 0] = torch.tensor(MEAN_FILL)  # outside the mask: the fill value
    expected = (region - mean) / std
    assert torch.allclose(out.crops[0], expected, atol=1e-6)
    assert out.crops[0, :, 0, 0].abs().max() < 1e-6  # mean fill normalises to 0
    assert out.region_masks[0, 0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert out.crops.shape == (2, 3, 2, 2)


def test_resize_is_bicubic_after_normalising_and_mask_nearest():
    image = torch.rand(3, 10, 10) * 255
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 2:7, 3:9] = True
    out = masked_crops(image, masks, size=224)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255
    normed = (image[:, 2:7, 3:9] - mean) / std
    ref = torch.nn.functional.interpolate(normed[None], (224, 224), mode="bicubic")
    assert torch.allclose(out.crops, ref, atol=1e-5)
    assert out.region_masks.min() == 1.0  # the box is all mask


def test_no_valid_masks_and_bad_shapes():
    out = masked_crops(torch.zeros(3, 5, 5), torch.zeros(4, 5, 5, dtype=torch.bool))
    assert out.crops.shape == (0, 3, 224, 224) and out.valid.sum() == 0
    with pytest.raises(ValueError, match="masks must be"):
        masked_crops(torch.zeros(3, 5, 5), torch.zeros(4, 6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="image must be"):
        masked_crops(torch.zeros(5, 5), torch.zeros(4, 5, 5, dtype=torch.bool))
