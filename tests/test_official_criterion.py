"""The set criterion against the official SetCriterion + HungarianMatcher
(fixtures/official-criterion: matching, cost matrices, every loss term, gradients)."""

import json

import pytest
import torch

from ovseg.train.criterion import SetCriterion
from ovseg.train.matcher import (
    HungarianMatcher,
    pairwise_dice_cost,
    pairwise_focal_cost,
    resize_targets,
)
from tests.conftest import FIXTURES, require

FOLDER = FIXTURES / "official-criterion"
LAYERS = {"aux0": "aux_outputs.0.", "aux1": "aux_outputs.1.", "main": ""}
SUFFIX = {"aux0": "_0", "aux1": "_1", "main": ""}


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    require(FOLDER)
    tensors = load_file(str(FOLDER / "criterion.safetensors"))
    meta = json.loads((FOLDER / "meta.json").read_text())
    targets = [
        {"labels": tensors[f"targets.{b}.labels"], "masks": tensors[f"targets.{b}.masks"].float()}
        for b in range(meta["batch_B"])
    ]
    return tensors, meta, targets


def inputs(tensors, layer, grad=False):
    cls = tensors[f"inputs.{LAYERS[layer]}pred_logits"].clone().requires_grad_(grad)
    masks = tensors[f"inputs.{LAYERS[layer]}pred_masks"].clone().requires_grad_(grad)
    return cls, masks


def criterion(meta):
    m = meta["matcher"]
    return SetCriterion(
        meta["num_classes_K"],
        HungarianMatcher(m["cost_class"], m["cost_mask"], m["cost_dice"]),
        no_object_weight=meta["eos_coef"],
        weights={k: meta["weight_dict"][k] for k in ("loss_ce", "loss_mask", "loss_dice")},
    )


@pytest.mark.parametrize("layer", list(LAYERS))
def test_cost_matrices_and_matching(fixture, layer):
    tensors, meta, targets = fixture
    cls, masks = inputs(tensors, layer)
    matcher = criterion(meta).matcher
    for b, target in enumerate(targets):
        key = f"cost.{layer}.{b}."
        pred = masks[b].flatten(1)
        tgt = resize_targets(target["masks"], masks.shape[-2:]).flatten(1)
        torch.testing.assert_close(
            pairwise_focal_cost(pred, tgt), tensors[key + "mask_focal"], rtol=1e-6, atol=1e-7
        )
        torch.testing.assert_close(
            pairwise_dice_cost(pred, tgt), tensors[key + "dice"], rtol=1e-6, atol=1e-7
        )
        total = matcher.cost_matrix(cls[b], masks[b], target["labels"], target["masks"])
        torch.testing.assert_close(total, tensors[key + "total"], rtol=1e-6, atol=1e-6)
        class_only = HungarianMatcher(1.0, 0.0, 0.0)
        got_class = class_only.cost_matrix(cls[b], masks[b], target["labels"], target["masks"])
        torch.testing.assert_close(got_class, tensors[key + "class"], rtol=1e-6, atol=1e-7)
    for b, (rows, cols) in enumerate(matcher(cls, masks, targets)):
        assert rows.tolist() == tensors[f"indices.{layer}.{b}.pred"].tolist()
        assert cols.tolist() == tensors[f"indices.{layer}.{b}.tgt"].tolist()


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_loss_term(fixture, layer):
    tensors, meta, targets = fixture
    cls, masks = inputs(tensors, layer)
    losses = criterion(meta).layer_losses(cls, masks, targets)
    for name, value in losses.items():
        want = meta["loss_unweighted"][name + SUFFIX[layer]]
        assert value.item() == pytest.approx(want, rel=1e-6), name


def test_total_and_gradients_of_every_input(fixture):
    tensors, meta, targets = fixture
    layers = {name: inputs(tensors, name, grad=True) for name in LAYERS}
    order = ["aux0", "aux1", "main"]  # decoder order, last layer last
    total, terms = criterion(meta)(
        [layers[n][0] for n in order], [layers[n][1] for n in order], targets
    )
    assert total.item() == pytest.approx(meta["loss_total"], rel=1e-6)
    aux = sum(v for k, v in meta["loss_weighted"].items() if k[-2:] in ("_0", "_1"))
    assert terms["loss_aux"].item() == pytest.approx(aux, rel=1e-6)
    total.backward()
    for name, (cls, masks) in layers.items():
        for tensor, key in ((cls, "pred_logits"), (masks, "pred_masks")):
            want = tensors[f"grad.{LAYERS[name]}{key}"]
            scale = want.abs().max().item()
            err = (tensor.grad - want).abs().max().item()
            assert err <= 1e-5 * scale, (name, key, err, scale)


def test_quarter_resolution_variant_differs_from_official(fixture):
    """Our cheaper variant (loss at 1/4 on downsampled targets) is not the official loss."""
    tensors, meta, targets = fixture
    cls, masks = inputs(tensors, "main")
    quarter = SetCriterion(meta["num_classes_K"], mask_loss_resolution="quarter")
    got = quarter.layer_losses(cls, masks, targets)["loss_mask"].item()
    assert got != pytest.approx(meta["loss_unweighted"]["loss_mask"], rel=1e-3)
    with pytest.raises(ValueError, match="mask_loss_resolution"):
        SetCriterion(3, mask_loss_resolution="half")
