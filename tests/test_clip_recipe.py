"""The official CLIP-adaptation recipe: loss, augmentation, optimizer groups, recipes."""

import numpy as np
import torch
from PIL import Image

from ovseg.train.pairs import CropAugment, PairDataset
from tests.train_fixtures import pairs_folder

# ---- augmentation --------------------------------------------------------------------------

OFFICIAL_FILL = (124, 116, 103)


def _crop_with_square(background):
    crop = np.empty((224, 224, 3), np.uint8)
    crop[:] = background
    mask = np.zeros((224, 224), bool)
    mask[40:150, 60:200] = True
    rng = np.random.default_rng(1)
    crop[mask] = rng.integers(0, 255, (int(mask.sum()), 3))
    return crop, mask


def _pil_resized_crop(array, box, resample):
    top, left, h, w = box
    return np.array(
        Image.fromarray(array).crop((left, top, left + w, top + h)).resize((224, 224), resample)
    )


def test_official_augmentation_is_random_resized_crop_and_maskget():
    augment = CropAugment()
    crop, mask = _crop_with_square(OFFICIAL_FILL)
    box = augment.box(224, 224, seed=3)
    image, region = augment.apply(crop, mask, box, 224)
    # the official pipeline, by hand: PIL bicubic crop+resize, then Maskget (pixels != fill)
    expected = _pil_resized_crop(crop, box, Image.BICUBIC)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(region, (expected != np.array(OFFICIAL_FILL)).any(-1))
    # the bicubic kernel grows the region at its border: more than the nearest-neighbour mask
    nearest = _pil_resized_crop(mask.astype(np.uint8) * 255, box, Image.NEAREST) > 0
    assert region.sum() > nearest.sum() and (region | nearest).sum() == region.sum()


def test_official_mask_rule_does_not_depend_on_our_fill():
    # our crops are filled with CLIP's mean (123, 117, 104): the region must be the one the
    # official data (filled with (124, 116, 103)) would give, and the image keeps our fill
    augment = CropAugment()
    ours, mask = _crop_with_square((123, 117, 104))
    official, _ = _crop_with_square(OFFICIAL_FILL)
    box = augment.box(224, 224, seed=11)
    image, region = augment.apply(ours, mask, box, 224)
    _, official_region = augment.apply(official, mask, box, 224)
    np.testing.assert_array_equal(region, official_region)
    np.testing.assert_array_equal(image, _pil_resized_crop(ours, box, Image.BICUBIC))


def test_nearest_mask_rule_and_box_statistics():
    augment = CropAugment(mask_rule="nearest")
    crop, mask = _crop_with_square(OFFICIAL_FILL)
    box = augment.box(224, 224, seed=5)
    _, region = augment.apply(crop, mask, box, 224)
    expected = _pil_resized_crop(mask.astype(np.uint8) * 255, box, Image.NEAREST) > 0
    np.testing.assert_array_equal(region, expected)
    from torchvision.transforms import RandomResizedCrop

    for seed in range(50):
        top, left, h, w = augment.box(224, 224, seed)
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224
        # rounding of h and w moves the area fraction a little outside [0.9, 1]
        assert 0.88 <= h * w / 224**2 <= 1.0 and 0.7 <= w / h <= 1.4
        torch.manual_seed(seed)  # torchvision's own draw from the same seed
        ref = RandomResizedCrop.get_params(torch.empty(1, 224, 224), [0.9, 1.0], [3 / 4, 4 / 3])
        assert (top, left, h, w) == tuple(ref)


def test_dataset_augmentation_is_seeded_per_epoch_and_item(tmp_path):
    folder = pairs_folder(tmp_path / "pairs")
    ds = PairDataset(folder, augment=CropAugment(), seed=0)
    plain = PairDataset(folder)
    a = ds[2]["crop"]
    assert torch.equal(a, ds[2]["crop"]) and not torch.equal(a, plain[2]["crop"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2]["crop"])
    assert set(ds[2]["mask"].unique().tolist()) <= {0.0, 1.0}
