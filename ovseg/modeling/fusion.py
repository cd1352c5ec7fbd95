"""Class probabilities of the two branches, their geometric ensemble, and the two fusions.

The no-object column is handled differently in the two branches, as the official model does:
the proposal branch takes the softmax over all K+1 columns and then drops no-object (rows do
not sum to 1); the CLIP branch drops no-object before its softmax.

Two ways turn per-mask class probabilities into per-pixel scores, one per official model:

- ``semantic_fusion`` (mode "eval", ``OVSeg.semantic_inference``): every mask, soft, weighted
  by its class probabilities;
- ``demo_fusion`` (mode "demo", ``OVSegDEMO.demo_inference``): each class picks its single
  most likely mask, binarised; pixels that no picked mask reaches stay unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

MODES = ("eval", "demo")

# The word the official demo appends to a one-name vocabulary (classification is contrastive).
OTHERS = "others"


class DemoSettings(NamedTuple):
    ensemble_weight: float
    mask_threshold: float


# The published demo config, configs/ovseg_swinB_vitL_demo.yaml of the official release
# (MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT 0.0 = CLIP alone, MASK_THR 0.35): demo mode uses it
# unless the model's own config is a demo config (META_ARCHITECTURE OVSegDEMO) or the call
# overrides it.
OFFICIAL_DEMO_SETTINGS = DemoSettings(ensemble_weight=0.0, mask_threshold=0.35)


@dataclass(frozen=True)
class FusionSettings:
    """How one prediction classifies and fuses the masks (``fusion_settings``).

    Attributes:
        mode: "eval" (``semantic_fusion``) or "demo" (``demo_fusion``).
        ensemble_weight: lambda of ``p_prop^(1-lambda) * p_clip^lambda``.
        mask_threshold: binarisation threshold (CLIP crops; demo masks too).
        clip_ensemble: the CLIP branch is used (official ``CLIP_ENSEMBLE``); False classifies
            with the proposal branch alone.
        clip_alone: CLIP alone classifies, on the valid masks (lambda = 0 or ``clip_only``).
    """

    mode: str
    ensemble_weight: float
    mask_threshold: float
    clip_ensemble: bool
    clip_alone: bool


def fusion_settings(
    cfg,
    mode: str | None = None,
    ensemble_weight: float | None = None,
    mask_threshold: float | None = None,
    clip_only: bool | None = None,
    clip_ensemble: bool | None = None,
) -> FusionSettings:
    """Resolve per-call options against ``cfg`` (an ``OVSegConfig``).

    ``mode`` None is the config's (``"demo"`` for an ``OVSegDEMO`` config). Demo mode on a
    non-demo config defaults to ``OFFICIAL_DEMO_SETTINGS`` (lambda 0, threshold 0.35);
    otherwise weight and threshold default to the config's. As in the official code, a
    weight of 0 means CLIP alone on the valid masks; ``clip_only=True`` is the same as
    weight 0. ``clip_ensemble=False`` (official ``CLIP_ENSEMBLE: False``) classifies with
    the proposal branch alone.
    """
    mode = cfg.mode if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    defaults = OFFICIAL_DEMO_SETTINGS if mode == "demo" and cfg.mode != "demo" else cfg
    weight = defaults.ensemble_weight if ensemble_weight is None else float(ensemble_weight)
    thr = defaults.mask_threshold if mask_threshold is None else float(mask_threshold)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble weight (lambda) must be in [0, 1], got {weight}")
    if not 0.0 <= thr < 1.0:
        raise ValueError(f"mask threshold must be in [0, 1), got {thr}")
    clip_ensemble = cfg.clip_ensemble if clip_ensemble is None else bool(clip_ensemble)
    if clip_only and not clip_ensemble:
        raise ValueError("clip_only needs the CLIP branch; it contradicts clip_ensemble=False")
    clip_alone = bool(clip_only) or (clip_ensemble and weight == 0)
    return FusionSettings(mode, weight, thr, clip_ensemble, clip_alone)


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


def demo_vocabulary(class_names: list[str]) -> list[str]:
    """The classes the official demo uses: ``others`` appended to a one-name vocabulary."""
    names = list(class_names)
    return names + [OTHERS] if len(names) == 1 else names


class DemoFusion(NamedTuple):
    """``sem_seg`` (K, H, W) and ``select`` (K or K-1,) the mask index each class picked."""

    sem_seg: torch.Tensor
    select: torch.Tensor


def demo_fusion(
    class_probs: torch.Tensor,
    masks: torch.Tensor,
    mask_threshold: float,
    class_names: list[str],
) -> DemoFusion:
    """The official demo's per-pixel scores (``OVSegDEMO.demo_inference``).

    For each class, the valid mask (non-empty once binarised) with the highest probability
    of that class is selected; a
    selected mask keeps its whole probability row, all others get 0; the binary masks
    ``masks > mask_threshold`` (strict) are then summed with those rows, so where selected
    masks overlap their rows add up. With the vocabulary ``[name, "others"]`` the last class
    (``others``) selects no mask.

    Args:
        class_probs: (N, K) per-mask class probabilities.
        masks: (N, H, W) mask probabilities in [0, 1].
        mask_threshold: binarisation threshold.
        class_names: the K names (only used for the ``others`` rule).

    The official code classifies with CLIP alone (ensemble weight 0), on the valid masks
    only, so every row is selectable. With a weight > 0 it runs only when every mask is
    valid (otherwise it indexes past its selection table); ovseg then gives all N ensembled
    rows and selects among the valid masks: the same wherever the official code runs.

    Returns:
        ``DemoFusion(sem_seg (K, H, W), select)``; no selectable mask gives all zeros.
    """
    k = class_probs.shape[1]
    binary = (masks > mask_threshold).to(class_probs.dtype)
    selectable = binary.flatten(1).amax(dim=1) > 0
    if not bool(selectable.any()):
        empty = torch.zeros(0, dtype=torch.long, device=class_probs.device)
        return DemoFusion(class_probs.new_zeros(k, *masks.shape[1:]), empty)
    candidates = class_probs.masked_fill(~selectable[:, None], -1.0)
    select = candidates.argmax(dim=0)
    if len(class_names) == 2 and class_names[-1] == OTHERS:
        select = select[:-1]
    kept = torch.zeros_like(class_probs)
    kept[select] = class_probs[select]
    return DemoFusion(torch.einsum("nk,nhw->khw", kept, binary), select)


def demo_unlabelled(sem_seg: torch.Tensor) -> torch.Tensor:
    """(K, H, W) resized demo scores -> (H, W) bool: the official demo's "unlabelled" pixels.

    The official rule (``VisualizationDemo.run_on_image``) tests **channel 0 only**: a pixel
    is unlabelled where the first class's score is exactly 0. Since a selected mask keeps its
    whole probability row, that is where no selected binary mask reaches the pixel (after the
    bilinear resize, which spreads scores about one pixel past mask edges); a covered pixel
    whose first-class probability underflowed to 0 would be unlabelled too (a quirk kept for
    fidelity).
    """
    return sem_seg[0] == 0


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
