"""Test-time augmentation and sliding window (official TEST.AUG / TEST.SLIDING_WINDOW).

The merged output is checked against a composition written here from single-view model
outputs (``OVSeg.forward`` on each view), with the resizes done by PIL / ``F.interpolate`` in
the test, and against flip equivariance, which a merge that forgets to flip back breaks.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ovseg
from ovseg.inference.options import InferenceOptions
from ovseg.inference.tta import Augmentation, sliding_windows, tile_side
from tests.conftest import FIXTURES, require
from tests.official_compare import assert_close

NAMES = ["cat", "wall", "floor", "sofa"]
EXACT = dict(fast=False, channels_last=False)  # the per-view path OVSeg.forward also takes


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        cfg = ovseg.modeling.variants.MODELS["ovseg-test-tiny"]()
        # small views, few queries and 64-pixel CLIP crops keep this fast
        cfg = dataclasses.replace(
            cfg, num_queries=6, clip=dataclasses.replace(cfg.clip, image_size=64)
        )
        cfg.min_size_test, cfg.max_size_test = 96, 400
        return ovseg.build_ovseg(cfg).eval()


@pytest.fixture(scope="module")
def image():
    return np.array(
        Image.open(require(FIXTURES / "official-r101c-tiny" / "input.png")).convert("RGB")
    )


def pil_resize(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """detectron2's ResizeShortestEdge size rule and PIL bilinear, written out here."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        nh, nw = nh * max_size / max(nh, nw), nw * max_size / max(nh, nw)
    size = (int(nw + 0.5), int(nh + 0.5))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


@torch.no_grad()
def model_scores(model, view: np.ndarray) -> torch.Tensor:
    """(K, h, w) sem_seg of one view at its own size: the whole official pipeline."""
    return model(torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1), NAMES)


def to_size(scores: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(scores[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def test_views_follow_the_official_mapper(image):
    aug = Augmentation(min_sizes=(64, 160), max_size=200, flip=True)
    test_input = pil_resize(image, 96, 400)  # what the test mapper gives: 96x145
    views = aug.views(test_input)
    assert [(v.shape[:2], f) for v, f in views] == [
        ((64, 97), False),  # 145 * 64 / 96 = 96.67 -> 97
        ((64, 97), True),
        ((132, 200), False),  # 160x241.67 capped by max_size 200: 132.41 -> 132
        ((132, 200), True),
    ]
    assert np.array_equal(views[0][0], pil_resize(test_input, 64, 200))
    assert np.array_equal(views[1][0], views[0][0][:, ::-1])
    assert np.array_equal(views[2][0], pil_resize(test_input, 160, 200))
    # the extra scales resize the test-resized image, not the original
    assert not np.array_equal(views[2][0], pil_resize(image, 160, 200))


TTA = InferenceOptions(tta_min_sizes=(64, 80), tta_max_size=3584, tta_flip=True, **EXACT)


@pytest.fixture(scope="module")
def tta_seg(model, image):
    predictor = ovseg.Predictor(model, options=TTA)
    predictor.set_image(image)
    return predictor.predict(NAMES).sem_seg


def test_tta_equals_an_independent_composition(model, image, tta_seg):
    test_input = pil_resize(image, 96, 400)
    outputs = []
    for size in (64, 80):
        view = pil_resize(test_input, size, 3584)
        outputs.append(to_size(model_scores(model, view), image.shape[:2]))
        flipped = to_size(model_scores(model, view[:, ::-1]), image.shape[:2])
        outputs.append(flipped.flip(-1))
    expected = sum(outputs[1:], outputs[0]) / 4
    assert tta_seg.shape == (4, 150, 226)
    assert_close(tta_seg, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(outputs[0], tta_seg, atol=1e-3)  # the views differ


def test_flip_equivariance(model, image, tta_seg):
    """With flipped views, TTA of the mirrored image is the mirrored TTA (views swap roles).
    The model itself is not equivariant, so forgetting to flip outputs back breaks this."""
    predictor = ovseg.Predictor(model, options=TTA)
    predictor.set_image(np.ascontiguousarray(image[:, ::-1]))
    mirrored = predictor.predict(NAMES).sem_seg
    assert_close(mirrored, tta_seg.flip(-1), rtol=1e-4, atol=1e-5)
    plain = to_size(model_scores(model, pil_resize(image, 64, 3584)), image.shape[:2])
    assert (plain - plain.flip(-1)).abs().max() > 1e-3  # not equivariant by itself


def test_sliding_windows_by_hand():
    # stride ceil(224 / 3) = 75; rows ceil(76 / 75) + 1 = 3; cols ceil(276 / 75) + 1 = 5
    wins = sliding_windows(300, 500, 224, 2 / 3)
    assert sorted({(y1, y2) for y1, y2, _, _ in wins}) == [(0, 224), (75, 299), (76, 300)]
    assert sorted({(x1, x2) for _, _, x1, x2 in wins}) == [
        (0, 224), (75, 299), (150, 374), (225, 449), (276, 500)
    ]  # fmt: skip
    assert len(wins) == 15 and wins[0] == (0, 224, 0, 224) and wins[-1] == (76, 300, 276, 500)
    assert sliding_windows(100, 120, 224, 2 / 3) == [(0, 100, 0, 120)]  # smaller than a tile


def test_sliding_window_equals_an_independent_composition(model, image):
    options = InferenceOptions(
        sliding_window=True, sliding_tile_size=96, sliding_overlap=0.5, **EXACT
    )
    predictor = ovseg.Predictor(model, options=options)
    predictor.set_image(image)
    seg = predictor.predict(NAMES)
    view = pil_resize(image, 96, 400)  # 96x145, stride 48: one row, windows at x 0, 48, 49
    full = torch.zeros(4, 96, 145)
    count = torch.zeros(4, 96, 145)
    for x1 in (0, 48, 49):  # the last window is shifted back inside the view
        full[:, :, x1 : x1 + 96] += model_scores(model, view[:, x1 : x1 + 96])
        count[:, :, x1 : x1 + 96] += 1
    expected = to_size(full / count, image.shape[:2])
    assert_close(seg.sem_seg, expected, rtol=1e-4, atol=1e-6)


def test_config_turns_tta_on_and_options_override(model):
    cfg = model.config
    assert InferenceOptions().augmentation(cfg) is None  # published configs: off
    on = dataclasses.replace(cfg, test_aug=True, sliding_window=True)
    aug = InferenceOptions().augmentation(on)
    assert aug == Augmentation((256, 384, 512, 640, 768, 896), 3584, True, True, 224, 2 / 3)
    assert InferenceOptions(tta_min_sizes=()).augmentation(on) is None
    # the official code slides only inside TTA
    assert InferenceOptions().augmentation(dataclasses.replace(cfg, sliding_window=True)) is None
    mine = InferenceOptions(tta_min_sizes=[320], tta_flip=False).augmentation(cfg)
    assert mine.min_sizes == (320,) and mine.flip is False and mine.max_size == 3584
    with pytest.raises(ValueError, match="overlap"):
        InferenceOptions(sliding_window=True, sliding_overlap=1.0).augmentation(cfg)


def test_per_proposal_results_refused_with_tta(model, image):
    predictor = ovseg.Predictor(model, options=InferenceOptions(tta_min_sizes=(64,), **EXACT))
    predictor.set_image(image)
    with pytest.raises(RuntimeError, match="test-time augmentation"):
        predictor.clip_features()


def test_tile_side_by_short_side():
    assert tile_side(300, 500, 224) == 224
    assert tile_side(512, 683, 0) == 256 and tile_side(896, 1195, -1) == 512  # official table
    with pytest.raises(ValueError, match="short side"):
        tile_side(500, 700, 0)
