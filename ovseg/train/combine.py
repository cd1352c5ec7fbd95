"""Combine an adapted CLIP and a trained proposal model into one OVSeg checkpoint.

The proposal model's class embeddings live in the text space of the CLIP it was trained
with. The text tower is frozen in every CLIP adaptation mode, so an adapted CLIP built
from the same CLIP has a bit-identical text tower; ``combine_checkpoints`` checks that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ovseg.digest import tensor_digest

CLIP_PREFIX = "clip_adapter.clip_model."


def text_tower(model) -> dict[str, torch.Tensor]:
    """The CLIP text-side tensors (everything of ``clip_model`` outside ``visual``)."""
    sd = model.clip_adapter.clip_model.state_dict()
    return {k: v for k, v in sd.items() if not k.startswith("visual.")}


def combine_checkpoints(
    clip_checkpoint: str | Path,
    proposal_checkpoint: str | Path,
    out: str | Path,
    allow_text_mismatch: bool = False,
) -> Path:
    """Write ``out``: backbone, head and no-object embedding from ``proposal_checkpoint``,
    the CLIP towers and mask prompts (and their settings) from ``clip_checkpoint``.

    Raises ``ValueError`` when the CLIP architectures differ, or when the text towers differ
    (unless ``allow_text_mismatch``: the proposal classifier would then score against text
    embeddings it was not trained with).
    """
    from ovseg.modeling.build import build_ovseg
    from ovseg.weights.checkpoints import load_checkpoint, read_metadata, save_checkpoint

    clip_model = load_checkpoint(clip_checkpoint)
    proposal_model = load_checkpoint(proposal_checkpoint)
    ca, pa = clip_model.config.clip, proposal_model.config.clip
    if ca != pa:
        raise ValueError(
            f"CLIP architectures differ: {clip_checkpoint} has {ca}, {proposal_checkpoint} has {pa}"
        )
    if not allow_text_mismatch and tensor_digest(text_tower(clip_model)) != tensor_digest(
        text_tower(proposal_model)
    ):
        raise ValueError(
            "the two checkpoints' CLIP text towers differ, so the proposal model's class "
            "embeddings do not fit this CLIP; train both from the same CLIP, or pass "
            "--allow-text-mismatch"
        )
    config = dataclasses.replace(
        proposal_model.config,
        prompt_depth=clip_model.config.prompt_depth,
        mask_prompt_fwd=clip_model.config.mask_prompt_fwd,
    )
    model = build_ovseg(config)
    sd = {k: v for k, v in proposal_model.state_dict().items() if not k.startswith(CLIP_PREFIX)}
    sd |= {k: v for k, v in clip_model.state_dict().items() if k.startswith(CLIP_PREFIX)}
    model.load_state_dict(sd, strict=True)
    meta = read_metadata(clip_checkpoint)
    extra = {
        "clip_adaptation": meta.get("clip_adaptation", "none"),
        "combined_from": {"clip": str(clip_checkpoint), "proposals": str(proposal_checkpoint)},
    }
    return save_checkpoint(model, out, extra_metadata=extra)
