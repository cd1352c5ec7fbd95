"""Parameter groups, AdamW settings, clipping and schedule against the official optimizer
(fixtures/official-optimizer: every parameter of both full-size models, by name)."""

import json

import pytest
import torch

from ovseg.modeling.build import build_ovseg
from ovseg.modeling.variants import MODELS
from ovseg.train.param_groups import param_groups
from ovseg.train.proposal_training import freeze_for_proposals, recipe_param_groups
from ovseg.train.recipes import get_recipe
from ovseg.train.schedule import WarmupSchedule
from tests.conftest import FIXTURES, require

CASES = [
    ("swinB.json", "swinB-coco-stuff", "ovseg-swinB-vitL14"),
    ("R101c.json", "R101c-coco-stuff", "ovseg-R101c-vitB16"),
]


def official(name):
    return json.loads((require(FIXTURES / "official-optimizer") / name).read_text())


@pytest.mark.parametrize("fixture,recipe_name,model_name", CASES)
def test_every_parameter_lr_decay_and_frozen(fixture, recipe_name, model_name):
    want = official(fixture)
    recipe = get_recipe(recipe_name)
    assert recipe["model"] == model_name
    with torch.device("meta"):
        model = build_ovseg(MODELS[model_name]())
    freeze_for_proposals(model, recipe["freeze_at"])
    assert sorted(n for n, _ in model.named_parameters()) == sorted(want["params"])
    groups = recipe_param_groups(model, recipe)
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    trainable = {n for n, p in want["params"].items() if p["in_optimizer"]}
    assert set(got) == trainable
    for name, p in want["params"].items():
        assert p["requires_grad"] == (name in got), name
        if name in got:
            assert got[name][0] == pytest.approx(p["lr"], rel=1e-12), name
            assert got[name][1] == pytest.approx(p["weight_decay"], rel=1e-12, abs=0), name
    # the optimizer sees every trainable tensor once
    names = [n for g in groups for n in g["names"]]
    assert len(names) == len(set(names)) == want["optimizer"]["num_trainable_tensors"]
    by_group = {
        tuple(float(part.split("=")[1]) for part in key.split()): n
        for key, n in want["counts"]["by_lr_wd"].items()
    }
    assert {(g["lr"], g["weight_decay"]): len(g["names"]) for g in groups} == by_group


@pytest.mark.parametrize("fixture,recipe_name,model_name", CASES)
def test_adamw_clipping_and_schedule(fixture, recipe_name, model_name):
    want = official(fixture)
    recipe = get_recipe(recipe_name)
    assert list(recipe["adam_betas"]) == want["optimizer"]["betas"]
    assert recipe["adam_eps"] == want["optimizer"]["eps"]
    assert want["optimizer"]["defaults"]["amsgrad"] is False
    clip = want["gradient_clipping"]
    assert clip["cfg.SOLVER.CLIP_GRADIENTS"]["CLIP_TYPE"] == "full_model"
    assert recipe["grad_clip"] == clip["observed_calls_in_one_step"][0]["max_norm"]
    sched = want["scheduler"]
    assert (recipe["max_steps"], recipe["warmup_steps"]) == (
        sched["max_iters"],
        sched["warmup_iters"],
    )
    assert (recipe["warmup_factor"], recipe["poly_power"]) == (
        sched["warmup_factor"],
        sched["power"],
    )
    schedule = WarmupSchedule(
        recipe["schedule"],
        recipe["max_steps"],
        recipe["warmup_steps"],
        warmup_factor=recipe["warmup_factor"],
        power=recipe["poly_power"],
    )
    for step, row in sched["multiplier_at_iteration"].items():
        assert schedule(int(step)) == pytest.approx(row["multiplier"], rel=1e-9), step


def test_decay_rules_on_a_small_module():
    """Rules by hand: norm and embedding parameters get 0, bias is not special, backbone lr."""
    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    model.head = torch.nn.Embedding(3, 2)
    model.table = torch.nn.Module()
    model.table.relative_position_bias_table = torch.nn.Parameter(torch.zeros(2))
    groups = param_groups(model, 1.0, 0.5, backbone_multiplier=0.1)
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert got == {
        "backbone.0.weight": (0.1, 0.5),
        "backbone.0.bias": (0.1, 0.5),
        "backbone.1.weight": (0.1, 0.0),
        "backbone.1.bias": (0.1, 0.0),
        "head.weight": (1.0, 0.0),
        "table.relative_position_bias_table": (1.0, 0.0),
    }
