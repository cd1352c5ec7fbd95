"""Predictor: caching, outputs, per-call options and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ovseg
from ovseg.modeling.classify import classify
from ovseg.modeling.fusion import fusion_settings


@pytest.fixture()
def predictor(tiny_model):
    p = ovseg.Predictor(tiny_model)
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return p


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_second_vocabulary_does_not_rerun_the_backbone_or_clip_image_tower(predictor):
    model = predictor.model
    bb_calls, h1 = count_calls(model.backbone)
    vis_calls, h2 = count_calls(model.clip_adapter.clip_model.visual.conv1)
    try:
        first = predictor.predict(["cat", "dog"])
        after_first = len(vis_calls)
        second = predictor.predict(["sky", "road", "tree"])
    finally:
        h1.remove()
        h2.remove()
    assert bb_calls == []
    # CLIP crops are encoded once per threshold (in batches of 8 on CPU), then cached
    assert len(vis_calls) == after_first
    assert first.sem_seg.shape == (2, 48, 64) and second.sem_seg.shape == (3, 48, 64)


def test_outputs_are_consistent(predictor):
    seg = predictor.predict(["cat", "dog", "grass"])
    assert seg.label_map.shape == (48, 64) and seg.label_map.dtype == np.int64
    assert np.array_equal(seg.label_map, seg.sem_seg.argmax(0).numpy())
    total = 0
    scores = seg.sem_seg.numpy().astype(np.float64)
    share = scores / scores.sum(axis=0)  # each pixel's normalised scores
    for segment in seg.segments:
        k = seg.class_names.index(segment["label"])
        mask = np.asarray(segment["mask"]) > 0
        assert np.array_equal(mask, seg.label_map == k)
        assert segment["score"] == pytest.approx(share[k][mask].mean())
        assert 0.0 <= segment["score"] <= 1.0
        total += mask.sum()
    assert total == 48 * 64
    assert seg.sem_seg.max() > 1.0  # raw scores stay available (eval sums over masks)


def test_predict_matches_the_model_pipeline_at_input_size(tiny_model):
    size = tiny_model.config.min_size_test
    image = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    p = ovseg.Predictor(tiny_model)
    p.set_image(image)  # short side already at the test size: no resize
    names = ["a", "b"]
    expected = tiny_model(torch.from_numpy(image).permute(2, 0, 1), names)
    assert torch.allclose(p.predict(names).sem_seg, expected, atol=1e-6)


def test_per_call_options_change_the_result(predictor):
    names = ["cat", "dog"]
    base = predictor.predict(names).sem_seg
    assert not torch.allclose(predictor.predict(names, ensemble_weight=0.2).sem_seg, base)
    clip_only = predictor.predict(names, clip_only=True, mask_threshold=0.0)
    assert clip_only.sem_seg.shape == base.shape
    assert torch.allclose(predictor.predict(names, ensemble_weight=0.7).sem_seg, base)
    # lambda 0 is CLIP alone, as in the official code (not the proposal branch alone)
    zero = predictor.predict(names, ensemble_weight=0.0, mask_threshold=0.0)
    assert torch.equal(zero.sem_seg, clip_only.sem_seg)
    proposals = predictor.predict(names, clip_ensemble=False).sem_seg
    assert not torch.allclose(proposals, zero.sem_seg) and not torch.allclose(proposals, base)
    with pytest.raises(ValueError, match="clip_only"):
        predictor.predict(names, clip_only=True, clip_ensemble=False)
    with pytest.raises(ValueError, match="mode"):
        predictor.predict(names, mode="fast")


def test_demo_mode_scores_are_confidences(predictor):
    seg = predictor.predict(["cat"], mode="demo", mask_threshold=0.5)
    assert seg.mode == "demo" and seg.class_names == ["cat", "others"]
    assert set(np.unique(seg.label_map).tolist()) <= {-1, 0, 1}
    for segment in seg.segments:
        assert 0.0 <= segment["score"] <= 1.0
    record = seg.to_json()
    assert record["unlabelled"]["area"] == int((seg.label_map < 0).sum())
    assert "sem_seg[k] / sum_j sem_seg[j]" in record["score_definition"]
    with pytest.raises(ValueError, match="'others' alone"):
        predictor.predict(["others"], mode="demo")


def test_demo_mode_defaults_to_the_published_demo_settings(tiny_model):
    settings = fusion_settings(tiny_model.config, mode="demo")
    assert tiny_model.config.mode == "eval"
    assert (settings.ensemble_weight, settings.mask_threshold) == (0.0, 0.35)
    assert settings.clip_alone
    mine = fusion_settings(tiny_model.config, mode="demo", ensemble_weight=0.5, mask_threshold=0.6)
    assert (mine.ensemble_weight, mine.mask_threshold, mine.clip_alone) == (0.5, 0.6, False)
    default = fusion_settings(tiny_model.config)
    assert default.mode == "eval"
    assert default.ensemble_weight == tiny_model.config.ensemble_weight


def test_demo_mode_with_an_ensemble_selects_among_valid_masks(tiny_model):
    from ovseg.modeling.proposals import Proposals

    def half_empty(image):  # the model's proposals with every other mask empty
        proposals = tiny_model.propose(image)
        masks = proposals.masks.clone()
        masks[::2] = 0.0
        return Proposals(masks, proposals.embeddings)

    predictor = ovseg.Predictor(tiny_model, proposal_generator=half_empty)
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    names = ["cat", "dog", "grass"]
    seg = predictor.predict(names, mode="demo", ensemble_weight=0.7, mask_threshold=0.5)
    assert seg.class_names == names and seg.sem_seg.shape == (3, 48, 64)
    model, masks = predictor.model, predictor.proposals.masks
    with torch.inference_mode():
        settings = fusion_settings(model.config, "demo", 0.7, 0.5)
        clip = predictor.clip_features(0.5)
        text = model.encode_text(names)
        probs, _ = classify(model.clip_adapter, predictor.proposals, clip, text, settings)
    assert clip.valid.tolist() == [False, True] * 5 and probs.shape[0] == 10
    # by hand: each class's best valid mask keeps its whole row, on the binary mask
    kept = torch.zeros_like(probs)
    for k in range(3):
        best = max(range(1, 10, 2), key=lambda i: probs[i, k].item())
        kept[best] = probs[best]
    binary = (masks > 0.5).float()
    expected = torch.einsum("nk,nhw->khw", kept, binary)
    expected = torch.nn.functional.interpolate(expected[None], size=(48, 64), mode="bilinear")[0]
    assert torch.allclose(seg.sem_seg, expected, atol=1e-6)


def test_bad_vocabularies_raise_clear_errors(predictor):
    with pytest.raises(ValueError, match="empty"):
        predictor.predict([])
    with pytest.raises(ValueError, match="duplicate"):
        predictor.predict(["cat", "Cat"])
    with pytest.raises(ValueError, match="non-blank"):
        predictor.predict(["cat", "  "])
    with pytest.raises(ValueError, match="one string"):
        predictor.predict("cat, dog")


def test_image_inputs(tiny_model):
    p = ovseg.Predictor(tiny_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(["cat"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        p.set_image(np.zeros((5, 6, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="PIL image"):
        p.set_image([[1, 2, 3]])
    gray = np.full((20, 30), 128, dtype=np.uint8)
    p.set_image(gray)
    assert p.predict(["x"]).sem_seg.shape == (1, 20, 30)
    p.set_image(Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8), "RGBA"))
    assert p.original_size == (20, 30)


def test_text_cache_is_keyed_by_weights(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    clip = model.clip_adapter
    first = clip.text_features(["cat", "dog"])
    assert clip.text_features(["cat", "dog"]) is first  # cached
    key = clip.weights_fingerprint()
    with torch.no_grad():
        clip.clip_model.token_embedding.weight.mul_(1.5)
    assert clip.weights_fingerprint() != key
    second = clip.text_features(["cat", "dog"])
    assert second is not first and not torch.allclose(second, first)
    clip.clip_model.visual.conv1.weight.data.add_(1.0)  # the image tower is not in the key
    assert clip.text_features(["cat", "dog"]) is second
