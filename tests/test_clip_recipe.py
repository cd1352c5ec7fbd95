"""The official CLIP-adaptation recipe: loss, augmentation, optimizer groups, recipes."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ovseg.train.clip_adaptation import ClipOptions, clip_contrastive_loss, recipe_train_config
from ovseg.train.clip_recipes import RECIPES, official_param_groups
from ovseg.train.pairs import CropAugment, PairDataset
from tests.train_fixtures import make_tiny_model, pairs_folder

# ---- loss ---------------------------------------------------------------------------------


def test_contrastive_loss_matches_a_hand_computation():
    # three unit image / text features in 2-d, given by their angles
    img = [(1.0, 0.0), (0.0, 1.0), (math.cos(1.0), math.sin(1.0))]
    txt = [(math.cos(0.2), math.sin(0.2)), (math.cos(1.3), math.sin(1.3)), (-1.0, 0.0)]
    s = 7.5
    dot = [[s * (a[0] * b[0] + a[1] * b[1]) for b in txt] for a in img]
    # image -> text: row i, target column i; text -> image: column j, target row j
    i2t = sum(-dot[i][i] + math.log(sum(math.exp(dot[i][j]) for j in range(3))) for i in range(3))
    t2i = sum(-dot[j][j] + math.log(sum(math.exp(dot[i][j]) for i in range(3))) for j in range(3))
    expected = (i2t / 3 + t2i / 3) / 2
    got = clip_contrastive_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(s))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_treats_a_repeated_noun_as_a_negative():
    # two crops of the same noun: identical text rows; the official loss does nothing special,
    # so each crop's positive competes with an equal-scoring copy: loss >= log 2 / 2 per side
    feats = torch.eye(2)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    got = clip_contrastive_loss(feats, text, torch.tensor(100.0)).item()
    # i2t row 0: logits (100, 100) -> log 2; row 1: (0, 0) -> log 2;
    # t2i col 0: (100, 0) -> ~0; col 1: (100, 0), target row 1 -> 100
    expected = ((math.log(2) + math.log(2)) / 2 + (math.log1p(math.exp(-100)) + 100) / 2) / 2
    assert got == pytest.approx(expected, rel=1e-6)


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


# ---- optimizer groups ------------------------------------------------------------------------


def _by_group(groups):
    return {g["group"]: (set(g["names"]), g["weight_decay"]) for g in groups}


def _block_names(prefix, layers, suffixes):
    return {f"{prefix}.resblocks.{b}.{s}" for b in range(layers) for s in suffixes}


GAINS_BIASES = ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.in_proj_bias",
                "attn.out_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias")  # fmt: skip
MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def test_official_groups_ft_name_by_name():
    from ovseg.train.clip_adaptation import prepare_for_mode

    model = make_tiny_model()  # ViT: 3 visual blocks
    prepare_for_mode(model, "ft", train_logit_scale=True)
    groups = _by_group(official_param_groups(model.clip_adapter.clip_model, 0.2, 0.0))
    no_decay = {"logit_scale", "visual.class_embedding", "visual.ln_pre.weight",
                "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"}  # fmt: skip
    no_decay |= _block_names("visual.transformer", 3, GAINS_BIASES)
    decay = {"visual.conv1.weight", "visual.positional_embedding", "visual.proj"}
    decay |= _block_names("visual.transformer", 3, MATRICES)
    assert groups == {"no_decay": (no_decay, 0.0), "decay": (decay, 0.2)}


def test_official_groups_follow_the_rule_on_every_clip_tensor():
    # every CLIP tensor trainable (text tower too): the rule on shapes and names, stated here
    model = make_tiny_model()
    clip = model.clip_adapter.clip_model
    clip.requires_grad_(True)
    groups = _by_group(official_param_groups(clip, 0.1, 0.05))
    names = {n for n, _ in clip.named_parameters()}
    expected_no_decay = {
        n
        for n, p in clip.named_parameters()
        if p.dim() <= 1 or "ln" in n or "bn" in n or "bias" in n or "logit_scale" in n
    }
    assert groups["no_decay"] == (expected_no_decay, 0.0)
    assert groups["mask_prompts"] == ({"visual.mask_embedding"}, 0.05)
    assert groups["decay"][0] == names - expected_no_decay - {"visual.mask_embedding"}
    # embeddings with 2 dims are decayed by the official rule; the text gains are not
    assert {"token_embedding.weight", "positional_embedding", "text_projection"} <= groups["decay"][
        0
    ]
    assert {"ln_final.weight", "ln_final.bias"} <= groups["no_decay"][0]
    assert _block_names("transformer", 2, GAINS_BIASES) <= groups["no_decay"][0]


def test_official_groups_mpt():
    from ovseg.train.clip_adaptation import prepare_for_mode

    model = make_tiny_model()
    prepare_for_mode(model, "mpt", train_logit_scale=True)
    groups = _by_group(official_param_groups(model.clip_adapter.clip_model, 0.2, 0.0))
    assert groups == {"no_decay": ({"logit_scale"}, 0.0),
                      "mask_prompts": ({"visual.mask_embedding"}, 0.0)}  # fmt: skip


# ---- recipes -----------------------------------------------------------------------------------


def test_recipes_hold_the_official_script_values():
    # values read off open_clip_training/src/scripts/*.sh and params.py
    ft_l, ft_b, mpt_l = RECIPES["ft-vitL14"], RECIPES["ft-vitB16"], RECIPES["mpt+ft-vitL14"]
    assert (ft_l.lr, ft_l.weight_decay, ft_l.global_batch) == (5e-6, 0.2, 128)
    assert ft_b.global_batch == 512 and ft_b.lr == 5e-6
    assert (mpt_l.lr, mpt_l.mask_weight_decay, mpt_l.prompt_depth) == (0.05, 0.0, 3)
    for r in RECIPES.values():
        assert (r.adam_betas, r.adam_eps, r.warmup_steps, r.epochs) == ((0.9, 0.98), 1e-6, 100, 5)
        assert (r.crop_scale, r.loss, r.text, r.logit_scale) == (
            (0.9, 1.0), "contrastive", "raw", "learned")  # fmt: skip
    config = recipe_train_config(ft_l, "unused", world_size=4)
    assert (config.batch_size, config.adam_betas, config.adam_eps) == (32, (0.9, 0.98), 1e-6)
    assert config.warmup_steps == 100 and config.warmup_mode == "open_clip"
    options = ClipOptions.from_recipe(mpt_l)
    assert options.augment == CropAugment((0.9, 1.0), (3 / 4, 4 / 3), "official")
    assert options.prompt_depth == 3 and options.decay == "official"


def test_print_recipe_cli():
    out = subprocess.run(
        [sys.executable, "-m", "ovseg", "train-clip", "--recipe", "ft-vitB16", "--print-recipe"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    shown = json.loads(out)
    for key in ("lr", "weight_decay", "adam_betas", "adam_eps", "warmup", "schedule", "epochs",
                "global_batch", "image_size", "crop_scale", "mask_rule", "loss", "prompt_depth",
                "trains", "no_decay_rule", "sources"):  # fmt: skip
        assert key in shown
    assert shown["global_batch"] == 512 and shown["mode"] == "ft"
