"""Several images at once: ``OVSeg.propose_batch``, ``clip_image_features_batch`` and
``Predictor.set_images`` / ``predict_batch`` give each image what the one-image path gives
(label maps equal, scores equal up to float rounding), with fewer model calls."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ovseg
from ovseg.inference.options import InferenceOptions

NAMES = ["cat", "dog", "sky", "grass"]


@pytest.fixture(scope="module")
def model(tiny_model):
    return copy.deepcopy(tiny_model)


@pytest.fixture(scope="module")
def images():
    """Three photos-like arrays: the first two pad to the same model-input size (tiny config:
    short side 320, padding to 32), the third (portrait) to another."""
    rng = np.random.default_rng(7)
    shapes = [(48, 64), (60, 80), (64, 48)]
    out = []
    for h, w in shapes:  # smooth colour fields, so masks and crops are not all alike
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, (3, 3))
        img = base[0] + base[1] * y[..., None] + base[2] * x[..., None] * 0.5
        out.append((img % 256).astype(np.uint8))
    return out


def count_calls(module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    calls = []
    return calls, module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))


def test_propose_batch_groups_by_padded_size_and_equals_propose(model, images):
    tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
    calls, handle = count_calls(model.backbone)
    with torch.inference_mode():
        batched = model.propose_batch(tensors)
        handle.remove()
        single = [model.propose(t) for t in tensors]
    # not resized here: 48x64 and 64x48 pad to 64x64 (size divisibility 32), 60x80 to 64x96
    assert sorted(calls) == [1, 2]
    for b, s, t in zip(batched, single, tensors):
        assert b.masks.shape == s.masks.shape == (model.config.num_queries, *t.shape[-2:])
        assert torch.allclose(b.masks, s.masks, atol=1e-5)
        assert torch.allclose(b.embeddings, s.embeddings, atol=1e-5)


def test_propose_batch_keeps_different_padded_sizes_apart(model):
    rng = np.random.default_rng(0)
    shapes = [(64, 96), (64, 64), (40, 90), (70, 64)]  # pads to 64x96, 64x64, 64x96, 96x64
    tensors = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
    calls, handle = count_calls(model.backbone)
    with torch.inference_mode():
        batched = model.propose_batch(tensors)
    handle.remove()
    assert sorted(calls) == [1, 1, 2]
    with torch.inference_mode():
        alone = model.propose(tensors[2])
    assert torch.allclose(batched[2].masks, alone.masks, atol=1e-5)


def _one_at_a_time(predictor, images, **kwargs):
    out = []
    for image in images:
        predictor.set_image(image)
        out.append(predictor.predict(NAMES, **kwargs))
    return out


def _assert_same(batched, single):
    assert len(batched) == len(single)
    for b, s in zip(batched, single):
        assert b.class_names == s.class_names
        assert b.sem_seg.shape == s.sem_seg.shape
        assert torch.allclose(b.sem_seg, s.sem_seg, rtol=1e-4, atol=1e-6)
        assert np.array_equal(b.label_map, s.label_map)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "eval"}, {"mode": "demo"}, {"mode": "eval", "clip_only": True}],
    ids=["eval", "demo", "clip-only"],
)
def test_predict_batch_equals_one_image_at_a_time(model, images, kwargs):
    predictor = ovseg.Predictor(model, options=InferenceOptions(clip_batch_size=0))
    conv1 = predictor.model.clip_adapter.clip_model.visual.conv1
    clip_single, handle = count_calls(conv1)
    single = _one_at_a_time(predictor, images, **kwargs)
    handle.remove()
    backbone, h1 = count_calls(predictor.model.backbone)
    clip, h2 = count_calls(conv1)
    try:
        predictor.set_images(images)
        batched = predictor.predict_batch(NAMES, **kwargs)
    finally:
        h1.remove()
        h2.remove()
    _assert_same(batched, single)
    # resized to 320x427, 320x427 and 427x320: two padded sizes, two proposal batches;
    # the crops of the three images (one CLIP call each alone) in one CLIP call
    assert sorted(backbone) == [1, 2]
    assert len(clip_single) == 3 and clip == [sum(clip_single)]


def test_predict_batch_with_top_k_and_a_second_vocabulary(model, images):
    predictor = ovseg.Predictor(model, options=InferenceOptions(top_k=4))
    single = _one_at_a_time(predictor, images, mode="eval")
    predictor.set_images(images)
    _assert_same(predictor.predict_batch(NAMES, mode="eval"), single)
    # the cached state serves another call (a sweep over thresholds, say)
    again = _one_at_a_time(predictor, images, mode="eval", mask_threshold=0.6)
    predictor.set_images(images)
    predictor.predict_batch(NAMES, mode="eval")
    _assert_same(predictor.predict_batch(NAMES, mode="eval", mask_threshold=0.6), again)


def test_predict_batch_with_test_time_augmentation(model, images):
    options = InferenceOptions(tta_min_sizes=(64, 80), tta_max_size=400, tta_flip=True)
    predictor = ovseg.Predictor(model, options=options)
    single = _one_at_a_time(predictor, images[:2], mode="eval")
    predictor.set_images(images[:2])
    _assert_same(predictor.predict_batch(NAMES, mode="eval"), single)


def test_batch_state_rules(model, images):
    predictor = ovseg.Predictor(model)
    with pytest.raises(ValueError, match="at least one image"):
        predictor.set_images([])
    predictor.set_images(images)
    with pytest.raises(RuntimeError, match="predict_batch"):
        predictor.predict(NAMES)
    predictor.set_image(images[0])  # back to one image
    single = predictor.predict(NAMES)
    assert len(predictor.predict_batch(NAMES)) == 1
    _assert_same(predictor.predict_batch(NAMES), [single])
