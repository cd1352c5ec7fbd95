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


def mask_logits_at_input(out, meta) -> torch.Tensor:
    """README step 5: the mask logits upsampled to the padded size, cropped to the mapped
    (resized, unpadded) size."""
    full = F.interpolate(out["head.pred_masks"][None], size=meta["padded_hw"], mode="bilinear")
    h, w = meta["mapped_hw"]
    return full[0, :, :h, :w]


def test_config_and_resize_in(r101c):
    model, out, meta = r101c
    cfg = model.config
    resnets = read_official_yaml(R101C / "config.yaml")["MODEL"]["RESNETS"]
    assert cfg.backbone == {
        "type": "resnet",
        "depth": resnets["DEPTH"],
        "stem_channels": resnets["STEM_OUT_CHANNELS"],
        "res2_channels": resnets["RES2_OUT_CHANNELS"],
        "width_per_group": resnets["WIDTH_PER_GROUP"],
        "stride_in_1x1": resnets["STRIDE_IN_1X1"],
        "res5_multi_grid": resnets["RES5_MULTI_GRID"],
    }
    assert [[g, g] for g in cfg.backbone["res5_multi_grid"]] == meta["res5_conv2_dilations"]
    assert (cfg.mask_threshold, cfg.ensemble_weight, cfg.mask_prompt_fwd) == (
        meta["mask_thr"],
        meta["clip_ensemble_weight"],
        True,
    )
    image = np.array(Image.open(R101C / "input.png").convert("RGB"))
    assert np.array_equal(image, out["input_image_uint8_HWC"].numpy())
    mapped = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
    assert list(mapped.shape[:2]) == meta["mapped_hw"]
    assert list(image.shape[:2]) == meta["orig_hw"]
    assert torch.equal(torch.from_numpy(mapped).permute(2, 0, 1), out["mapped_image_uint8_CHW"])


@torch.no_grad()
def test_backbone_stage(r101c):
    model, out, meta = r101c
    x = normalize_and_pad(
        out["mapped_image_uint8_CHW"],
        model.pixel_mean,
        model.pixel_std,
        model.config.size_divisibility,
    )
    assert list(x.shape[2:]) == meta["padded_hw"]
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
    assert torch.equal(tokens.view(len(templates), len(names), -1), out["text.tokens"])
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
    model, out, meta = r101c
    binary = mask_logits_at_input(out, meta).sigmoid() > meta["mask_thr"]
    assert binary.flatten(1).sum(1).tolist() == meta["mask_areas_at_input_size"]
    crops = model.binary_crops(out["mapped_image_uint8_CHW"], binary)
    assert crops.valid.tolist() == meta["valid_flag"]
    assert torch.equal(crops.valid, out["clip.valid_flag"].bool())
    assert torch.equal(crops.boxes, out["clip.crop_ltrb"])
    assert int(crops.boxes[:, 3].max()) <= meta["mapped_hw"][0]  # clamped at the border
    assert torch.equal(crops.crops, out["clip.regions_normalized_224"])
    assert torch.equal(crops.region_masks, out["clip.region_masks_224"].float())


@torch.no_grad()
def test_clip_branch_and_ensemble(r101c):
    model, out, meta = r101c
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
    weight = meta["clip_ensemble_weight"]
    probs = ensemble_probs(out["mask_cls_probs"], out["clip.cls_probs"], valid, weight)
    assert_close(probs, out["ensembled_cls_probs"], rtol=1e-5, atol=1e-7)
    fused = semantic_fusion(out["ensembled_cls_probs"], mask_logits_at_input(out, meta).sigmoid())
    assert_close(fused, out["sem_seg_input_size"], rtol=1e-5, atol=1e-7)
    size = meta["orig_hw"]
    back = F.interpolate(out["sem_seg_input_size"][None], size=size, mode="bilinear")[0]
    assert_close(back, out["sem_seg"], rtol=1e-5, atol=1e-7)


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True])
def test_end_to_end_through_the_predictor(r101c, fast):
    model, out, meta = r101c
    predictor = ovseg.Predictor(model, options=ovseg.InferenceOptions(fast=fast))
    predictor.set_image(R101C / "input.png")
    assert torch.equal(predictor.input_image.cpu(), out["mapped_image_uint8_CHW"])
    queries = len(meta["valid_flag"])
    assert predictor.proposals.masks.shape == (queries, *meta["mapped_hw"])
    clip = predictor.clip_features()
    assert torch.equal(clip.valid.cpu(), out["clip.valid_flag"].bool())
    seg = predictor.predict(meta["class_names"])
    assert seg.sem_seg.shape == (len(meta["class_names"]), *meta["orig_hw"])
    # the fixture README's check: |d| <= 1e-4 + 1e-2 |ref| (official 1-vs-2 threads: 4e-5 abs
    # on 0.6, 2.9e-3 relative above 1e-3 of the max; amplified mask logits make sigmoid tails)
    assert_close(seg.sem_seg, out["sem_seg"], rtol=1e-2, atol=1e-4)
    stable = out["sem_seg_argmax_stable_mask"].bool().numpy()
    assert stable.sum() == meta["stable_pixels"]
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
