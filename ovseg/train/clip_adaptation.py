"""Adapting CLIP to masked crops: mask prompt tuning (MPT), fine-tuning (FT), and MPT on top
of FT, trained as classification of mined masked crops against their nouns' text embeddings.

- ``mpt``: only ``clip_adapter.clip_model.visual.mask_embedding`` trains; every CLIP weight
  stays bit-identical (checked at the end), so one CLIP serves several tasks.
- ``ft``: the image tower trains (prompts unused); the text tower stays frozen.
- ``mpt+ft``: starts from an ``ft`` checkpoint and trains prompts on top of it.

The text tower is always frozen, so the noun embeddings are computed once per vocabulary
(14 ViLD templates, as inference does) and reused. Logits are ``100 * cos`` like inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovseg.digest import tensor_digest
from ovseg.modeling.clip_branch import LOGIT_TEMPERATURE

MODES = ("mpt", "ft", "mpt+ft")
# the paper's recipes: AdamW, cosine schedule, 5 epochs, 224 px, batch 256
RECIPES = {
    "mpt": {"lr": 2e-2, "weight_decay": 0.0},
    "ft": {"lr": 5e-6, "weight_decay": 0.2},
    "mpt+ft": {"lr": 2e-2, "weight_decay": 0.0},
}
PROMPT_KEY = "clip_adapter.clip_model.visual.mask_embedding"


def frozen_clip_digest(model: nn.Module, mode: str) -> str:
    """Digest of the CLIP weights ``mode`` must leave bit-identical: all but the prompts for
    MPT, the text tower (everything outside ``visual``) for FT."""
    clip = model.clip_adapter.clip_model
    if mode == "ft":
        named = {n: p for n, p in clip.state_dict().items() if not n.startswith("visual.")}
    else:
        named = {n: p for n, p in clip.state_dict().items() if n != "visual.mask_embedding"}
    return tensor_digest(named)


def prepare_for_mode(model: nn.Module, mode: str, prompt_depth: int | None = None) -> list:
    """Freeze the model, then unfreeze and return what ``mode`` trains.

    For MPT modes a ``prompt_depth`` different from the model's re-initialises the prompts
    (normal, std 0.02) with that depth and records it in ``model.config``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model.requires_grad_(False)
    adapter = model.clip_adapter
    visual = adapter.clip_model.visual
    if mode == "ft":
        params = [p for n, p in visual.named_parameters() if n != "mask_embedding"]
    else:
        depth = prompt_depth or model.config.prompt_depth or 3
        if depth < 1 or depth > adapter.arch.vision_layers:
            raise ValueError(
                f"prompt depth must be in [1, {adapter.arch.vision_layers}], got {depth}"
            )
        current = getattr(visual, "mask_embedding", None)
        if current is None or current.shape[0] != depth:
            shape = (depth, adapter.arch.grid**2, adapter.arch.vision_width)
            visual.mask_embedding = nn.Parameter(nn.init.normal_(torch.empty(shape), std=0.02))
        adapter.prompt_depth = model.config.prompt_depth = depth
        model.config.mask_prompt_fwd = True
        params = [visual.mask_embedding]
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def noun_text_features(model: nn.Module, nouns: list[str], chunk: int = 256) -> torch.Tensor:
    """(V, C) normalised text embeddings of the nouns (frozen text tower, computed once)."""
    parts = [
        model.clip_adapter.text_features(nouns[i : i + chunk]) for i in range(0, len(nouns), chunk)
    ]
    return torch.cat(parts).clone()


class ClipAdaptationModule(nn.Module):
    """``forward(batch) -> (loss, terms)``: CE of masked-crop features against noun embeddings.

    Args:
        clip_adapter: the model's ``MaskAdaptedCLIP``.
        text_features: (V, C) normalised noun embeddings.
        use_prompts: pass region masks to ``encode_masked`` (MPT) or not (FT).
    """

    def __init__(self, clip_adapter: nn.Module, text_features: torch.Tensor, use_prompts: bool):
        super().__init__()
        self.clip_adapter = clip_adapter
        self.register_buffer("text_features", text_features, persistent=False)
        self.use_prompts = use_prompts

    def forward(self, batch: dict[str, torch.Tensor]):
        """batch: ``crop`` (B, 3, S, S) CLIP-normalised, ``mask`` (B, 1, S, S), ``label`` (B,)."""
        region = batch["mask"] if self.use_prompts else None
        feats = self.clip_adapter.encode_masked(batch["crop"], region)
        logits = LOGIT_TEMPERATURE * F.normalize(feats.float(), dim=-1) @ self.text_features.T
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": accuracy.detach()}


def train_clip(
    pairs: str,
    init: str,
    mode: str,
    config,
    prompt_depth: int | None = None,
    hooks=(),
):
    """Train ``mode`` on the pairs folder from the ``init`` checkpoint; returns the path of
    the adapted model (``config.out_dir/model.safetensors``, read by ``ovseg.load_checkpoint``).

    Args:
        config: a ``TrainConfig``.
    """
    import json

    from ovseg.checkpoints import load_checkpoint, read_metadata
    from ovseg.train import distributed
    from ovseg.train.pairs import PairDataset, collate_pairs
    from ovseg.train.trainer import Trainer, TrainTask

    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    meta = read_metadata(init)
    if mode == "mpt+ft" and "ft" not in str(meta.get("clip_adaptation", "")).split("+"):
        raise ValueError(
            f"mode mpt+ft starts from an FT checkpoint (made by `ovseg train-clip --mode ft`); "
            f"{init} has clip_adaptation={meta.get('clip_adaptation')!r}"
        )
    info = distributed.setup(config.device)
    try:
        model = load_checkpoint(init)
        params = prepare_for_mode(model, mode, prompt_depth)
        before = frozen_clip_digest(model, mode)
        dataset = PairDataset(pairs, image_size=model.clip_adapter.arch.image_size)
        text = noun_text_features(model, dataset.vocabulary)
        module = ClipAdaptationModule(model.clip_adapter, text, use_prompts=mode != "ft")
        if mode == "ft":

            def finalize(m):
                m.config.mask_prompt_fwd = False  # the prompts were not trained with this tower

        else:
            finalize = None
        adaptation = {"mpt": "mpt", "ft": "ft", "mpt+ft": "ft+mpt"}[mode]
        metadata = {
            "clip_adaptation": adaptation,
            "init": str(init),
            "init_clip_adaptation": meta.get("clip_adaptation", "none"),
            "frozen_clip_sha256": before,
            "vocabulary_size": len(dataset.vocabulary),
        }
        task = TrainTask(
            model=model,
            module=module,
            param_groups=[{"params": params}],
            dataset=dataset,
            collate=collate_pairs,
            metadata=metadata,
            finalize=finalize,
        )
        path = Trainer(task, config, info, hooks).fit()
        after = frozen_clip_digest(model, mode)
        if after != before:
            raise RuntimeError(f"{mode}: frozen CLIP weights changed during training (a bug)")
        if info.is_main:
            summary = {"mode": mode, "model": str(path), "frozen_clip_sha256": after}
            print(json.dumps(summary))
        return path
    finally:
        distributed.cleanup()
