"""Demo mode reproduces the official OVSegDEMO run in ../shared/fixtures/official-demo.

The fixture is the official ``VisualizationDemo.run_on_image`` with the official-tiny weights
(CLIP alone, threshold 0.35) for a one-name vocabulary (``others`` appended) and a four-name
one. Tolerances follow its README: label maps, selections and binary masks exactly; scores to
float rounding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovseg
from ovseg.modeling.classify import classify, vocabulary
from ovseg.modeling.fusion import demo_fusion, demo_unlabelled, fusion_settings
from ovseg.weights.official_yaml import read_official_yaml
from tests.conftest import FIXTURES, OFFICIAL_TINY, require

DEMO = FIXTURES / "official-demo"


def trimmed_copy(folder: Path, out: Path, keep: int) -> Path:
    """Copy the fixture into ``out`` with only its first ``keep`` vocabularies: the others'
    tensors and meta entries are dropped (each vocabulary's run is independent)."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((folder / "meta.json").read_text())
    gone = list(meta["vocabularies"])[keep:]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "input.png"):
        shutil.copy(folder / name, out / name)
    tensors = load_file(str(folder / "outputs.safetensors"))
    kept = {k: v for k, v in tensors.items() if k.split(".")[0] not in gone}
    save_file(kept, str(out / "outputs.safetensors"))
    meta["vocabularies"] = {k: v for k, v in meta["vocabularies"].items() if k not in gone}
    meta["tensors"] = {k: v for k, v in meta["tensors"].items() if k.split(".")[0] not in gone}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def demo_model():
    require(DEMO)
    return ovseg.load_official(DEMO / "config.yaml", OFFICIAL_TINY / "model_state.safetensors")


@pytest.fixture(scope="module", params=["as-run", "one-vocabulary"])
def demo_fixture(request, demo_model, tmp_path_factory):
    """(model, outputs, meta, folder) of the official demo run, or of a copy trimmed to its
    first vocabulary (which tests that hard-code the run's vocabularies fail)."""
    from safetensors.torch import load_file

    folder = DEMO
    if request.param != "as-run":
        folder = trimmed_copy(DEMO, tmp_path_factory.mktemp("demo"), keep=1)
    meta = json.loads((folder / "meta.json").read_text())
    return demo_model, load_file(str(folder / "outputs.safetensors")), meta, folder


def test_demo_config_is_read(demo_fixture):
    model, _, meta, folder = demo_fixture
    cfg = model.config
    assert (cfg.mode, cfg.ensemble_weight, cfg.mask_threshold) == (
        "demo",
        meta["clip_ensemble_weight"],
        meta["mask_thr"],
    )
    official = read_official_yaml(folder / "config.yaml")
    assert official["MODEL"]["META_ARCHITECTURE"] == "OVSegDEMO"
    sizes = official["INPUT"]["MIN_SIZE_TEST"], official["INPUT"]["MAX_SIZE_TEST"]
    assert (cfg.min_size_test, cfg.max_size_test) == sizes


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_demo_predictions_match_the_official_demo(demo_fixture, fast):
    model, out, meta, folder = demo_fixture
    predictor = ovseg.Predictor(model, options=ovseg.InferenceOptions(fast=fast))
    predictor.set_image(folder / "input.png")
    assert torch.equal(predictor.input_image.float(), out["model_input_image_uint8"])
    for key, run in meta["vocabularies"].items():
        assert list(predictor.input_image.shape[1:]) == run["model_input_hw"]
        names = run["class_names_passed"]
        passed = list(names)
        seg = predictor.predict(passed)  # mode None: the config's, i.e. demo
        assert passed == names  # unlike the official code, the caller's list is not changed
        assert seg.mode == "demo"
        assert seg.class_names == run["class_names_used"]
        expected = out[f"{key}.label_map"].numpy()
        ours = np.where(seg.label_map < 0, 255, seg.label_map)
        assert np.array_equal(ours, expected), f"{key}: {(ours != expected).sum()} pixels differ"
        assert int((ours == 255).sum()) == run["sem_seg_channel0_zero_pixels"]
        ref = out[f"{key}.sem_seg"]
        assert seg.sem_seg.shape == ref.shape
        err = (seg.sem_seg - ref).abs().max().item()
        assert err <= 2e-6 * max(1.0, ref.abs().max().item()), f"{key}: sem_seg differs by {err}"
        histogram = {str(k): int(n) for k, n in zip(*np.unique(ours, return_counts=True))}
        assert histogram == run["label_histogram"]
        record = seg.to_json()
        unlabelled = record["unlabelled"]
        assert (unlabelled["value"], unlabelled["area"]) == (255, histogram["255"])
        # no evidence (every class 0) is part of the official rule's channel-0 zeros
        assert unlabelled["no_evidence"] == int((seg.sem_seg.amax(0) <= 0).sum())


@torch.no_grad()
def test_clip_probabilities_and_selection_match(demo_fixture):
    model, out, meta, folder = demo_fixture
    thr = meta["mask_thr"]
    predictor = ovseg.Predictor(model)
    predictor.set_image(folder / "input.png")
    clip = predictor.clip_features(thr)
    assert torch.equal(clip.valid, out["valid_flag"].bool())
    valid_masks = predictor.proposals.masks[clip.valid]
    assert (valid_masks - out["mask_pred_probs_valid"]).abs().max() < 5e-4
    assert torch.equal(valid_masks > thr, out["bin_masks"].bool())
    for key, run in meta["vocabularies"].items():
        settings = fusion_settings(model.config)
        used = vocabulary(run["class_names_passed"], settings)
        text = model.clip_adapter.with_void(model.encode_text(used))
        assert (text - out[f"{key}.text.features_with_void"]).abs().max() < 1e-5
        probs, _ = classify(
            model.clip_adapter, predictor.proposals, clip, model.encode_text(used), settings
        )
        assert (probs - out[f"{key}.mask_cls_probs"]).abs().max() < 5e-5
        # the fusion alone, fed the official tensors
        fused = demo_fusion(out[f"{key}.mask_cls_probs"], out["mask_pred_probs_valid"], thr, used)
        assert fused.select.tolist() == out[f"{key}.select_mask"].tolist() == run["select_mask"]
        official = torch.einsum("qc,qhw->chw", out[f"{key}.select_cls"], out["bin_masks"].float())
        assert torch.equal(fused.sem_seg, official)
        resized = F.interpolate(fused.sem_seg[None], size=meta["orig_hw"], mode="bilinear")[0]
        assert (resized - out[f"{key}.sem_seg"]).abs().max() < 1e-6
        label = resized.argmax(0)
        label[demo_unlabelled(resized)] = 255
        assert torch.equal(label, out[f"{key}.label_map"])


def test_trimmed_copy_has_fewer_vocabularies(tmp_path):
    from safetensors.torch import load_file

    full = json.loads((require(DEMO) / "meta.json").read_text())
    trimmed = trimmed_copy(DEMO, tmp_path / "t", keep=1)
    meta = json.loads((trimmed / "meta.json").read_text())
    assert (
        list(meta["vocabularies"]) == list(full["vocabularies"])[:1] != list(full["vocabularies"])
    )
    keys = set(load_file(str(trimmed / "outputs.safetensors")))
    assert all(f"{key}.label_map" not in keys for key in list(full["vocabularies"])[1:])


def channel0_planted_predictor(tiny_model, options=None):
    """A real Predictor in demo mode over a planted 8x12 image whose demo scores are known.

    Two classes with orthonormal text features t0, t1 and two proposals: A (columns 0-5)
    whose CLIP feature is t0 - t1, B (columns 4-9) with t1 - t0. CLIP logits are
    100 * cosine, so each mask's probabilities are (1, exp(-141)) = (1, 0) and (0, 1) in
    float32: class 0 selects A, class 1 selects B, and the demo scores are
    channel 0 = [1 1 1 1 1 1 0 0 0 0 0 0], channel 1 = [0 0 0 0 1 1 1 1 1 1 0 0] per row.
    Columns 6-9 have channel 0 exactly 0 while channel 1 is 1."""
    import copy

    from ovseg.modeling.proposals import Proposals

    model = copy.copy(tiny_model)  # the same modules; encode_text planted on this copy only
    dim = model.clip_adapter.arch.embed_dim
    text = torch.eye(dim)[:2]
    model.encode_text = lambda names, templates=None: text[: len(names)]
    masks = torch.zeros(2, 8, 12)
    masks[0, :, 0:6] = 0.9
    masks[1, :, 4:10] = 0.9
    features = F.normalize(torch.stack([text[0] - text[1], text[1] - text[0]]), dim=-1)

    def encoder(crops, region_masks):
        assert len(crops) == 2  # both masks are valid, encoded in mask order
        return features

    options = options or ovseg.InferenceOptions(fast=False, channels_last=False)
    return ovseg.Predictor(model, lambda image: Proposals(masks), options, encoder)


def test_unlabelled_is_where_channel_0_is_zero_through_the_predictor(tiny_model):
    """Official ``VisualizationDemo.run_on_image``: ``blank_area = (r[0] == 0)``. A pixel
    with channel 0 at 0 is unlabelled even where another class scores (columns 6-9), and a
    pixel where channel 0 scores but the other does not is labelled (columns 0-3)."""
    predictor = channel0_planted_predictor(tiny_model)
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :, 0] = np.arange(12) * 20  # crops differ; no resize (model input = original)
    predictor.set_model_input(image, (8, 12))
    seg = predictor.predict(["cat", "dog"], mode="demo")
    row0 = torch.tensor([1.0] * 6 + [0.0] * 6)
    row1 = torch.tensor([0.0] * 4 + [1.0] * 6 + [0.0] * 2)
    assert torch.equal(seg.sem_seg[0], row0.expand(8, 12))  # the planted premise
    assert torch.equal(seg.sem_seg[1], row1.expand(8, 12))
    expected = np.array([0] * 6 + [-1] * 6)  # "all channels zero" would label 6-9 as 1
    assert np.array_equal(seg.label_map, np.broadcast_to(expected, (8, 12)))
    assert seg.to_json()["unlabelled"]["area"] == 8 * 6
    # in eval mode only the pixels without evidence (every class 0: columns 10-11) are
    # unlabelled; the official argmax (what ovseg eval scores) labels them class 0
    seg = predictor.predict(["cat", "dog"], mode="eval")
    assert np.array_equal((seg.label_map < 0)[0], np.arange(12) >= 10)
    assert (seg.official_label_map[:, 10:] == 0).all()
