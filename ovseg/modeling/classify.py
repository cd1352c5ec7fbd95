"""Stage 3 of the pipeline: classify the proposals, ensemble the branches, fuse to pixels.

These are the official ``OVSeg.semantic_inference`` (mode "eval") and
``OVSegDEMO.demo_inference`` (mode "demo") split into three steps that ``OVSeg.forward``,
``Predictor.predict`` and the evaluation share:

1. ``vocabulary(class_names, settings)``: the classes a prediction uses (demo mode appends
   ``others`` to a single name);
2. ``classify(clip, proposals, clip_features, text, settings)``: per-proposal class
   probabilities (proposal branch, CLIP branch, or their geometric ensemble);
3. ``fuse(probs, masks, settings, class_names)``: per-pixel scores (``fuse_masks`` also says
   which masks were kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ovseg.modeling.clip_branch import MaskAdaptedCLIP
from ovseg.modeling.fusion import (
    OTHERS,
    FusionSettings,
    clip_class_probs,
    demo_fusion,
    demo_vocabulary,
    ensemble_probs,
    proposal_class_probs,
    semantic_fusion,
    space_fusion,
)
from ovseg.modeling.proposals import Proposals
from ovseg.vocabulary import VocabularyError, validate_class_names


@dataclass
class ClipImageFeatures:
    """CLIP-branch image features of one image's proposals at one mask threshold.

    Attributes:
        features: (V, C) features of the V valid (non-empty) binarised masks.
        valid: (N,) bool.
    """

    features: torch.Tensor
    valid: torch.Tensor


def classify(
    clip: MaskAdaptedCLIP,
    proposals: Proposals,
    clip_features: ClipImageFeatures | None,
    text_features: torch.Tensor,
    settings: FusionSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-proposal class probabilities and the masks they apply to.

    Args:
        clip: the model's CLIP branch (``model.clip_adapter``: no-object embedding, logits).
        proposals: N masks, with class embeddings or without (CLIP alone then classifies).
        clip_features: the CLIP image features of the proposals' crops; None only when
            ``settings.clip_ensemble`` is False.
        text_features: (K, C) normalised class text features.
        settings: from ``ovseg.modeling.fusion.fusion_settings``.
    Returns ``(probs (N', K), masks (N', H, W))``: all N proposals normally; only the valid
    ones when CLIP alone classifies (lambda 0, ``clip_only``, or proposals without embeddings).
    """
    text = clip.with_void(text_features)
    no_embeddings = proposals.embeddings is None
    if not settings.clip_ensemble:
        if no_embeddings:
            raise ValueError(
                "these proposals have no class embeddings, so the proposal branch cannot "
                "classify them; keep the CLIP branch (clip_ensemble=True)"
            )
        logits = clip.similarity_logits(proposals.embeddings, text)
        return proposal_class_probs(logits), proposals.masks
    if clip_features is None:
        raise ValueError("the CLIP branch is enabled but no clip_features were given")
    p_clip = clip_class_probs(clip.similarity_logits(clip_features.features, text))
    if settings.clip_alone or no_embeddings:
        return p_clip, proposals.masks[clip_features.valid]
    p_prop = proposal_class_probs(clip.similarity_logits(proposals.embeddings, text))
    return (
        ensemble_probs(p_prop, p_clip, clip_features.valid, settings.ensemble_weight),
        proposals.masks,
    )


def vocabulary(class_names: list[str], settings: FusionSettings) -> list[str]:
    """The classes a prediction uses: demo mode appends ``others`` to a single name."""
    names = check_vocabulary(class_names, settings.mode)
    return demo_vocabulary(names) if settings.mode == "demo" else names


def check_vocabulary(class_names: list[str], mode: str | None) -> list[str]:
    """The cleaned names if a prediction in ``mode`` can use them (``validate_class_names``;
    in demo mode not ``others`` alone, which the demo appends itself).

    Raises:
        VocabularyError: saying why.
    """
    names = validate_class_names(class_names)
    if mode == "demo" and [n.casefold() for n in names] == [OTHERS]:
        raise VocabularyError(
            "demo mode adds 'others' to a single class name, so 'others' alone cannot be "
            "segmented; name what to find, e.g. ['person']"
        )
    return names


class Fused(NamedTuple):
    """The outcome of ``fuse_masks``, at the size of the masks.

    Attributes:
        sem_seg: (K, H, W) per-pixel scores.
        kept: (N',) bool, the masks whose rows entered ``sem_seg`` (all of them in eval mode).
        covered: (H, W) bool, pixels that a kept mask covers (space rule only, else None).
    """

    sem_seg: torch.Tensor
    kept: torch.Tensor
    covered: torch.Tensor | None = None


def fuse_masks(
    probs: torch.Tensor, masks: torch.Tensor, settings: FusionSettings, class_names: list[str]
) -> Fused:
    """(N', K) probabilities and (N', H, W) masks -> ``Fused`` for ``settings``:
    ``semantic_fusion`` (eval), ``demo_fusion`` (demo, at ``settings.mask_threshold`` and
    ``settings.granularity``) or ``space_fusion`` (demo with ``settings.space``)."""
    if settings.mode == "demo" and settings.space:
        out = space_fusion(probs, masks, settings.granularity, class_names, settings.mask_threshold)
        return Fused(out.sem_seg, out.kept, out.covered)
    if settings.mode == "demo":
        out = demo_fusion(probs, masks, settings.mask_threshold, class_names, settings.granularity)
        return Fused(out.sem_seg, out.kept)
    kept = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    return Fused(semantic_fusion(probs, masks), kept)


def fuse(
    probs: torch.Tensor, masks: torch.Tensor, settings: FusionSettings, class_names: list[str]
) -> torch.Tensor:
    """(N', K) probabilities and (N', H, W) masks -> (K, H, W) scores (``fuse_masks``)."""
    return fuse_masks(probs, masks, settings, class_names).sem_seg
