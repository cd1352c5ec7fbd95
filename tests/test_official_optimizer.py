"""Parameter groups, AdamW settings, clipping and schedule against the official optimizer
(fixtures/official-optimizer: every parameter of both full-size models, by name), and the
real ``Trainer`` built from each recipe, step by step: the lr each ``optimizer.step`` uses
against the fixture's multipliers, and every update against AdamW worked out by hand."""

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


# ---- the Trainer's own optimizer and scheduler, step by step --------------------------------


class Planted(torch.nn.Module):
    """A float64 stand-in model whose gradients are known: loss = sum_p <c_p, p> with the
    coefficients c_p of the batch, so d loss / d p = c_p exactly. Its modules exercise the
    official group rules: a backbone (lr x multiplier), a head, a norm (no decay)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)
        self.norm = torch.nn.LayerNorm(3)
        self.double()
        self.batches = []

    def forward(self, batch):
        self.batches.append(batch)
        loss = sum((batch[n] * p).sum() for n, p in self.named_parameters())
        return loss, {}


def coefficients(model, n: int, seed: int = 0) -> list[dict]:
    """Per-step gradients over many magnitudes, some so small that, once clipped, they are
    comparable to eps (where a Trainer that dropped eps would step twice as far)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        item = {}
        for name, p in model.named_parameters():
            scale = 10.0 ** (torch.rand(p.shape, generator=g, dtype=torch.float64) * 8 - 7)
            item[name] = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
        out.append(item)
    return out


class Stop(Exception):
    pass


def run_trainer(tmp_path, recipe_name, steps, **overrides):
    """Run the real ``Trainer.fit`` with the recipe's ``TrainConfig`` (``overrides`` on top)
    on ``Planted`` for ``steps`` steps; record what each ``optimizer.step`` saw."""
    from ovseg.train import distributed
    from ovseg.train.proposal_training import recipe_train_config, resolve_settings
    from ovseg.train.trainer import Trainer, TrainTask

    settings = resolve_settings(recipe_name)
    config = recipe_train_config(
        settings, str(tmp_path), batch_size=1, precision="fp32", progress=False,
        log_every=10**6, checkpoint_every=10**6, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Planted()
    groups = param_groups(
        model, config.lr, config.weight_decay, settings["backbone_lr_mult"],
        settings["weight_decay_norm"], settings["weight_decay_embed"],
    )  # fmt: skip
    data = coefficients(model, 128)
    task = TrainTask(model, model, groups, data, collate=lambda items: items[0])
    groups = [dict(g) for g in groups]  # as built: torch.optim keeps and updates the dicts
    trainer = Trainer(task, config, distributed.DistInfo(), [stop_after(steps)])
    seen = []

    def before_step(optimizer, args, kwargs):
        seen.append(
            {
                "lr": [g["lr"] for g in optimizer.param_groups],
                "params": [
                    [p.detach().clone() for p in g["params"]] for g in optimizer.param_groups
                ],
                "grads": [[p.grad.clone() for p in g["params"]] for g in optimizer.param_groups],
            }
        )

    trainer.optimizer.register_step_pre_hook(before_step)
    with pytest.raises(Stop):
        trainer.fit()
    return trainer, config, model, groups, seen


def stop_after(steps):
    def hook(step, row):
        if step >= steps:
            raise Stop

    return hook


def adamw_by_hand(seen, model, groups, batches, multiplier, config):
    """Replay the recorded steps with AdamW written out (torch's AdamW = the official
    optimizer: decoupled decay, bias-corrected moments) after the full-model clip
    (official ``clip_grad_norm_(all params, max_norm)``: coefficient max_norm / (norm +
    1e-6), capped at 1); check each step's gradients, lr and update."""
    b1, b2 = config.adam_betas
    state = {}
    for t, (step, batch) in enumerate(zip(seen, batches)):
        raw = [[batch[n] for n in g["names"]] for g in groups]
        norm = torch.cat([r.flatten() for rows in raw for r in rows]).norm().item()
        coef = min(1.0, config.grad_clip / (norm + 1e-6))
        for gi, group in enumerate(groups):
            lr = group["lr"] * multiplier(t)
            assert step["lr"][gi] == pytest.approx(lr, rel=1e-12), (t, gi)
            for pi, name in enumerate(group["names"]):
                grad = raw[gi][pi] * coef
                torch.testing.assert_close(step["grads"][gi][pi], grad, rtol=1e-12, atol=0)
                m, v = state.get(name, (0.0, 0.0))
                m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
                state[name] = (m, v)
                m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
                p = step["params"][gi][pi]
                expected = p * (1 - lr * group["weight_decay"]) - lr * m_hat / (
                    v_hat.sqrt() + config.adam_eps
                )
                after = seen[t + 1]["params"][gi][pi] if t + 1 < len(seen) else None
                if after is None:
                    after = dict(model.named_parameters())[name].detach()
                # relative to the step taken, so a dropped term of 1e-3 of it shows
                step_size = (expected - p).abs().max().item()
                assert (after - expected).abs().max().item() <= 1e-7 * step_size, (t, name)


@pytest.mark.parametrize("fixture,recipe_name,model_name", CASES)
def test_trainer_optimizer_and_lr_at_every_step(tmp_path, fixture, recipe_name, model_name):
    """The Trainer built from the recipe: its optimizer is AdamW with the official betas,
    eps and per-group lr / decay; the lr each ``optimizer.step`` uses at iteration i is
    base lr x the official multiplier (fixture, iterations 0, 1, 100; the Trainer's own
    scheduler at 1500, 60000, 119999), and every step of the first 101 is AdamW by hand."""
    want = official(fixture)
    official_opt, sched = want["optimizer"], want["scheduler"]
    trainer, config, model, groups, seen = run_trainer(tmp_path, recipe_name, 101)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    for group, ours in zip(optimizer.param_groups, groups):
        assert list(group["betas"]) == official_opt["betas"] == official_opt["defaults"]["betas"]
        assert group["eps"] == official_opt["eps"]
        for key in ("amsgrad", "maximize", "decoupled_weight_decay"):
            assert group[key] == official_opt["defaults"][key], key
        assert (group["initial_lr"], group["weight_decay"]) == (ours["lr"], ours["weight_decay"])
    assert (
        config.grad_clip == want["gradient_clipping"]["observed_calls_in_one_step"][0]["max_norm"]
    )
    assert trainer.total_steps == sched["max_iters"]
    multipliers = {int(i): row["multiplier"] for i, row in sched["multiplier_at_iteration"].items()}
    assert len(seen) == 101
    for i, m in multipliers.items():
        if i < len(seen):
            for lr, group in zip(seen[i]["lr"], groups):
                assert lr == pytest.approx(group["lr"] * m, rel=1e-9), i
        assert trainer.scheduler.lr_lambdas[0](i) == pytest.approx(m, rel=1e-9), i
    adamw_by_hand(seen, model, groups, model.batches, trainer.schedule, config)


def test_trainer_uses_its_betas_eps_decay_and_clip(tmp_path):
    """The official values are torch's defaults, so a Trainer that ignored them would pass
    the test above; with other values the steps must still be AdamW by hand with them."""
    overrides = dict(adam_betas=(0.5, 0.9), adam_eps=1e-6, weight_decay=0.3, grad_clip=1e-3,
                     schedule="constant", warmup_steps=3)  # fmt: skip
    trainer, config, model, groups, seen = run_trainer(tmp_path, "R101c-coco-stuff", 8, **overrides)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    assert [s["lr"][0] for s in seen[:4]] == pytest.approx(
        [groups[0]["lr"] * m for m in (1e-6, (1 - 1e-6) / 3 + 1e-6, (1 - 1e-6) * 2 / 3 + 1e-6, 1)]
    )
    adamw_by_hand(seen, model, groups, model.batches, trainer.schedule, config)
