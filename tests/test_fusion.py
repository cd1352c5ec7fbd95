"""Class probabilities, ensemble and fusion, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ovseg.modeling.fusion import (
    clip_class_probs,
    ensemble_probs,
    proposal_class_probs,
    semantic_fusion,
)


def test_no_object_column_is_handled_differently_in_each_branch():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]])  # exp: 1, 1, 2
    assert torch.allclose(proposal_class_probs(logits), torch.tensor([[0.25, 0.25]]))
    assert torch.allclose(clip_class_probs(logits), torch.tensor([[0.5, 0.5]]))


def test_geometric_ensemble_by_hand():
    prop = torch.tensor([[0.64, 0.16], [0.5, 0.25]])
    clip = torch.tensor([[0.25, 0.75]])
    valid = torch.tensor([False, True])
    out = ensemble_probs(prop, clip, valid, 0.5)
    # invalid query: p_clip = 1 -> sqrt(p_prop); valid: sqrt(p_prop * p_clip)
    assert torch.allclose(out, torch.tensor([[0.8, 0.4], [math.sqrt(0.125), math.sqrt(0.1875)]]))
    assert torch.equal(ensemble_probs(prop, clip, valid, 0.0), prop)
    with pytest.raises(ValueError, match="lambda"):
        ensemble_probs(prop, clip, valid, 1.5)


def test_semantic_fusion_by_hand():
    probs = torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    masks = torch.tensor([[[1.0, 0.5]], [[0.0, 1.0]]])  # N=2, H=1, W=2
    out = semantic_fusion(probs, masks)
    assert out.shape == (2, 1, 2)
    assert torch.allclose(out, torch.tensor([[[1.0, 0.7]], [[0.0, 0.8]]]))


def test_granularity_selection_by_hand():
    from ovseg.modeling.fusion import granularity_selection

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    # class 0: best 0.9, threshold 0.8*0.9 = 0.72 -> mask 0; class 1: best 0.8, > 0.64 -> mask 2
    kept = granularity_selection(probs, 0.8)
    assert torch.equal(kept, torch.tensor([[0.9, 0.1], [0, 0], [0.2, 0.8], [0, 0]]))
    # 0.5: class 0 > 0.45 -> masks 0, 1, 3; class 1 > 0.4 -> masks 2, 3
    assert torch.equal(granularity_selection(probs, 0.5), probs)
    # 1.0: the best mask of each class only (masks 0 and 2)
    assert torch.equal(granularity_selection(probs, 1.0), kept)
    with pytest.raises(ValueError, match="granularity"):
        granularity_selection(probs, 1.5)
