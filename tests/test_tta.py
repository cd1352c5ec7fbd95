"""Test-time augmentation and sliding window (official TEST.AUG / TEST.SLIDING_WINDOW).

The merged output is checked against a composition written here from single-view model
outputs (``OVSeg.forward`` on each view), with the resizes done by PIL / ``F.interpolate`` in
the test, and against flip equivariance, which a merge that forgets to flip back breaks.
Independently of any composition, planted views (a stand-in model whose per-view output is
a known function of the view: ramps, constants, the window's position) give results worked
out by hand from the official rule (ov-seg ``open_vocab_seg/test_time_augmentation.py``):
the merge, demo mode under TTA, and a sliding window over a 2-D grid and a padded view.
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


# ---- planted views: a stand-in model whose output for each view is known -----------------


class PlantedView:
    """Stands in for the single-view predictor TTA runs per view (``Predictor.
    single_view_predictor``): its "model" outputs ``scores(view, class_names, options)``,
    (K, h, w) at the view's size, resized bilinearly to the requested output size as a model
    does (detectron2's ``sem_seg_postprocess``). Every view it is given is recorded."""

    def __init__(self, scores, seen: list):
        self.scores, self.seen = scores, seen

    def set_model_input(self, image: np.ndarray, output_size) -> None:
        self.image, self.size = image, tuple(output_size)

    def predict(self, class_names, **options):
        from types import SimpleNamespace

        self.seen.append(self.image.shape[:2])
        scores = self.scores(self.image.astype(np.float32), class_names, options)
        return SimpleNamespace(sem_seg=to_size(scores, self.size))


def planted_predictor(model, options, scores, min_size_test=None):
    seen = []
    if min_size_test is not None:
        import copy

        model = copy.copy(model)
        model.config = dataclasses.replace(model.config, min_size_test=min_size_test)
    predictor = ovseg.Predictor(model, options=options)
    predictor.single_view_predictor = lambda: PlantedView(scores, seen)
    return predictor, seen


def ramp_image(h: int, w: int) -> np.ndarray:
    """red = 2 x, green = y: linear ramps, which bilinear resizes keep (away from borders)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 2 * np.arange(w)
    image[..., 1] = np.arange(h)[:, None]
    return image


def test_tta_merge_by_hand_on_planted_views(model):
    """Per view the planted model gives (red, 1, short side / 10). The official merge flips
    the flipped views' outputs back and averages all views, so: channel 0 is the original
    red ramp 2x (it would be a constant 89 without the flip back), channel 1 is exactly 1,
    channel 2 the mean short side of the four views (64, 64, 80, 80) / 10 = 7.2."""
    image = ramp_image(60, 90)  # test-resized (min_size_test 96) to 96x144, then 64 / 80

    def scores(view, names, options):
        h, w = view.shape[:2]
        return torch.stack(
            [torch.from_numpy(view[..., 0]), torch.ones(h, w), torch.full((h, w), min(h, w) / 10)]
        )

    predictor, seen = planted_predictor(model, TTA, scores)
    predictor.set_image(image)
    seg = predictor.predict(["a", "b", "c"])
    assert seen == [(64, 96), (64, 96), (80, 120), (80, 120)]
    assert seg.sem_seg.shape == (3, 60, 90)
    assert torch.allclose(seg.sem_seg[1], torch.ones(60, 90), atol=1e-6)
    assert torch.allclose(seg.sem_seg[2], torch.full((60, 90), 7.2), atol=1e-5)
    ramp = torch.from_numpy(2.0 * np.arange(90, dtype=np.float32)).expand(60, 90)
    # PIL (uint8) and bilinear resizes keep a linear ramp up to rounding, except at the
    # left and right borders (edge clamping)
    err = (seg.sem_seg[0] - ramp)[:, 4:-4].abs().max().item()
    assert err < 1.5, err


def test_demo_mode_with_tta_on_planted_views(model):
    """Demo mode under TTA: one name gets ``others`` once, and the merged scores follow the
    channel-0 rule. The planted model's channel 0 is 1 on the left half of each FLIPPED view
    only (0 in every unflipped view), channel 1 is 0.25: merged, channel 0 is 0.5 on the
    right half of the image (labelled ``person``) and exactly 0 on the left half, which is
    unlabelled although ``others`` scores 0.25 there."""
    image = ramp_image(60, 90)

    def scores(view, names, options):
        assert options["mode"] == "demo" and names == ["person"]
        h, w = view.shape[:2]
        flipped = view[0, 0, 0] > view[0, -1, 0]  # the red ramp runs the other way
        first = torch.zeros(h, w)
        if flipped:
            first[:, : w // 2] = 1.0
        return torch.stack([first, torch.full((h, w), 0.25)])

    predictor, _ = planted_predictor(model, TTA, scores)
    predictor.set_image(image)
    seg = predictor.predict(["person"], mode="demo")
    assert seg.class_names == ["person", "others"] and seg.mode == "demo"
    left, right = slice(0, 42), slice(48, 90)  # away from the blurred middle
    assert (seg.sem_seg[0][:, left] == 0).all() and (seg.sem_seg[1] > 0.2499).all()
    assert torch.allclose(seg.sem_seg[0][:, right], torch.tensor(0.5))
    assert (seg.label_map[:, left] == -1).all() and (seg.label_map[:, right] == 0).all()


def test_sliding_window_grid_by_hand_on_planted_windows(model):
    """A 2-D grid of windows (official formula, worked by hand): a 96x150 view, tile 48,
    overlap 0.5, stride 24. Rows: ceil((96 - 48) / 24) + 1 = 3, y1 = 0, 24, 48. Columns:
    ceil((150 - 48) / 24) + 1 = 6, x1 = 0, 24, 48, 72, 96 and 102 (120 + 48 > 150: shifted
    back inside). The planted model outputs each window's own red and green ramps (which
    any window covering a pixel sees alike), 1, and the window's y1 and x1 read from its
    top-left pixel, so the merge must give the ramps, exactly 1, and per pixel the mean
    y1 / x1 of the windows covering it."""
    image = ramp_image(96, 150)
    image[..., 0] = np.arange(150)  # red = x (fits uint8), green = y

    def scores(window, names, options):
        h, w = window.shape[:2]
        y1, x1 = window[0, 0, 1], window[0, 0, 0]
        planes = [window[..., 0], window[..., 1], np.ones((h, w)), np.full((h, w), y1)]
        return torch.from_numpy(np.stack(planes + [np.full((h, w), x1)]).astype(np.float32))

    options = InferenceOptions(
        sliding_window=True, sliding_tile_size=48, sliding_overlap=0.5, **EXACT
    )
    predictor, seen = planted_predictor(model, options, scores)
    predictor.set_image(image)  # min_size_test 96: no resize
    seg = predictor.predict(["a", "b", "c", "d", "e"])
    assert seen == [(48, 48)] * 18
    rows, cols = [0, 24, 48], [0, 24, 48, 72, 96, 102]

    def mean_start(starts, n):
        out = np.zeros(n)
        for i in range(n):
            covering = [s for s in starts if s <= i < s + 48]
            out[i] = sum(covering) / len(covering)
        return torch.from_numpy(out).float()

    ys, xs = torch.arange(96.0)[:, None].expand(96, 150), torch.arange(150.0).expand(96, 150)
    assert torch.equal(seg.sem_seg[0], xs) and torch.equal(seg.sem_seg[1], ys)
    assert torch.allclose(seg.sem_seg[2], torch.ones(96, 150))
    assert torch.allclose(seg.sem_seg[3], mean_start(rows, 96)[:, None].expand(96, 150))
    assert torch.allclose(seg.sem_seg[4], mean_start(cols, 150).expand(96, 150))


def test_sliding_window_pads_a_short_view_by_hand(model):
    """A 40x60 view, tile 48, stride 24: one row (y 0-40, zero-padded at the bottom to 48)
    and two columns (x1 = 0 and 12). Each window's output is cropped to its 40 image rows:
    the merged ramps are the image's, exactly."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = np.arange(60) + 1
    image[..., 1] = np.arange(40)[:, None] + 1

    def scores(window, names, options):
        assert window.shape[:2] == (48, 48) and not window[40:].any()  # padded with zeros
        return torch.from_numpy(np.stack([window[..., 0], window[..., 1]]).astype(np.float32))

    options = InferenceOptions(
        sliding_window=True, sliding_tile_size=48, sliding_overlap=0.5, **EXACT
    )
    predictor, seen = planted_predictor(model, options, scores, min_size_test=40)
    predictor.set_image(image)
    seg = predictor.predict(["a", "b"])
    assert len(seen) == 2
    assert torch.equal(seg.sem_seg[0], torch.arange(1.0, 61.0).expand(40, 60))
    assert torch.equal(seg.sem_seg[1], torch.arange(1.0, 41.0)[:, None].expand(40, 60))
