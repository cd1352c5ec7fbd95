"""Each MaskFormer loss term against values computed by hand; schedules."""

import math

import pytest
import torch

from ovseg.train.criterion import SetCriterion, dice_loss, sigmoid_focal_loss
from ovseg.train.schedule import WarmupSchedule

LN2 = math.log(2)


def test_focal_loss_by_hand():
    # logit 0 -> p = 0.5, BCE = ln 2; target 1: alpha 0.25, (1 - p_t)^2 = 0.25; target 0: 0.75
    got = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert got.item() == pytest.approx((0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2, rel=1e-6)
    # logit 2, target 1: p = sigmoid(2), BCE = log(1 + e^-2), weight 0.25 * (1 - p)^2
    p = 1 / (1 + math.exp(-2))
    got = sigmoid_focal_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]))
    assert got.item() == pytest.approx(0.25 * (1 - p) ** 2 * math.log(1 + math.exp(-2)), rel=1e-6)


def test_dice_loss_by_hand():
    # p = [0.5, 0.5], t = [1, 0]: 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)
    # perfect, confident prediction of an empty mask: 1 - (0 + 1) / (~0 + 0 + 1) ~ 0
    assert dice_loss(torch.full((1, 3), -30.0), torch.zeros(1, 3)).item() == pytest.approx(
        0, abs=1e-6
    )


def example():
    class_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # B=1, Q=2, K+1=3
    mask_logits = torch.tensor([[[[0.0, 0.0]], [[-3.0, -3.0]]]])  # (1, 2, 1, 2)
    targets = [{"labels": torch.tensor([0]), "masks": torch.tensor([[[1.0, 0.0]]])}]
    return class_logits, mask_logits, targets


def test_set_criterion_terms_by_hand():
    cls, masks, targets = example()
    criterion = SetCriterion(num_classes=2, no_object_weight=0.1, deep_supervision=False)
    total, terms = criterion([cls], [masks], targets)
    # query 0 is matched to the target (class 0); query 1 is no-object (weight 0.1)
    ce0 = math.log(math.exp(2) + 2) - 2
    ce1 = math.log(2 + math.e) - 1
    want_ce = (ce0 + 0.1 * ce1) / 1.1
    want_mask = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2  # one target mask
    want_dice = 1 / 3
    assert terms["loss_ce"].item() == pytest.approx(want_ce, rel=1e-6)
    assert terms["loss_mask"].item() == pytest.approx(want_mask, rel=1e-6)
    assert terms["loss_dice"].item() == pytest.approx(want_dice, rel=1e-6)
    assert total.item() == pytest.approx(want_ce + 20 * want_mask + want_dice, rel=1e-6)


def test_deep_supervision_adds_every_layer():
    cls, masks, targets = example()
    one, _ = SetCriterion(2, deep_supervision=False)([cls], [masks], targets)
    total, terms = SetCriterion(2, deep_supervision=True)([cls, cls], [masks, masks], targets)
    assert total.item() == pytest.approx(2 * one.item(), rel=1e-6)
    assert terms["loss_aux"].item() == pytest.approx(one.item(), rel=1e-6)


def test_criterion_rejects_wrong_class_count():
    cls, masks, targets = example()
    with pytest.raises(ValueError, match="columns"):
        SetCriterion(5)([cls], [masks], targets)


def test_schedules():
    cos = WarmupSchedule("cosine", total_steps=10, warmup_steps=0)
    assert [round(cos(s), 6) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    poly = WarmupSchedule("poly", total_steps=10, power=0.9)
    assert poly(5) == pytest.approx(0.5**0.9)
    warm = WarmupSchedule("constant", total_steps=10, warmup_steps=4, warmup_factor=0.0)
    assert [warm(s) for s in (0, 2, 4, 8)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        WarmupSchedule("step", 10)


def test_open_clip_warmup_by_hand():
    """open_clip's ``cosine_lr``: ``lr * (s + 1) / W`` during warmup, then
    ``0.5 * (1 + cos(pi * (s - W) / (T - W)))``."""
    import math

    sched = WarmupSchedule("cosine", total_steps=1000, warmup_steps=100, warmup_mode="open_clip")
    assert sched(0) == pytest.approx(0.01)
    assert sched(49) == pytest.approx(0.5)
    assert sched(99) == pytest.approx(1.0)
    assert sched(100) == pytest.approx(1.0)
    assert sched(550) == pytest.approx(0.5 * (1 + math.cos(math.pi * 450 / 900)))
    with pytest.raises(ValueError, match="warmup_mode"):
        WarmupSchedule("cosine", 10, 2, warmup_mode="exponential")
