"""Each fast path equals the reference path (official-equivalent computation)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovseg
from ovseg.data.fast_crops import bicubic_taps, nearest_index, tap_matrix, unique_masks
from ovseg.data.masked_crops import MEAN_FILL, masked_crops
from ovseg.inference.options import InferenceOptions
from ovseg.modeling.classify import classify
from ovseg.modeling.fusion import clip_class_probs, fusion_settings, semantic_fusion
from tests.official_compare import assert_close
from tests.test_official_fixture import assert_close_to_scale, max_abs


def fresh_tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return ovseg.build_ovseg(ovseg.modeling.variants.MODELS["ovseg-test-tiny"]())


def random_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, h, w) bool with edge cases: empty, duplicate, one pixel, full image, borders."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = (int(torch.randint(0, s - 1, (1,), generator=g)) for s in (h, w))
        bh = int(torch.randint(1, h - y0 + 1, (1,), generator=g))
        bw = int(torch.randint(1, w - x0 + 1, (1,), generator=g))
        masks[i, y0 : y0 + bh, x0 : x0 + bw] = torch.rand(bh, bw, generator=g) > 0.3
    masks[0] = False
    masks[1] = masks[4]
    masks[2] = False
    masks[2, h - 1, w - 1] = True
    masks[3] = True
    masks[5] = False
    masks[5, :, 0] = True  # one column: box width 1
    return masks


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100, 223, 224, 225, 500, 853, 1000])
def test_bicubic_taps_are_pytorchs(size):
    index, weight = bicubic_taps(torch.tensor([size]), 224)
    dense = tap_matrix(index, weight, size)[0]
    eye = torch.eye(size)[None, None]
    expected = F.interpolate(eye, size=(224, size), mode="bicubic", align_corners=False)[0, 0]
    assert max_abs(dense, expected) < 1e-6
    nearest = F.interpolate(eye, size=(224, size), mode="nearest")[0, 0].argmax(1)
    assert torch.equal(nearest_index(torch.tensor([size]), 224)[0], nearest)


@pytest.mark.parametrize("fill", [MEAN_FILL, (0.0, 0.0, 0.0)])
@pytest.mark.parametrize("expand", [1.0, 1.3])
def test_fast_crops_equal_reference(fill, expand):
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 61, 97), dtype=torch.uint8, generator=g)
    masks = random_masks(12, 61, 97)
    ref = masked_crops(image, masks, 224, fill, expand, method="reference")
    fast = masked_crops(image, masks, 224, fill, expand, method="fast")
    assert torch.equal(fast.valid, ref.valid) and torch.equal(fast.boxes, ref.boxes)
    assert torch.equal(fast.region_masks, ref.region_masks)
    assert max_abs(fast.crops, ref.crops) < 2e-5


def test_fast_crops_small_chunks_and_no_masks():
    from ovseg.data.fast_crops import batched_masked_crops

    image = torch.rand(3, 40, 50) * 255
    masks = random_masks(8, 40, 50, seed=3)
    ref = masked_crops(image, masks, 32, method="reference")
    boxes, valid = ref.boxes, ref.valid
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) * 255
    fill = torch.tensor(MEAN_FILL).view(3, 1, 1)
    crops, regions = batched_masked_crops(image, masks[valid], boxes, 32, mean, std, fill, 1)
    assert max_abs(crops, ref.crops) < 2e-5 and torch.equal(regions, ref.region_masks)
    none = masked_crops(image, torch.zeros(3, 40, 50, dtype=torch.bool), 32, method="fast")
    assert none.crops.shape == (0, 3, 32, 32) and not none.valid.any()
    with pytest.raises(ValueError, match="method"):
        masked_crops(image, masks, method="roi")


def test_unique_masks_maps_duplicates():
    masks = random_masks(10, 9, 11)[1:]  # index 0 of this slice equals index 3
    first, inverse = unique_masks(masks)
    assert len(first) == len(masks) - 1
    assert torch.equal(first, first.sort().values)
    for i in range(len(masks)):
        assert torch.equal(masks[i], masks[first[inverse[i]]])
    assert unique_masks(masks[:0])[0].numel() == 0


@torch.no_grad()
def test_fast_clip_features_equal_reference():
    model = fresh_tiny()
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=g)
    soft = random_masks(10, 64, 80).float() * 0.9  # > 0.4 where the mask is on
    ref = model.clip_image_features(image, soft, fast=False)
    fast = model.clip_image_features(image, soft, fast=True)
    assert torch.equal(fast.valid, ref.valid)
    assert max_abs(fast.features, ref.features) < 1e-4
    crops, _, inverse = model.clip_crops(image, soft, fast=True)
    assert crops.crops.shape[0] == int(ref.valid.sum()) - 1  # one duplicate encoded once
    batched, _, _ = model.clip_crops(image, soft, fast=True, crop_method="fast")  # as on CUDA
    assert max_abs(batched.crops, crops.crops) < 2e-5
    assert torch.equal(batched.region_masks, crops.region_masks)
    batched = model.clip_image_features(image, soft, fast=True, batch_size=3)
    assert max_abs(batched.features, ref.features) < 1e-4


@torch.no_grad()
def test_fast_path_matches_official_fixture(official_tiny):
    model, out, image, names = official_tiny
    proposals = model.propose(image)
    clip = model.clip_image_features(image, proposals.masks, fast=True)
    assert torch.equal(clip.valid, out["clip.valid_flag"].bool())
    text = model.encode_text(names)
    logits = model.clip_adapter.similarity_logits(clip.features, model.clip_adapter.with_void(text))
    assert_close_to_scale(logits, out["clip.logits"])
    assert max_abs(clip_class_probs(logits), out["clip.cls_probs"]) < 1e-4
    settings = fusion_settings(model.config)
    probs, masks = classify(model.clip_adapter, proposals, clip, text, settings)
    sem_seg = semantic_fusion(probs, masks)
    reference = model.clip_image_features(image, proposals.masks)
    ref_probs, _ = classify(model.clip_adapter, proposals, reference, text, settings)
    assert max_abs(probs, ref_probs) < 1e-5
    assert torch.equal(sem_seg.argmax(0), out["sem_seg_argmax"])


def photo() -> np.ndarray:
    g = np.random.default_rng(0)
    base = g.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    return np.kron(base, np.ones((20, 20, 1), np.uint8))  # 120 x 160 blocks


NAMES = ["sky", "tree", "road", "car"]


def predict(options: InferenceOptions, names=NAMES):
    predictor = ovseg.Predictor(fresh_tiny(), options=options)
    predictor.set_image(photo())
    return predictor, predictor.predict(names, mask_threshold=0.3)


def test_predictor_fast_fp32_equals_reference():
    _, ref = predict(InferenceOptions(fast=False, channels_last=False))
    _, fast = predict(InferenceOptions())  # fast crops, dedup, channels_last
    assert_close_to_scale(fast.sem_seg, ref.sem_seg, rel=1e-4)
    assert (fast.label_map == ref.label_map).mean() > 0.999


def test_default_clip_batch_keeps_mlp_activations_in_budget():
    """On CPU the default is the most crops whose fp32 MLP activations fit the budget,
    capped at CPU_CLIP_BATCH; on GPUs GPU_CLIP_BATCH; on the reference path, one call."""
    from ovseg.inference.options import CPU_CLIP_BATCH, CPU_CLIP_HIDDEN_BYTES, GPU_CLIP_BATCH
    from ovseg.modeling.clip_branch import ClipArch

    options = InferenceOptions()
    for arch in (
        ClipArch(patch_size=16, vision_width=768),  # ViT-B/16
        ClipArch(patch_size=14, vision_width=1024),  # ViT-L/14
    ):
        for dtype, item in (("fp32", 4), ("int8", 4), ("bf16", 2)):
            per_crop = ((224 // arch.patch_size) ** 2 + 1) * 4 * arch.vision_width * item
            n = InferenceOptions(dtype=dtype).clip_batch("cpu", arch)
            assert 1 <= n <= CPU_CLIP_BATCH
            assert n * per_crop <= CPU_CLIP_HIDDEN_BYTES
            assert n == CPU_CLIP_BATCH or (n + 1) * per_crop > CPU_CLIP_HIDDEN_BYTES
        assert options.clip_batch("cpu", arch) < CPU_CLIP_BATCH
    tiny = ClipArch(patch_size=16, vision_width=64)
    assert options.clip_batch("cpu", tiny) == CPU_CLIP_BATCH
    assert options.clip_batch("cuda", tiny) == GPU_CLIP_BATCH
    assert InferenceOptions(fast=False).clip_batch("cpu", tiny) == 0


@pytest.mark.parametrize("batch, expect_max", [(None, 8), (3, 3), (0, None)])
def test_clip_batch_size_takes_effect(batch, expect_max):
    """On CPU the fast path encodes crops 8 at a time by default; 0 is one call; the
    features equal one call's up to rounding whatever the batching."""
    model = fresh_tiny()
    sizes = []

    def encoder(crops, region):
        sizes.append(crops.shape[0])
        return model.clip_adapter.encode_masked(crops, region)

    predictor = ovseg.Predictor(model, options=InferenceOptions(clip_batch_size=batch))
    predictor.clip_encoder = encoder
    predictor.set_image(photo())
    features = predictor.clip_features(0.3).features
    assert sum(sizes) == features.shape[0] > 8
    assert max(sizes) == (features.shape[0] if expect_max is None else expect_max)
    with torch.inference_mode():
        crops, _, inverse = model.clip_crops(
            predictor.input_image, predictor.proposals.masks, 0.3, True
        )
        whole = model.clip_adapter.encode_masked(crops.crops, crops.region_masks).float()
    whole = whole if inverse is None else whole[inverse]
    assert_close_to_scale(features, whole, rel=1e-5)


BF16_UNIT = 2.0**-8  # bf16 keeps 8 significant bits: one rounding moves a value by <= 2^-8


@torch.no_grad()
def test_bf16_against_the_official_fixture(official_tiny):
    """bf16 weights for the image side, stage by stage against official-tiny:

    - backbone (from the official input) and pixel decoder (from the official features):
      within 8 roundings' worth of each tensor's scale (measured 3.3 and 0.7);
    - CLIP tower on the official crops: features within 32 roundings (measured 16.5: the
      fixture projects the mean direction out of its features, which leaves them small next
      to the activations they come from), CLIP probabilities within 0.02 (measured 0.008);
    - the Predictor on the official proposals: fused scores within the bounds those CLIP
      probabilities imply (``fused_bounds``), for the ensemble and for CLIP alone.
    The fixture's own run is ill-conditioned past these stages (decoder q/k x8 and mask
    embedding x100: bf16 backbone features move the mask logits by ~40 roundings, and the
    person area scores are sigmoid tails below 1e-30), so the Predictor's own bf16 proposals
    are not compared label by label; each stage above is, with a bound from bf16 rounding."""
    import copy
    import json

    from ovseg.modeling.proposals import Proposals
    from tests.conftest import OFFICIAL_TINY
    from tests.official_compare import assert_within, check_clip_tower, fused_bounds

    model, out, image, names = official_tiny
    meta = json.loads((OFFICIAL_TINY / "meta.json").read_text())

    def official_proposals(_image):
        return Proposals(out["mask_pred_probs"].clone(), out["head.pred_embed"].clone())

    options = InferenceOptions(dtype="bf16", text_cache=False)
    predictor = ovseg.Predictor(copy.deepcopy(model), official_proposals, options)
    m = predictor.model
    assert m.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    assert m.clip_adapter.clip_model.visual.conv1.weight.dtype == torch.bfloat16
    assert m.sem_seg_head.predictor.query_embed.weight.dtype == torch.float32

    features = m.backbone(out["model_input_normalized_padded"][None].to(torch.bfloat16))
    for name in ("res2", "res3", "res4", "res5"):
        assert_close(features[name][0], out[f"backbone.{name}"], 0, atol_of_max=8 * BF16_UNIT)
    official = [out[f"backbone.res{i}"][None].to(torch.bfloat16) for i in range(2, 6)]
    mask_features = m.sem_seg_head.pixel_decoder(official)[0]
    assert_close(mask_features, out["pixel_decoder.mask_features"], 0, atol_of_max=8 * BF16_UNIT)
    check_clip_tower(m, out, 32 * BF16_UNIT, 0.02)

    hwc = image.permute(1, 2, 0).numpy()
    predictor.set_model_input(hwc, image.shape[1:])  # the fixture's own size: no resize
    ensemble, alone, clip_alone = fused_bounds(out, meta["clip_ensemble_weight"], 0.02)
    seg = predictor.predict(names)
    assert seg.sem_seg.dtype == torch.float32 and torch.isfinite(seg.sem_seg).all()
    assert_within(seg.sem_seg, out["sem_seg"], ensemble, "bf16 ensemble")
    assert_within(predictor.predict(names, clip_only=True).sem_seg, clip_alone, alone, "bf16 CLIP")


def test_top_k_keeps_k_proposals():
    predictor, full = predict(InferenceOptions())
    text = predictor.model.encode_text(NAMES)
    predictor.options = InferenceOptions(top_k=4)
    queries = predictor.top_k_queries(text)
    assert queries.tolist() == sorted(queries.tolist()) and len(queries) == 4
    seg = predictor.predict(NAMES, mask_threshold=0.3)
    assert seg.sem_seg.shape == full.sem_seg.shape
    predictor.options = InferenceOptions(top_k=10)  # k = all queries: the full result
    same = predictor.predict(NAMES, mask_threshold=0.3)
    assert torch.equal(same.sem_seg, full.sem_seg)
    with pytest.raises(ValueError, match="top_k"):
        InferenceOptions(top_k=0)


def test_options_are_checked():
    with pytest.raises(ValueError, match="dtype"):
        InferenceOptions(dtype="float16")


def test_crops_of_several_images_equal_each_image_alone():
    """``masked_crops_many(method="fast")`` makes the crops of images of different sizes in
    shared chunks; each crop is bit-identical to the crop of its image alone, and to the
    reference loop up to float rounding."""
    from ovseg.data.fast_crops import multi_image_masked_crops
    from ovseg.data.masked_crops import masked_crops_many

    g = torch.Generator().manual_seed(5)
    sizes = [(61, 97), (40, 50), (64, 64)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    masks = [random_masks(9, h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    joint, counts = masked_crops_many(images, masks, 224, method="fast")
    reference, ref_counts = masked_crops_many(images, masks, 224, method="reference")
    assert counts == ref_counts == [int(m.flatten(1).any(1).sum()) for m in masks]
    assert torch.equal(joint.region_masks, reference.region_masks)
    assert max_abs(joint.crops, reference.crops) < 2e-5
    start = 0
    for image, m, n in zip(images, masks, counts):
        alone = masked_crops(image, m, 224, method="fast")
        assert torch.equal(joint.crops[start : start + n], alone.crops)
        assert torch.equal(joint.boxes[start : start + n], alone.boxes)
        start += n
    # one crop per chunk: the same crops
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) * 255
    fill = torch.tensor(MEAN_FILL).view(3, 1, 1)
    valid = [m[m.flatten(1).any(1)] for m in masks]
    small, regions = multi_image_masked_crops(
        [im.float() for im in images], valid, joint.boxes, 224, mean, std, fill, 1
    )
    assert torch.equal(small, joint.crops) and torch.equal(regions, joint.region_masks)


def test_clip_features_of_several_images_equal_one_at_a_time():
    model = fresh_tiny()
    g = torch.Generator().manual_seed(6)
    sizes = [(64, 80), (48, 48)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    soft = [random_masks(10, h, w, seed=7 + i).float() * 0.9 for i, (h, w) in enumerate(sizes)]
    with torch.inference_mode():
        for fast in (False, True):
            joint = model.clip_image_features_batch(images, soft, fast=fast)
            for image, masks, got in zip(images, soft, joint):
                alone = model.clip_image_features(image, masks, fast=fast)
                assert torch.equal(got.valid, alone.valid)
                assert max_abs(got.features, alone.features) < 1e-4
        crops, counts, valids, inverses = model.clip_crops_many(
            images, soft, fast=True, crop_method="fast"
        )
        assert crops.crops.shape[0] == sum(counts)
        assert [len(i) for i in inverses] == [int(v.sum()) for v in valids]
