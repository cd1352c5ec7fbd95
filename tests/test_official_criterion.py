"""The set criterion against the official SetCriterion + HungarianMatcher
(fixtures/official-criterion: matching, cost matrices, every loss term, gradients).

Every count, layer name and setting comes from the fixture's ``meta.json``: the decoder
layers are ``aux0 .. aux{n-1}, main`` with ``n = num_aux_layers``, the batch is ``batch_B``,
the loss settings are ``matcher`` / ``weight_dict`` / ``eos_coef`` / ``num_classes_K``. Each
test also runs on trimmed copies of the fixture (``trimmed_copy``: the last aux layer's
tensors dropped and ``num_aux_layers`` lowered, and a copy with no aux layer at all), which
a test that hard-codes the layers of the one run fails. ``OVSEG_OFFICIAL_CRITERION`` points
the tests at another official criterion run laid out the same way.
"""

import json
import os
import re
from pathlib import Path

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

FOLDER = Path(os.environ.get("OVSEG_OFFICIAL_CRITERION", FIXTURES / "official-criterion"))
TERMS = ("loss_ce", "loss_mask", "loss_dice")


def layer_names(meta: dict) -> list[str]:
    """The decoder layers in the criterion's order (last layer last): aux0 .. main."""
    return [f"aux{i}" for i in range(meta["num_aux_layers"])] + ["main"]


def input_prefix(layer: str) -> str:
    """Key prefix of a layer's inputs and gradients: "" or "aux_outputs.{i}."."""
    return "" if layer == "main" else f"aux_outputs.{layer[3:]}."


def loss_suffix(layer: str) -> str:
    """Suffix of a layer's loss names in ``weight_dict``: "" or "_{i}"."""
    return "" if layer == "main" else f"_{layer[3:]}"


def trimmed_copy(folder: Path, out: Path, drop: int) -> Path:
    """Copy the fixture into ``out`` without its last ``drop`` aux layers (fewer if it has
    fewer): their inputs, gradients, matchings, cost matrices and loss terms are removed,
    ``num_aux_layers`` is lowered and ``loss_total`` is the sum of the weighted terms left.
    Each layer's loss depends on that layer's inputs alone, so every value kept is what the
    official criterion gives for the shallower decoder."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((folder / "meta.json").read_text())
    n = meta["num_aux_layers"]
    gone = list(range(n - min(drop, n), n))

    def dropped(key: str) -> bool:
        parts = key.split(".")
        loss = re.fullmatch(r"loss_\w+?_(\d+)", parts[-1])
        return any(
            f"aux{i}" in parts or f".aux_outputs.{i}." in f".{key}" or (loss and loss[1] == str(i))
            for i in gone
        )

    tensors = load_file(str(folder / "criterion.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v for k, v in tensors.items() if not dropped(k)}, str(out / "criterion.safetensors")
    )
    meta["num_aux_layers"] = n - len(gone)
    for key in ("weight_dict", "loss_unweighted", "loss_weighted", "indices", "tensors"):
        meta[key] = {k: v for k, v in meta[key].items() if not dropped(k)}
    meta["loss_total"] = sum(meta["loss_weighted"].values())
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module", params=["as-run", "one-aux-layer-fewer", "no-aux-layer"])
def fixture(request, tmp_path_factory):
    """(tensors, meta, targets) of the official run, or of a trimmed copy of it."""
    from safetensors.torch import load_file

    folder = require(FOLDER)
    if request.param != "as-run":
        n = json.loads((folder / "meta.json").read_text())["num_aux_layers"]
        drop = 1 if request.param == "one-aux-layer-fewer" else n
        folder = trimmed_copy(folder, tmp_path_factory.mktemp(request.param), drop)
    tensors = load_file(str(folder / "criterion.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    layers = layer_names(meta)
    # the fixture describes itself consistently: one matching and three weighted terms per layer
    assert set(meta["indices"]) == set(layers)
    assert set(meta["weight_dict"]) == {t + loss_suffix(n) for n in layers for t in TERMS}
    targets = [
        {"labels": tensors[f"targets.{b}.labels"], "masks": tensors[f"targets.{b}.masks"].float()}
        for b in range(meta["batch_B"])
    ]
    return tensors, meta, targets


def inputs(tensors, layer, grad=False):
    cls = tensors[f"inputs.{input_prefix(layer)}pred_logits"].clone().requires_grad_(grad)
    masks = tensors[f"inputs.{input_prefix(layer)}pred_masks"].clone().requires_grad_(grad)
    return cls, masks


def criterion(meta):
    """The criterion with the fixture's settings. The official ``weight_dict`` repeats the
    last layer's weights for every aux layer; ``SetCriterion`` takes them once."""
    m = meta["matcher"]
    weights = {k: meta["weight_dict"][k] for k in TERMS}
    for layer in layer_names(meta):
        assert {k: meta["weight_dict"][k + loss_suffix(layer)] for k in TERMS} == weights
    return SetCriterion(
        meta["num_classes_K"],
        HungarianMatcher(m["cost_class"], m["cost_mask"], m["cost_dice"]),
        no_object_weight=meta["eos_coef"],
        weights=weights,
        deep_supervision=meta["num_aux_layers"] > 0,
    )


def test_cost_matrices_and_matching(fixture):
    tensors, meta, targets = fixture
    matcher = criterion(meta).matcher
    for layer in layer_names(meta):
        cls, masks = inputs(tensors, layer)
        assert cls.shape[:2] == (meta["batch_B"], meta["num_queries_Q"])
        assert list(masks.shape[-2:]) == meta["pred_mask_hw"]
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
            assert rows.tolist() == tensors[f"indices.{layer}.{b}.pred"].tolist(), layer
            assert cols.tolist() == tensors[f"indices.{layer}.{b}.tgt"].tolist(), layer
            assert [rows.tolist(), cols.tolist()] == meta["indices"][layer][b], layer


def test_every_loss_term(fixture):
    tensors, meta, targets = fixture
    crit = criterion(meta)
    for layer in layer_names(meta):
        cls, masks = inputs(tensors, layer)
        losses = crit.layer_losses(cls, masks, targets)
        assert set(losses) == set(TERMS)
        for name, value in losses.items():
            key = name + loss_suffix(layer)
            assert value.item() == pytest.approx(meta["loss_unweighted"][key], rel=1e-6), key
            weighted = crit.weights[name] * value.item()
            assert weighted == pytest.approx(meta["loss_weighted"][key], rel=1e-6), key


def test_total_and_gradients_of_every_input(fixture):
    tensors, meta, targets = fixture
    order = layer_names(meta)  # decoder order, last layer last
    layers = {name: inputs(tensors, name, grad=True) for name in order}
    total, terms = criterion(meta)(
        [layers[n][0] for n in order], [layers[n][1] for n in order], targets
    )
    assert total.item() == pytest.approx(meta["loss_total"], rel=1e-6)
    aux = [t + loss_suffix(n) for n in order[:-1] for t in TERMS]
    if aux:
        want = sum(meta["loss_weighted"][k] for k in aux)
        assert terms["loss_aux"].item() == pytest.approx(want, rel=1e-6)
    else:
        assert "loss_aux" not in terms
    for name in TERMS:
        assert terms[name].item() == pytest.approx(meta["loss_unweighted"][name], rel=1e-6)
    total.backward()
    for name, (cls, masks) in layers.items():
        for tensor, key in ((cls, "pred_logits"), (masks, "pred_masks")):
            want = tensors[f"grad.{input_prefix(name)}{key}"]
            scale = want.abs().max().item()
            err = (tensor.grad - want).abs().max().item()
            assert err <= 1e-5 * scale, (name, key, err, scale)


def test_trimmed_copies_have_fewer_layers(tmp_path):
    """The trimming the tests above run on really removes layers (keys and meta)."""
    from safetensors.torch import load_file

    folder = require(FOLDER)
    n = json.loads((folder / "meta.json").read_text())["num_aux_layers"]
    trimmed = trimmed_copy(folder, tmp_path / "t", 1)
    meta = json.loads((trimmed / "meta.json").read_text())
    keys = set(load_file(str(trimmed / "criterion.safetensors")))
    assert meta["num_aux_layers"] == max(n - 1, 0)
    if n:
        last = n - 1
        assert f"inputs.aux_outputs.{last}.pred_logits" not in keys
        assert f"indices.aux{last}.0.pred" not in keys and f"aux{last}" not in meta["indices"]
        assert f"loss_ce_{last}" not in meta["loss_weighted"]
        assert meta["loss_total"] < json.loads((folder / "meta.json").read_text())["loss_total"]
    assert "inputs.pred_logits" in keys and "grad.pred_masks" in keys


def test_quarter_resolution_variant_differs_from_official(fixture):
    """Our cheaper variant (loss at 1/4 on downsampled targets) is not the official loss."""
    tensors, meta, targets = fixture
    cls, masks = inputs(tensors, "main")
    quarter = SetCriterion(meta["num_classes_K"], mask_loss_resolution="quarter")
    got = quarter.layer_losses(cls, masks, targets)["loss_mask"].item()
    assert got != pytest.approx(meta["loss_unweighted"]["loss_mask"], rel=1e-3)
    with pytest.raises(ValueError, match="mask_loss_resolution"):
        SetCriterion(3, mask_loss_resolution="half")
