"""Class probabilities of the two branches, their geometric ensemble, and the two fusions.

The no-object column is handled differently in the two branches, as the official model does:
the proposal branch takes the softmax over all K+1 columns and then drops no-object (rows do
not sum to 1); the CLIP branch drops no-object before its softmax.

Three ways turn per-mask class probabilities into per-pixel scores, one per official model:

- ``semantic_fusion`` (mode "eval", ``OVSeg.semantic_inference``): every mask, soft, weighted
  by its class probabilities;
- ``demo_fusion`` (mode "demo", ``OVSegDEMO.demo_inference``): each class picks its single
  most likely mask, binarised; pixels that no picked mask reaches stay unlabelled;
- ``space_fusion`` (mode "demo" with SAM masks: the authors' Hugging Face space,
  ``SAMVisualizationDemo.run_on_image``): each class keeps its best mask and, below
  granularity 1, every mask close enough to it (``granularity_keep``); kept masks add up.
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


# The space's slider default (facebook/ov-seg app.py); the official OVSeg demo keeps the best
# mask per class, which is granularity 1.
SPACE_GRANULARITY = 0.8


@dataclass(frozen=True)
class FusionSettings:
    """How one prediction classifies and fuses the masks (``fusion_settings``).

    Attributes:
        mode: "eval" (``semantic_fusion``) or "demo" (``demo_fusion``, or ``space_fusion``
            when ``space``).
        ensemble_weight: lambda of ``p_prop^(1-lambda) * p_clip^lambda``.
        mask_threshold: binarisation threshold (CLIP crops; demo masks too).
        clip_ensemble: the CLIP branch is used (official ``CLIP_ENSEMBLE``); False classifies
            with the proposal branch alone.
        clip_alone: CLIP alone classifies, on the valid masks (lambda = 0 or ``clip_only``).
        granularity: demo mode's mask selection (``granularity_keep``): 1 keeps each class's
            best mask (the official demo), lower keeps more (the space's slider, 0.8).
        space: demo mode follows the authors' SAM space (``space_fusion``: kept masks summed,
            uncovered pixels unlabelled, labels resized back by nearest neighbour).
    """

    mode: str
    ensemble_weight: float
    mask_threshold: float
    clip_ensemble: bool
    clip_alone: bool
    granularity: float = 1.0
    space: bool = False


def fusion_settings(
    cfg,
    mode: str | None = None,
    ensemble_weight: float | None = None,
    mask_threshold: float | None = None,
    clip_only: bool | None = None,
    clip_ensemble: bool | None = None,
    granularity: float | None = None,
    space: bool = False,
) -> FusionSettings:
    """Resolve per-call options against ``cfg`` (an ``OVSegConfig``).

    ``mode`` None is the config's (``"demo"`` for an ``OVSegDEMO`` config). Demo mode on a
    non-demo config defaults to ``OFFICIAL_DEMO_SETTINGS`` (lambda 0, threshold 0.35);
    otherwise weight and threshold default to the config's. As in the official code, a
    weight of 0 means CLIP alone on the valid masks; ``clip_only=True`` is the same as
    weight 0. ``clip_ensemble=False`` (official ``CLIP_ENSEMBLE: False``) classifies with
    the proposal branch alone. ``space`` (demo mode with SAM masks: the authors' space)
    makes the granularity default ``SPACE_GRANULARITY`` (0.8) instead of 1; a granularity
    outside [0, 1], or given in eval mode (which keeps every mask), is an error.
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
    if granularity is not None:
        granularity = float(granularity)
        if not 0.0 <= granularity <= 1.0:
            raise ValueError(f"granularity must be in [0, 1], got {granularity}")
        if mode != "demo":
            raise ValueError(
                "granularity selects masks in demo mode; eval mode sums every mask (use "
                "mode='demo' / --mode demo, or leave the granularity unset)"
            )
    space = bool(space) and mode == "demo"
    if granularity is None:
        granularity = SPACE_GRANULARITY if space else 1.0
    return FusionSettings(mode, weight, thr, clip_ensemble, clip_alone, granularity, space)


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
    """``sem_seg`` (K, H, W), ``select`` (K or K-1,) the mask index each class picked, and
    ``kept`` (N,) bool the masks whose rows were summed."""

    sem_seg: torch.Tensor
    select: torch.Tensor
    kept: torch.Tensor


def demo_fusion(
    class_probs: torch.Tensor,
    masks: torch.Tensor,
    mask_threshold: float,
    class_names: list[str],
    granularity: float = 1.0,
) -> DemoFusion:
    """The official demo's per-pixel scores (``OVSegDEMO.demo_inference``).

    For each class, the valid mask (non-empty once binarised) with the highest probability
    of that class is selected; a
    selected mask keeps its whole probability row, all others get 0; the binary masks
    ``masks > mask_threshold`` (strict) are then summed with those rows, so where selected
    masks overlap their rows add up. With the vocabulary ``[name, "others"]`` the last class
    (``others``) selects no mask. ``granularity < 1`` (not in the official demo; the space's
    slider) keeps every valid mask close to a class's best too (``granularity_keep``).

    Args:
        class_probs: (N, K) per-mask class probabilities.
        masks: (N, H, W) mask probabilities in [0, 1].
        mask_threshold: binarisation threshold.
        class_names: the K names (only used for the ``others`` rule).
        granularity: in [0, 1]; 1 (default) is the official demo.

    The official code classifies with CLIP alone (ensemble weight 0), on the valid masks
    only, so every row is selectable. With a weight > 0 it runs only when every mask is
    valid (otherwise it indexes past its selection table); ovseg then gives all N ensembled
    rows and selects among the valid masks: the same wherever the official code runs.

    Returns:
        ``DemoFusion(sem_seg (K, H, W), select, kept)``; no selectable mask gives all zeros.
    """
    k = class_probs.shape[1]
    binary = (masks > mask_threshold).to(class_probs.dtype)
    selectable = binary.flatten(1).amax(dim=1) > 0
    if not bool(selectable.any()):
        empty = torch.zeros(0, dtype=torch.long, device=class_probs.device)
        return DemoFusion(class_probs.new_zeros(k, *masks.shape[1:]), empty, selectable)
    candidates = class_probs.masked_fill(~selectable[:, None], -1.0)
    select = selecting_classes(candidates, class_names).argmax(dim=0)
    keep = granularity_keep(candidates, granularity, class_names)
    kept = torch.where(keep[:, None], class_probs, torch.zeros_like(class_probs))
    return DemoFusion(torch.einsum("nk,nhw->khw", kept, binary), select, keep)


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


def selecting_classes(class_probs: torch.Tensor, class_names: list[str] | None) -> torch.Tensor:
    """(N, K) -> (N, K') the columns that select masks: all, except ``others`` in the
    two-name vocabulary ``[name, "others"]`` (the official demo and the space: ``others`` is
    a contrast class and selects no mask)."""
    if class_names is not None and len(class_names) == 2 and class_names[-1] == OTHERS:
        return class_probs[:, :-1]
    return class_probs


def granularity_keep(
    class_probs: torch.Tensor, granularity: float, class_names: list[str] | None = None
) -> torch.Tensor:
    """(N,) bool: the masks the authors' SAM space keeps (its "granularity" slider).

    For each selecting class k (``selecting_classes``: not ``others``), the mask with the
    highest ``p[i, k]`` is kept (``torch.max`` over the masks: the first on ties), and with
    ``granularity < 1`` every mask with ``p[i, k] > granularity * max_j p[j, k]`` (float32
    comparison, as the space's ``cls_pred > max_scores * granularity``).

    Args:
        class_probs: (N, K) class probabilities of the N masks (rows of unselectable masks
            may be set to -1 so that they are never kept).
        granularity: in [0, 1]; lower keeps more masks; 1 keeps the best mask per class.
        class_names: the K names (only for the ``others`` rule); None: every column selects.
    """
    if not 0.0 <= granularity <= 1.0:
        raise ValueError(f"granularity must be in [0, 1], got {granularity}")
    keep = torch.zeros(class_probs.shape[0], dtype=torch.bool, device=class_probs.device)
    probs = selecting_classes(class_probs, class_names)
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        return keep
    best, best_mask = probs.max(dim=0)
    if granularity >= 1.0:
        keep[best_mask] = True
    else:
        keep = (probs > best * granularity).any(dim=1)
    return keep


def granularity_selection(
    class_probs: torch.Tensor, granularity: float, class_names: list[str] | None = None
) -> torch.Tensor:
    """Keep the masks the authors' SAM demo keeps (``granularity_keep``); a kept mask keeps
    its whole probability row (``others`` included), the others get zeros, so a fusion then
    sums the kept masks and pixels that no kept mask covers score 0 for every class.

    Args:
        class_probs: (N, K) CLIP class probabilities of the N masks.
        granularity: in [0, 1]; lower keeps more masks.
        class_names: the K names (the ``others`` rule); None: every column selects.
    Returns:
        (N, K), rows of ``class_probs`` or zeros.
    """
    keep = granularity_keep(class_probs, granularity, class_names)
    return torch.where(keep[:, None], class_probs, torch.zeros_like(class_probs))


class SpaceFusion(NamedTuple):
    """``sem_seg`` (K, H, W) summed scores, ``covered`` (H, W) bool (a kept mask covers the
    pixel) and ``kept`` (N,) bool, at the size of the masks."""

    sem_seg: torch.Tensor
    covered: torch.Tensor
    kept: torch.Tensor


def space_fusion(
    class_probs: torch.Tensor,
    masks: torch.Tensor,
    granularity: float,
    class_names: list[str],
    mask_threshold: float = 0.5,
) -> SpaceFusion:
    """The authors' SAM space (``SAMVisualizationDemo.run_on_image``), from probabilities on.

    The kept masks (``granularity_keep``) keep their probability rows, the others get zeros;
    ``sem_seg = einsum("qc,qhw->chw", rows, binary masks)`` over all N masks in order, so
    where kept masks overlap their rows add up. A pixel that no kept mask covers is
    unlabelled. (The space tests ``sem_seg[0] == 0`` instead: the same, except at a covered
    pixel whose class-0 probabilities all underflowed to exactly 0, which the space would
    leave unlabelled.)

    Args:
        class_probs: (N, K) probabilities (softmax over the K names, ``others`` included).
        masks: (N, H, W) masks in [0, 1], binarised at ``mask_threshold`` (strict).
        granularity: in [0, 1].
        class_names: the K names.
    """
    keep = granularity_keep(class_probs, granularity, class_names)
    rows = torch.where(keep[:, None], class_probs, torch.zeros_like(class_probs)).float()
    binary = masks > mask_threshold
    sem_seg = torch.einsum("qc,qhw->chw", rows, binary.float())
    covered = binary[keep].any(dim=0)  # (H, W); all False when nothing is kept
    return SpaceFusion(sem_seg, covered, keep)
