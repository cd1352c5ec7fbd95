"""Adapting CLIP to masked crops: mask prompt tuning (MPT), fine-tuning (FT), and MPT on top
of FT, as the official ``open_clip_training`` does it (recipes: ``ovseg.train.clip_recipes``).

- ``mpt``: ``clip_adapter.clip_model.visual.mask_embedding`` trains. The official MPT also
  trains CLIP's ``logit_scale`` (its locks leave it trainable); we train it too, but restore
  it in the written model, so every CLIP weight stays bit-identical (checked at the end) and
  one CLIP serves several tasks. The trained value is in the metadata (``trained_logit_scale``).
- ``ft``: the image tower and the logit scale train (prompts unused); the text tower stays
  frozen (official ``--lock-text``).
- ``mpt+ft``: starts from an ``ft`` checkpoint and trains prompts on top of it.

Loss (``ClipOptions.loss``):

- ``contrastive`` (official ``ClipLoss``): symmetric in-batch CLIP loss,
  ``(CE(s * I @ T.T, arange) + CE(s * T @ I.T, arange)) / 2`` with I, T the normalised
  crop and noun features of the batch and ``s = exp(logit_scale)``, the logit scale clamped to
  [0, ln 100] after every optimizer step. Under several processes the features of all of them
  are gathered (as the official loss does), so the batch is the global one; gradient
  accumulation does not enlarge it. A noun that occurs twice in a batch is not treated
  specially (as in the official code): the other crop's identical text is a negative.
- ``vocabulary-ce`` (our variant): cross-entropy over every noun of the pairs folder.

The text tower is frozen in every mode, so noun embeddings are computed once per vocabulary:
the raw noun (official: ``CsvDataset`` tokenizes the caption as it is) or, as our variant,
the 14 ViLD templates that inference uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ovseg.digest import tensor_digest
from ovseg.modeling.clip_branch import LOGIT_TEMPERATURE
from ovseg.modeling.prompts import VILD_TEMPLATES
from ovseg.train.clip_recipes import (
    LOGIT_SCALE_MAX,
    ClipRecipe,
    official_param_groups,
    uniform_param_groups,
)
from ovseg.train.pairs import CropAugment

MODES = ("mpt", "ft", "mpt+ft")
LOSSES = ("contrastive", "vocabulary-ce")
LOGIT_SCALES = ("learned", "fixed-100")
TEXTS = ("raw", "vild-templates")
DECAYS = ("official", "uniform")
PROMPT_KEY = "clip_adapter.clip_model.visual.mask_embedding"


@dataclass(frozen=True)
class ClipOptions:
    """What CLIP adaptation optimises, beyond the loop settings of ``TrainConfig``.

    Attributes:
        loss: "contrastive" (official) or "vocabulary-ce" (ours).
        logit_scale: "learned" (official: CLIP's ``logit_scale`` trains, clamped to
            [0, ln 100]) or "fixed-100" (ours: a constant 100, as inference uses).
        text: "raw" (official: the noun itself) or "vild-templates" (ours).
        augment: a ``CropAugment`` (official) or None (ours: the stored crops).
        decay: "official" (no decay on gains, biases, 1-d tensors, logit scale; prompts get
            ``mask_weight_decay``) or "uniform" (ours: ``weight_decay`` on every tensor).
        mask_weight_decay: weight decay of the prompts (official ``--mask_wd`` 0).
        prompt_depth: MPT prompt depth; None keeps the model's.
    """

    loss: str = "contrastive"
    logit_scale: str = "learned"
    text: str = "raw"
    augment: CropAugment | None = CropAugment()
    decay: str = "official"
    mask_weight_decay: float = 0.0
    prompt_depth: int | None = None

    def __post_init__(self):
        for name, allowed in (("loss", LOSSES), ("logit_scale", LOGIT_SCALES),
                              ("text", TEXTS), ("decay", DECAYS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_recipe(cls, recipe: ClipRecipe, **overrides) -> ClipOptions:
        augment = CropAugment(recipe.crop_scale, recipe.crop_ratio, recipe.mask_rule)
        base = cls(
            loss=recipe.loss,
            logit_scale=recipe.logit_scale,
            text=recipe.text,
            augment=augment,
            decay=recipe.decay,
            mask_weight_decay=recipe.mask_weight_decay,
            prompt_depth=recipe.prompt_depth or None,
        )
        return replace(base, **overrides)


def recipe_train_config(recipe: ClipRecipe, out_dir: str, world_size: int = 1, **overrides):
    """A ``TrainConfig`` with the recipe's loop values; the per-process batch is the official
    global batch (batch per GPU x 4 GPUs) split over ``world_size`` processes."""
    from ovseg.train.trainer import TrainConfig

    if recipe.global_batch % world_size:
        raise ValueError(
            f"recipe {recipe.name}: global batch {recipe.global_batch} does not split over "
            f"{world_size} processes; pass --batch-size"
        )
    values = dict(
        out_dir=out_dir,
        batch_size=recipe.global_batch // world_size,
        epochs=recipe.epochs,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule,
        warmup_steps=recipe.warmup_steps,
        warmup_mode="open_clip",  # official warmup: lr * (step + 1) / W
        adam_betas=recipe.adam_betas,
        adam_eps=recipe.adam_eps,
    )
    return TrainConfig(**(values | overrides))


def frozen_clip_digest(model: nn.Module, mode: str, exclude_logit_scale: bool = False) -> str:
    """Digest of the CLIP weights ``mode`` must leave bit-identical: all but the prompts for
    MPT, the text tower (everything outside ``visual``) for FT; the logit scale is left out
    when ``exclude_logit_scale`` (FT with a learned scale)."""
    clip = model.clip_adapter.clip_model
    if mode == "ft":
        named = {n: p for n, p in clip.state_dict().items() if not n.startswith("visual.")}
    else:
        named = {n: p for n, p in clip.state_dict().items() if n != "visual.mask_embedding"}
    if exclude_logit_scale:
        named.pop("logit_scale", None)
    return tensor_digest(named)


def prepare_for_mode(
    model: nn.Module, mode: str, prompt_depth: int | None = None, train_logit_scale=False
) -> list:
    """Freeze the model, then unfreeze and return what ``mode`` trains.

    For MPT modes a ``prompt_depth`` different from the model's re-initialises the prompts
    (normal, std 0.02) with that depth and records it in ``model.config``.
    ``train_logit_scale`` also unfreezes CLIP's ``logit_scale`` (the official recipes).
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
    if train_logit_scale:
        params.append(adapter.clip_model.logit_scale)
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def noun_text_features(
    model: nn.Module, nouns: list[str], text: str = "raw", chunk: int = 256
) -> torch.Tensor:
    """(V, C) normalised text embeddings of the nouns (frozen text tower, computed once):
    the raw noun (``text="raw"``, official) or the ViLD template average."""
    templates = ("{}",) if text == "raw" else VILD_TEMPLATES
    parts = [
        model.clip_adapter.text_features(nouns[i : i + chunk], templates)
        for i in range(0, len(nouns), chunk)
    ]
    return torch.cat(parts).clone()


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows, this process's own with its gradient (official ``gather_features``
    without ``gather_with_grad``); ``x`` itself on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def clip_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """The official symmetric CLIP loss over the (global) batch.

    Args:
        image_features, text_features: (B, C) normalised; row i of each is a positive pair.
        logit_scale: the multiplier (already exp'd).
    """
    images, texts = _gather(image_features), _gather(text_features)
    logits = logit_scale * images @ texts.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ClipAdaptationModule(nn.Module):
    """``forward(batch) -> (loss, terms)`` on masked crops and their nouns' embeddings.

    Args:
        clip_adapter: the model's ``MaskAdaptedCLIP``.
        text_features: (V, C) normalised noun embeddings.
        use_prompts: pass region masks to ``encode_masked`` (MPT) or not (FT).
        loss: "contrastive" or "vocabulary-ce" (module docstring).
        logit_scale: "learned" (exp of CLIP's ``logit_scale``) or "fixed-100".
    """

    def __init__(
        self,
        clip_adapter: nn.Module,
        text_features: torch.Tensor,
        use_prompts: bool,
        loss: str = "contrastive",
        logit_scale: str = "learned",
    ):
        super().__init__()
        self.clip_adapter = clip_adapter
        self.register_buffer("text_features", text_features, persistent=False)
        self.use_prompts, self.loss, self.logit_scale = use_prompts, loss, logit_scale

    def scale(self) -> torch.Tensor:
        if self.logit_scale == "learned":
            return self.clip_adapter.clip_model.logit_scale.float().exp()
        return torch.tensor(LOGIT_TEMPERATURE, device=self.text_features.device)

    def forward(self, batch: dict[str, torch.Tensor]):
        """batch: ``crop`` (B, 3, S, S) CLIP-normalised, ``mask`` (B, 1, S, S), ``label`` (B,)."""
        region = batch["mask"] if self.use_prompts else None
        feats = self.clip_adapter.encode_masked(batch["crop"], region)
        images = F.normalize(feats.float(), dim=-1)
        scale = self.scale()
        vocab_logits = scale * images @ self.text_features.T
        if self.loss == "contrastive":
            loss = clip_contrastive_loss(images, self.text_features[batch["label"]], scale)
        else:
            loss = F.cross_entropy(vocab_logits, batch["label"])
        accuracy = (vocab_logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": accuracy.detach(), "logit_scale": scale.detach().float()}


def fit_warmup(config, dataset, info):
    """``config`` with the warmup shortened to the run's length when it is longer (the
    recipes' 100 warmup steps exceed short runs); a note says so."""
    import math
    import sys
    from dataclasses import replace as replace_config

    from ovseg.train.distributed import ResumableDistributedSampler

    per_epoch = ResumableDistributedSampler(dataset, info).num_samples // config.batch_size
    per_epoch //= config.accum_steps
    if per_epoch < 1 or not config.warmup_steps:
        return config  # the loop reports a too-small dataset itself
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
    if config.warmup_steps <= total:
        return config
    if info.is_main:
        print(f"note: warmup_steps {config.warmup_steps} > the run's {total} steps; warming "
              f"up over {total} steps", file=sys.stderr)  # fmt: skip
    return replace_config(config, warmup_steps=total)


def train_clip(
    pairs: str,
    init: str,
    mode: str,
    config,
    options: ClipOptions | None = None,
    hooks=(),
    evaluate=None,
):
    """Train ``mode`` on the pairs folder from the ``init`` checkpoint; returns the path of
    the adapted model (``config.out_dir/model.safetensors``, read by ``ovseg.load_checkpoint``).

    Args:
        config: a ``TrainConfig`` (``recipe_train_config`` makes the official one).
        options: a ``ClipOptions``; None takes the official ones (``ClipOptions()``).
        evaluate: optional ``evaluate(model) -> dict`` (``TrainTask.evaluate``).
    """
    import json

    from ovseg.train import distributed
    from ovseg.train.checkpointing import latest_checkpoint
    from ovseg.train.pairs import PairDataset, collate_pairs
    from ovseg.train.trainer import Trainer, TrainTask
    from ovseg.weights.checkpoints import load_checkpoint, read_metadata

    options = options or ClipOptions()
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    meta = read_metadata(init)
    if mode == "mpt+ft" and "ft" not in str(meta.get("clip_adaptation", "")).split("+"):
        raise ValueError(
            f"mode mpt+ft starts from an FT checkpoint (made by `ovseg train-clip --mode ft`); "
            f"{init} has clip_adaptation={meta.get('clip_adaptation')!r}"
        )
    learned = options.logit_scale == "learned"
    previous = latest_checkpoint(config.out_dir)
    if previous is not None:  # the loop checks its own settings; these are ours
        saved = read_metadata(previous / "model.safetensors").get("clip_options")
        if saved is not None and saved != repr(options):
            raise ValueError(
                f"{config.out_dir} holds a run with other CLIP options; resume it with the "
                f"same ones or use a new --out. Saved: {saved}; now: {options!r}"
            )
    info = distributed.setup(config.device)
    try:
        model = load_checkpoint(init)
        clip = model.clip_adapter.clip_model
        prepare_for_mode(model, mode, options.prompt_depth, train_logit_scale=learned)
        initial_scale = clip.logit_scale.detach().clone()
        exclude_scale = learned and mode == "ft"
        before = frozen_clip_digest(model, mode, exclude_scale)
        dataset = PairDataset(
            pairs,
            image_size=model.clip_adapter.arch.image_size,
            augment=options.augment,
            seed=config.seed,
        )
        text = noun_text_features(model, dataset.vocabulary, options.text)
        module = ClipAdaptationModule(
            model.clip_adapter, text, mode != "ft", options.loss, options.logit_scale
        )
        if options.decay == "official":
            groups = official_param_groups(clip, config.weight_decay, options.mask_weight_decay)
        else:
            groups = uniform_param_groups(clip, config.weight_decay)
        adaptation = {"mpt": "mpt", "ft": "ft", "mpt+ft": "ft+mpt"}[mode]
        metadata = {
            "clip_adaptation": adaptation,
            "init": str(init),
            "init_clip_adaptation": meta.get("clip_adaptation", "none"),
            "frozen_clip_sha256": before,
            "vocabulary_size": len(dataset.vocabulary),
            "clip_options": repr(options),
        }

        def restore_logit_scale(m):
            """MPT: the trained logit scale goes to the metadata, the CLIP keeps its own."""
            scale = m.clip_adapter.clip_model.logit_scale
            if not torch.equal(scale.detach(), initial_scale):
                metadata["trained_logit_scale"] = float(scale.detach())
            with torch.no_grad():
                scale.copy_(initial_scale)

        def finalize(m):
            if mode == "ft":
                m.config.mask_prompt_fwd = False  # the prompts were not trained with this tower
            elif learned:
                restore_logit_scale(m)

        def clamp_logit_scale(step, row):
            with torch.no_grad():  # official: after every optimizer step
                clip.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

        config = fit_warmup(config, dataset, info)
        task = TrainTask(
            model=model,
            module=module,
            param_groups=groups,
            dataset=dataset,
            collate=collate_pairs,
            metadata=metadata,
            evaluate=evaluate,
            finalize=finalize,
        )
        all_hooks = ([clamp_logit_scale] if learned else []) + list(hooks)
        path = Trainer(task, config, info, all_hooks).fit()
        if mode != "ft" and learned:
            restore_logit_scale(model)  # every process, for the check below
        after = frozen_clip_digest(model, mode, exclude_scale)
        if after != before:
            raise RuntimeError(f"{mode}: frozen CLIP weights changed during training (a bug)")
        if info.is_main:
            summary = {"mode": mode, "model": str(path), "frozen_clip_sha256": after}
            print(json.dumps(summary))
        return path
    finally:
        distributed.cleanup()
