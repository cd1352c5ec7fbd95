"""Hungarian matching equals brute force; pairwise costs equal the per-pair losses."""

import itertools

import pytest
import torch

from ovseg.train.criterion import dice_loss, sigmoid_focal_loss
from ovseg.train.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_focal_cost


def brute_force(cost: torch.Tensor) -> float:
    q, m = cost.shape
    return min(
        sum(cost[i, j].item() for i, j in zip(perm, range(m)))
        for perm in itertools.permutations(range(q), m)
    )


@pytest.mark.parametrize("seed,q,m", [(0, 3, 3), (1, 5, 2), (2, 6, 4), (3, 4, 1)])
def test_matcher_equals_brute_force(seed, q, m):
    g = torch.Generator().manual_seed(seed)
    k, h, w = 3, 4, 5
    class_logits = torch.randn(1, q, k + 1, generator=g) * 3
    mask_logits = torch.randn(1, q, h, w, generator=g) * 2
    target = {
        "labels": torch.randint(0, k, (m,), generator=g),
        "masks": (torch.rand(m, h, w, generator=g) > 0.5).float(),
    }
    matcher = HungarianMatcher(1.0, 20.0, 1.0)
    ((rows, cols),) = matcher(class_logits, mask_logits, [target])
    cost = matcher.cost_matrix(class_logits[0], mask_logits[0], target["labels"], target["masks"])
    assert len(rows) == m and sorted(cols.tolist()) == list(range(m))
    assert len(set(rows.tolist())) == m
    found = cost[rows, cols].sum().item()
    assert found == pytest.approx(brute_force(cost), abs=1e-5)


def test_pairwise_costs_equal_per_pair_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=g)
    targets = (torch.rand(3, 30, generator=g) > 0.4).float()
    focal = pairwise_focal_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for i in range(4):
        for j in range(3):
            a, b = logits[i : i + 1], targets[j : j + 1]
            assert focal[i, j].item() == pytest.approx(sigmoid_focal_loss(a, b).item(), rel=1e-5)
            assert dice[i, j].item() == pytest.approx(dice_loss(a, b).item(), rel=1e-5)


def test_image_without_targets_matches_nothing():
    matcher = HungarianMatcher()
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 2, 2)}
    ((rows, cols),) = matcher(torch.randn(1, 3, 4), torch.randn(1, 3, 2, 2), [empty])
    assert rows.numel() == 0 and cols.numel() == 0
