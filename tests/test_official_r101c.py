"""The R101c model reproduces the official run in ../shared/fixtures/official-r101c-tiny.

Stage tests feed each component the official inputs of that stage; the end-to-end test runs
``ovseg.Predictor`` from the 150x226 PNG (resized to 192x289 and back). Tolerances come from
the fixture README's 1-vs-2-thread differences of the official run itself (``meta.json``
``run_to_run_1_vs_2_threads``), with headroom for a different convolution kernel choice.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import ovseg
from ovseg.data.transforms import normalize_and_pad, resize_shortest_edge
from ovseg.modeling.fusion import (
    clip_class_probs,
    ensemble_probs,
    proposal_class_probs,
    semantic_fusion,
)
from ovseg.weights.official_config import config_from_official
from ovseg.weights.official_yaml import read_official_yaml
from tests.conftest import FIXTURES, OFFICIAL_TINY, require
from tests.official_compare import assert_close, check_head_stages

R101C = FIXTURES / "official-r101c-tiny"


@pytest.fixture(scope="module")
def r101c(tmp_path_factory):
    """(model from ovseg.load_official, outputs, meta) with the README's weight recipe."""
    require(R101C)
    tiny = load_file(str(OFFICIAL_TINY / "model_state.safetensors"))
    sd = {k: v for k, v in tiny.items() if k.startswith("clip_adapter.")}
    sd.update(load_file(str(R101C / "model_state_non_clip.safetensors")))
    weights = tmp_path_factory.mktemp("r101c") / "weights.safetensors"
    save_file(sd, str(weights))
    model = ovseg.load_official(R101C / "config.yaml", weights)
    outputs = load_file(str(R101C / "outputs.safetensors"))
    meta = json.loads((R101C / "meta.json").read_text())
    return model, outputs, meta


def mask_logits_at_input(out) -> torch.Tensor:
    """README step 5: the mask logits upsampled to the padded size, cropped to 192x289."""
    full = F.interpolate(out["head.pred_masks"][None], size=(192, 320), mode="bilinear")
    return full[0, :, :192, :289]


def test_config_and_resize_in(r101c):
    model, out, meta = r101c
    cfg = model.config
    assert cfg.backbone == {
        "type": "resnet",
        "depth": 50,
        "stem_channels": 16,
        "res2_channels": 32,
        "width_per_group": 8,
        "stride_in_1x1": False,
        "res5_multi_grid": [1, 2, 4],
    }
    assert (cfg.mask_threshold, cfg.ensemble_weight, cfg.mask_prompt_fwd) == (0.5, 0.7, True)
    image = np.array(Image.open(R101C / "input.png").convert("RGB"))
    assert np.array_equal(image, out["input_image_uint8_HWC"].numpy())
    mapped = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
    assert mapped.shape[:2] == tuple(meta["mapped_hw"]) == (192, 289)
    assert torch.equal(torch.from_numpy(mapped).permute(2, 0, 1), out["mapped_image_uint8_CHW"])


@torch.no_grad()
def test_backbone_stage(r101c):
    model, out, _ = r101c
    x = normalize_and_pad(out["mapped_image_uint8_CHW"], model.pixel_mean, model.pixel_std, 32)
    assert x.shape == (1, 3, 192, 320)
    features = model.backbone(x)
    # official 1-vs-2 threads: res2/res3 identical, res4/res5 up to 3e-4 relative above 1e-3
    # of the max (1.2e-5 abs on 21); ours uses another conv kernel: allow 2e-3 relative.
    for name in ("res2", "res3", "res4", "res5"):
        assert_close(features[name][0], out[f"backbone.{name}"], rtol=2e-3, atol_of_max=2e-6)


@torch.no_grad()
def test_pixel_decoder_and_predictor_stage(r101c):
    model, out, _ = r101c
    check_head_stages(model, out)


@torch.no_grad()
def test_text_and_class_embeddings(r101c):
    model, out, meta = r101c
    names = meta["class_names"]
    templates = json.loads((OFFICIAL_TINY / "meta.json").read_text())["vild_templates"]
    tokens = open_clip.tokenize([t.format(n) for t in templates for n in names])
    assert torch.equal(tokens.view(14, 6, 77), out["text.tokens"])
    text = model.encode_text(names)
    assert_close(text, out["text.class_features"], rtol=1e-4, atol_of_max=1e-6)
    with_void = model.clip_adapter.with_void(text)
    assert_close(with_void, out["text.features_with_void"], rtol=1e-4, atol_of_max=1e-6)
    logits = model.clip_adapter.similarity_logits(
        out["head.pred_embed"], out["text.features_with_void"]
    )
    # official 1-vs-2 threads: 6e-4 abs on 39
    assert_close(logits, out["pred_logits"], rtol=1e-4, atol=1e-4)
    assert_close(
        proposal_class_probs(out["pred_logits"]), out["mask_cls_probs"], rtol=1e-5, atol=1e-7
    )


@torch.no_grad()
def test_masked_crops_bit_exact(r101c):
    model, out, _ = r101c
    probs = mask_logits_at_input(out).sigmoid()
    crops = model.binary_crops(out["mapped_image_uint8_CHW"], probs > model.config.mask_threshold)
    assert crops.valid.tolist() == [True] * 8 + [False, True]
    assert torch.equal(crops.valid, out["clip.valid_flag"].bool())
    assert torch.equal(crops.boxes, out["clip.crop_ltrb"])
    assert int(crops.boxes[:, 3].max()) == 192  # clamped at the bottom border
    assert torch.equal(crops.crops, out["clip.regions_normalized_224"])
    assert torch.equal(crops.region_masks, out["clip.region_masks_224"].float())


@torch.no_grad()
def test_clip_branch_and_ensemble(r101c):
    model, out, _ = r101c
    feats = model.clip_adapter.encode_masked(
        out["clip.regions_normalized_224"], out["clip.region_masks_224"].float()
    )
    # official 1-vs-2 threads: 9e-5 relative, 4.4e-7 abs on 0.41
    assert_close(
        F.normalize(feats, dim=-1), out["clip.image_features_normalized"], rtol=5e-4, atol=1e-6
    )
    logits = model.clip_adapter.similarity_logits(feats, out["text.features_with_void"])
    assert_close(logits, out["clip.logits"], rtol=1e-4, atol=1e-4)  # 2.5e-5 abs on 27
    assert_close(clip_class_probs(out["clip.logits"]), out["clip.cls_probs"], rtol=1e-5, atol=1e-7)
    valid = out["clip.valid_flag"].bool()
    probs = ensemble_probs(out["mask_cls_probs"], out["clip.cls_probs"], valid, 0.7)
    assert_close(probs, out["ensembled_cls_probs"], rtol=1e-5, atol=1e-7)
    fused = semantic_fusion(out["ensembled_cls_probs"], mask_logits_at_input(out).sigmoid())
    assert_close(fused, out["sem_seg_input_size"], rtol=1e-5, atol=1e-7)
    back = F.interpolate(out["sem_seg_input_size"][None], size=(150, 226), mode="bilinear")[0]
    assert_close(back, out["sem_seg"], rtol=1e-5, atol=1e-7)


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True])
def test_end_to_end_through_the_predictor(r101c, fast):
    model, out, meta = r101c
    predictor = ovseg.Predictor(model, options=ovseg.InferenceOptions(fast=fast))
    predictor.set_image(R101C / "input.png")
    assert torch.equal(predictor.input_image.cpu(), out["mapped_image_uint8_CHW"])
    assert predictor.proposals.masks.shape == (10, 192, 289)
    clip = predictor.clip_features()
    assert torch.equal(clip.valid.cpu(), out["clip.valid_flag"].bool())
    seg = predictor.predict(meta["class_names"])
    assert seg.sem_seg.shape == (6, 150, 226)
    # the fixture README's check: |d| <= 1e-4 + 1e-2 |ref| (official 1-vs-2 threads: 4e-5 abs
    # on 0.6, 2.9e-3 relative above 1e-3 of the max; amplified mask logits make sigmoid tails)
    assert_close(seg.sem_seg, out["sem_seg"], rtol=1e-2, atol=1e-4)
    stable = out["sem_seg_argmax_stable_mask"].bool().numpy()
    assert stable.sum() == 15868
    assert np.array_equal(seg.label_map[stable], out["sem_seg_argmax"].numpy()[stable])


def test_raw_published_file_with_the_fixture_options_gives_the_fixture_model(r101c, tmp_path):
    """The fixture was made from the raw published R101c file plus TINY_OPTS (README); the
    same, as a ``_BASE_`` chain on the raw file, loads to the same model config."""
    model, _, _ = r101c
    raw = require(FIXTURES / "configs" / "raw" / "ovseg_R101c_vitB_bs32_120k.yaml")
    (tmp_path / "tiny.yaml").write_text(
        f"_BASE_: {raw}\n"
        "MODEL:\n"
        "  RESNETS: {DEPTH: 50, STEM_OUT_CHANNELS: 16, RES2_OUT_CHANNELS: 32, WIDTH_PER_GROUP: 8}\n"
        "  SEM_SEG_HEAD: {CONVS_DIM: 64, MASK_DIM: 64, EMBEDDING_DIM: 32, EMBED_HIDDEN_DIM: 64}\n"
        "  MASK_FORMER: {HIDDEN_DIM: 64, NHEADS: 4, DIM_FEEDFORWARD: 128, DEC_LAYERS: 3,\n"
        "                NUM_OBJECT_QUERIES: 10}\n"
        "  CLIP_ADAPTER: {CLIP_MODEL_NAME: tiny-ViT}\n"
        "INPUT: {MIN_SIZE_TEST: 192, MAX_SIZE_TEST: 320}\n"
    )
    cfg = read_official_yaml(tmp_path / "tiny.yaml", allow_base_outside=True)
    cfg = config_from_official(cfg, model.config.clip)
    assert cfg == model.config
