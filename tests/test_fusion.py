"""Class probabilities, ensemble and fusion, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ovseg.modeling.fusion import (
    clip_class_probs,
    demo_fusion,
    demo_unlabelled,
    demo_vocabulary,
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


def test_demo_fusion_by_hand():
    # 3 masks on a 1x4 image; classes a, b, c
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    masks = torch.tensor([[[0.9, 0.9, 0.1, 0.0]], [[0.0, 0.6, 0.6, 0.0]], [[0.0, 0.0, 0.5, 0.5]]])
    out = demo_fusion(probs, masks, 0.5, ["a", "b", "c"])
    # a -> mask 0, b -> mask 1, c -> mask 2; 0.5 is not > 0.5, so mask 2 is empty (invalid)
    # and c falls back to the valid mask with the highest p(c): mask 0 (0.1 ties with mask 1;
    # the first wins)
    assert out.select.tolist() == [0, 1, 0]
    # mask 0 covers pixels 0, 1 with its whole row; mask 1 covers pixels 1, 2: rows add up
    expected = torch.tensor(
        [[[0.7, 1.3, 0.6, 0.0]], [[0.2, 0.5, 0.3, 0.0]], [[0.1, 0.2, 0.1, 0.0]]]
    )
    assert torch.allclose(out.sem_seg, expected)
    assert demo_unlabelled(out.sem_seg).tolist() == [[False, False, False, True]]


def test_unlabelled_tests_channel_0_only():
    """Official ``blank_area = (r[0] == 0)``: channel 0 alone decides. Pixel 0: channel 0 is
    0 but channel 1 is not (unlabelled); pixel 1: channel 0 scores, the others are 0
    (labelled); pixel 2: all 0 (unlabelled); pixel 3: all score (labelled)."""
    scores = torch.tensor([[[0.0, 0.3, 0.0, 0.2]], [[0.9, 0.0, 0.0, 0.5]], [[0.4, 0.0, 0.0, 0.1]]])
    assert demo_unlabelled(scores).tolist() == [[True, False, True, False]]
    # a tiny first-class score is a score: only exactly 0 is blank
    assert not demo_unlabelled(torch.tensor([[[1e-30]], [[1.0]]])).any()


def test_demo_fusion_others_never_selects():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    masks = torch.ones(2, 1, 2)
    for names in (["cat", "others"], ["dog", "others"]):
        out = demo_fusion(probs, masks, 0.5, names)
        assert out.select.tolist() == [0]
        assert torch.allclose(out.sem_seg[:, 0, 0], torch.tensor([0.9, 0.1]))
    # the rule is only for two names ending in "others"
    assert demo_fusion(probs, masks, 0.5, ["a", "b"]).select.tolist() == [0, 1]
    assert demo_vocabulary(["cat"]) == ["cat", "others"]
    assert demo_vocabulary(["cat", "dog"]) == ["cat", "dog"]


def test_demo_fusion_without_valid_masks_labels_nothing():
    out = demo_fusion(torch.rand(2, 3), torch.full((2, 2, 2), 0.2), 0.35, ["a", "b", "c"])
    assert out.select.numel() == 0 and not out.sem_seg.any()
    assert demo_unlabelled(out.sem_seg).all()


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


def test_granularity_others_selects_no_mask():
    """The space: with ``[name, "others"]`` only the name's column selects masks (at g = 1
    and below); a kept mask keeps its ``others`` probability."""
    from ovseg.modeling.fusion import granularity_keep, granularity_selection

    probs = torch.tensor([[0.7, 0.3], [0.1, 0.9], [0.6, 0.4]])
    assert granularity_keep(probs, 1.0, ["cat", "others"]).tolist() == [True, False, False]
    # 0.8 * 0.7 = 0.56: masks 0 and 2; mask 1's high "others" keeps nothing
    assert granularity_keep(probs, 0.8, ["cat", "others"]).tolist() == [True, False, True]
    kept = granularity_selection(probs, 0.8, ["cat", "others"])
    assert torch.equal(kept, torch.tensor([[0.7, 0.3], [0.0, 0.0], [0.6, 0.4]]))
    # without the rule (two real names, or no names) "others" would select mask 1
    assert granularity_keep(probs, 1.0, ["cat", "dog"]).tolist() == [True, True, False]
    assert granularity_keep(probs, 1.0).tolist() == [True, True, False]
    # strict ">": a mask exactly at the threshold is not kept (0.5 * 0.8 = 0.4)
    tie = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    assert granularity_keep(tie, 0.5, ["cat", "others"]).tolist() == [True, False]


def test_space_fusion_by_hand():
    """Kept masks add up where they overlap; uncovered pixels are reported; the kept flags."""
    from ovseg.modeling.fusion import space_fusion

    masks = torch.zeros(3, 2, 3)
    masks[0, :, :2] = 1  # left two columns
    masks[1, :, 1:] = 1  # right two columns (overlaps mask 0 in column 1)
    masks[2, 0, 0] = 1  # one pixel, never kept below
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    out = space_fusion(probs, masks, 1.0, ["a", "b"])
    assert out.kept.tolist() == [True, True, False]
    assert out.covered.all()
    assert torch.allclose(out.sem_seg[:, 0, 1], torch.tensor([1.2, 0.8]))  # 0.9+0.3, 0.1+0.7
    assert torch.allclose(out.sem_seg[:, 0, 2], torch.tensor([0.3, 0.7]))
    # one name + others: only "a" selects (mask 0); columns 2 are uncovered
    out = space_fusion(probs, masks, 1.0, ["a", "others"])
    assert out.kept.tolist() == [True, False, False]
    assert out.covered[:, :2].all() and not out.covered[:, 2].any()
    assert torch.equal(out.sem_seg[:, :, 2], torch.zeros(2, 2))
    # granularity 0.5: "a" keeps p > 0.45 (masks 0, 2); "others" selects nothing
    out = space_fusion(probs, masks, 0.5, ["a", "others"])
    assert out.kept.tolist() == [True, False, True]
    assert torch.allclose(out.sem_seg[:, 0, 0], torch.tensor([1.4, 0.6]))
    with pytest.raises(ValueError, match="granularity"):
        space_fusion(probs, masks, -0.1, ["a", "b"])


def test_space_unlabelled_is_coverage_not_channel_zero():
    """ovseg's documented difference from the space's ``semseg[0] == 0`` test: a pixel that
    a kept mask covers stays labelled even where class 0's probability underflowed to 0."""
    from ovseg.modeling.fusion import space_fusion

    masks = torch.ones(1, 2, 2)
    logits = torch.tensor([[-120.0, 0.0]])  # float32 softmax: exp(-120) underflows to 0
    probs = logits.softmax(dim=-1)
    assert probs[0, 0] == 0
    out = space_fusion(probs, masks, 1.0, ["a", "b"])
    assert out.covered.all() and (out.sem_seg[0] == 0).all()  # the space would blank these
    assert (out.sem_seg.argmax(0) == 1).all()
