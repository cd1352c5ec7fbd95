"""Class probabilities of the two branches, their geometric ensemble, and semantic fusion.

The no-object column is handled differently in the two branches, as the official model does:
the proposal branch takes the softmax over all K+1 columns and then drops no-object (rows do
not sum to 1); the CLIP branch drops no-object before its softmax.
"""

from __future__ import annotations

import torch


def proposal_class_probs(logits_with_void: torch.Tensor) -> torch.Tensor:
    """(N, K+1) logits -> (N, K): softmax over all columns, then drop no-object."""
    return logits_with_void.softmax(dim=-1)[:, :-1]


def clip_class_probs(logits_with_void: torch.Tensor) -> torch.Tensor:
    """(V, K+1) logits -> (V, K): drop no-object, then softmax."""
    return logits_with_void[:, :-1].softmax(dim=-1)


def ensemble_probs(
    proposal_probs: torch.Tensor, clip_probs: torch.Tensor, valid: torch.Tensor, weight: float
) -> torch.Tensor:
    """Geometric ensemble ``p_prop^(1-w) * p_clip^w``.

    Args:
        proposal_probs: (N, K). clip_probs: (V, K) for the V queries where ``valid`` is True.
        valid: (N,) bool. Invalid (empty-mask) queries get ``p_clip = 1``.
        weight: lambda in [0, 1].
    Returns:
        (N, K).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble weight (lambda) must be in [0, 1], got {weight}")
    mapped = torch.ones_like(proposal_probs)
    mapped[valid] = clip_probs.to(mapped.dtype)
    return proposal_probs.pow(1.0 - weight) * mapped.pow(weight)


def semantic_fusion(class_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MaskFormer semantic inference: ``sem_seg[k] = sum_i p[i, k] * mask_i``.

    Args:
        class_probs: (N, K). masks: (N, H, W) mask probabilities in [0, 1].
    Returns:
        (K, H, W).
    """
    return torch.einsum("nk,nhw->khw", class_probs, masks.to(class_probs.dtype))


def granularity_selection(class_probs: torch.Tensor, granularity: float) -> torch.Tensor:
    """Keep the masks the authors' SAM demo keeps (its "granularity" slider, default 0.8).

    For each class k, a mask i is kept when ``p[i, k] > granularity * max_j p[j, k]``; with
    ``granularity >= 1`` only the best mask of each class is kept. A kept mask keeps its whole
    probability row, the others get zeros, so ``semantic_fusion`` then sums the kept masks and
    pixels that no kept mask covers score 0 for every class (unlabelled in the demo).

    Args:
        class_probs: (N, K) CLIP class probabilities of the N masks.
        granularity: in [0, 1]; lower keeps more masks.
    Returns:
        (N, K), rows of ``class_probs`` or zeros.
    """
    if not 0.0 <= granularity <= 1.0:
        raise ValueError(f"granularity must be in [0, 1], got {granularity}")
    if class_probs.shape[0] == 0:
        return class_probs
    best, best_mask = class_probs.max(dim=0)
    if granularity >= 1.0:
        keep = torch.zeros(class_probs.shape[0], dtype=torch.bool, device=class_probs.device)
        keep[best_mask] = True
    else:
        keep = (class_probs > granularity * best).any(dim=1)
    return class_probs * keep[:, None].to(class_probs.dtype)
