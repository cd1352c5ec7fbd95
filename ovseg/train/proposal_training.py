"""Training the proposal model (backbone, pixel decoder, open-vocabulary decoder) with
MaskFormer's set criterion. Class logits are ``100 * cos`` against the CLIP text embeddings
of the dataset's class names plus the learned no-object embedding, so the trained model
stays open-vocabulary. CLIP is frozen; the text embeddings are computed once.

Validation (``evaluate_proposals``) measures the proposals themselves:

- ``oracle_miou``: every proposal takes the GT class it overlaps most, masks are fused like
  MaskFormer's semantic inference; only mask quality limits it (the paper's oracle, from
  ``ovseg.evaluation.oracles``).
- ``mask_recall``: fraction of GT segments (one per class per image) matched by a binarised
  proposal with IoU >= 0.5.
- ``miou``: the model's own closed-vocabulary prediction (proposal branch only).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ovseg.data.transforms import normalize_and_pad
from ovseg.evaluation.oracles import proposal_oracle
from ovseg.evaluation.sem_seg import SemSegEvaluator, metrics_from_confusion
from ovseg.modeling.fusion import proposal_class_probs, semantic_fusion
from ovseg.proposals.ground_truth import resize_label
from ovseg.train.criterion import SetCriterion

RECIPE = {"lr": 6e-5, "weight_decay": 1e-2}  # the paper's (Swin-B, batch 32, poly, 120K iter)


def class_logits(model: nn.Module, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, Q, C) query embeddings, (K, C) text -> (B, Q, K+1) logits with no-object last."""
    b, q, _ = embeddings.shape
    with_void = model.clip_adapter.with_void(text)
    return model.clip_adapter.similarity_logits(embeddings.flatten(0, 1), with_void).view(b, q, -1)


def proposal_parameters(model: nn.Module, backbone_lr_mult: float, lr: float) -> list[dict]:
    """Freeze CLIP, train backbone (lr x ``backbone_lr_mult``), head and no-object embedding."""
    model.requires_grad_(False)
    head = list(model.sem_seg_head.parameters()) + [model.clip_adapter.non_object_embedding]
    backbone = list(model.backbone.parameters())
    for p in head + backbone:
        p.requires_grad_(True)
    return [{"params": backbone, "lr": lr * backbone_lr_mult}, {"params": head}]


class ProposalTrainModule(nn.Module):
    """``forward(batch) -> (loss, terms)`` for MaskFormer training.

    Args:
        model: the ``OVSeg`` model. text_features: (K, C) normalised class embeddings.
        criterion: the ``SetCriterion``.
    """

    def __init__(self, model: nn.Module, text_features: torch.Tensor, criterion: SetCriterion):
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features, persistent=False)
        self.criterion = criterion

    def forward(self, batch: dict):
        """batch: ``image`` (B, 3, H, W) 0-255, ``pad`` (B, H, W) bool, ``targets`` list."""
        m = self.model
        x = (batch["image"] - m.pixel_mean.view(1, 3, 1, 1)) / m.pixel_std.view(1, 3, 1, 1)
        x = x.masked_fill(batch["pad"][:, None], 0.0)
        embeddings, masks = m.proposal_outputs(x, all_layers=True)
        logits = [class_logits(m, e, self.text_features) for e in embeddings]
        return self.criterion(logits, masks, batch["targets"])


def _resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    size = (round(w * s), round(h * s))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


@torch.no_grad()
def proposal_masks(model: nn.Module, image: np.ndarray, short_side: int):
    """Proposals of one image resized to ``short_side``.

    Returns ``(masks (Q, h, w) sigmoid probabilities, embeddings (Q, C))`` on the CPU.
    """
    small = _resize_short_side(image, short_side)
    h, w = small.shape[:2]
    img = torch.from_numpy(small).permute(2, 0, 1).float().to(model.pixel_mean.device)
    x = normalize_and_pad(img, model.pixel_mean, model.pixel_std, model.config.size_divisibility)
    embeddings, logits = model.proposal_outputs(x)
    masks = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return masks[0, :, :h, :w].sigmoid().float().cpu(), embeddings[0].float().cpu()


@torch.no_grad()
def evaluate_proposals(
    model: nn.Module,
    source,
    text_features: torch.Tensor,
    short_side: int = 256,
    max_images: int | None = None,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """Oracle mIoU (``ovseg.evaluation.oracles.proposal_oracle``), mask recall@0.5 and the
    model's own closed-vocabulary mIoU on the first ``max_images`` images of ``source``,
    with the proposals computed at ``short_side`` and scored at the label's size."""
    model.eval()
    names = source.class_names
    k = len(names)
    oracle_eval, own_eval = SemSegEvaluator(names), SemSegEvaluator(names)
    hits = segments = 0
    n = len(source) if max_images is None else min(max_images, len(source))
    text = text_features.float().cpu()
    for i in range(n):
        image, label = source.load(i)
        masks, embeddings = proposal_masks(model, image, short_side)
        oracle_eval.update(proposal_oracle(image, label, lambda _, m=masks: m, k), label)
        logits = class_logits(model, embeddings[None], text.to(embeddings))[0]
        sem = semantic_fusion(proposal_class_probs(logits), masks)
        sem = F.interpolate(sem[None], size=label.shape, mode="bilinear", align_corners=False)
        own_eval.update(sem[0].argmax(0).numpy(), label)
        # mask recall at the proposal size: best IoU of a binarised proposal per GT segment
        gt = torch.as_tensor(resize_label(label, tuple(masks.shape[-2:]))).reshape(-1)
        classes = torch.unique(gt)
        classes = classes[(classes >= 0) & (classes < k)]
        if len(classes):
            onehot = (gt[:, None] == classes[None]).float()
            binary = (masks > mask_threshold).flatten(1).float()
            inter = binary @ onehot
            union = binary.sum(1, keepdim=True) + onehot.sum(0, keepdim=True) - inter
            hits += int(((inter / union.clamp(min=1)).amax(0) >= 0.5).sum())
            segments += len(classes)
    oracle = metrics_from_confusion(oracle_eval.confusion, names)
    own = metrics_from_confusion(own_eval.confusion, names)
    return {
        "oracle_miou": round(oracle["mIoU"], 3),
        "mask_recall": round(100.0 * hits / max(segments, 1), 3),
        "miou": round(own["mIoU"], 3),
        "images": n,
    }


def build_start_model(
    model_name: str | None, init: str | None, overrides: dict, seed: int, clip_weights=None
):
    """The model to train: ``init`` (an ovseg checkpoint) or ``model_name``'s architecture
    with fresh random weights (seeded), with ``OVSegConfig`` field ``overrides``.

    ``clip_weights``: OpenAI/OpenCLIP CLIP weights, or an ovseg ``.safetensors`` checkpoint
    whose CLIP towers are copied (so that the trained head fits that CLIP's text space).
    """
    from ovseg.build import MODELS, build_ovseg
    from ovseg.checkpoints import load_checkpoint, load_clip_weights, read_metadata
    from ovseg.config import OVSegConfig

    if (model_name is None) == (init is None):
        raise ValueError("give exactly one of --model NAME (from scratch) or --init CKPT")
    if init is not None:
        if overrides:
            raise ValueError("--set changes the architecture; it only goes with --model")
        model = load_checkpoint(init)
    else:
        if model_name not in MODELS:
            raise ValueError(f"unknown model {model_name!r}; available: {list(MODELS)}")
        config = OVSegConfig.from_dict(MODELS[model_name]().to_dict() | overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_ovseg(config)
    if clip_weights is not None:
        if str(clip_weights).endswith(".safetensors") and "format" in read_metadata(clip_weights):
            copy_clip(load_checkpoint(clip_weights), model)  # the CLIP of an ovseg checkpoint
        else:
            load_clip_weights(model, clip_weights)
    return model


def copy_clip(source: nn.Module, target: nn.Module) -> None:
    """Copy the CLIP towers (``clip_adapter.clip_model``, not the mask prompts, which
    proposal training does not use) from ``source`` to ``target``."""
    if source.config.clip != target.config.clip:
        raise ValueError(f"CLIP architectures differ: {source.config.clip} vs {target.config.clip}")
    sd = source.clip_adapter.clip_model.state_dict()
    sd.pop("visual.mask_embedding", None)
    missing, unexpected = target.clip_adapter.clip_model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if k != "visual.mask_embedding"]:
        raise ValueError(f"CLIP keys do not fit: missing {missing}, unexpected {unexpected}")


def train_proposals(
    data: str,
    config,
    dataset: str = "folder",
    model_name: str | None = None,
    init: str | None = None,
    overrides: dict | None = None,
    clip_weights: str | None = None,
    crop: int = 512,
    short_side: int = 512,
    scale_range: tuple[float, float] = (0.5, 2.0),
    deep_supervision: bool = True,
    no_object_weight: float = 0.1,
    loss_weights: dict[str, float] | None = None,
    backbone_lr_mult: float = 0.1,
    eval_images: int | None = None,
    eval_short_side: int = 256,
    hooks=(),
):
    """Train the proposal model on the ``train`` split of ``data`` (read as ``dataset``: a
    name of ``ovseg.data.datasets`` or "folder", see ``semseg_data.open_source``); validate on
    its ``val`` split. Returns the trained model's path (``config.out_dir/model.safetensors``)."""
    from ovseg.train import distributed
    from ovseg.train.criterion import SetCriterion
    from ovseg.train.matcher import HungarianMatcher
    from ovseg.train.semseg_data import SemSegTrainSet, collate_semseg, open_source
    from ovseg.train.trainer import Trainer, TrainTask

    weights = loss_weights or {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
    train_folder = open_source(dataset, data, "train")
    val_folder = open_source(dataset, data, "val") if config.eval_every else None
    info = distributed.setup(config.device)
    try:
        model = build_start_model(model_name, init, overrides or {}, config.seed, clip_weights)
        groups = proposal_parameters(model, backbone_lr_mult, config.lr)
        text = model.clip_adapter.text_features(train_folder.class_names).clone()
        criterion = SetCriterion(
            len(train_folder.class_names),
            HungarianMatcher(weights["loss_ce"], weights["loss_mask"], weights["loss_dice"]),
            no_object_weight=no_object_weight,
            weights=weights,
            deep_supervision=deep_supervision,
        )
        dataset = SemSegTrainSet(train_folder, crop, short_side, scale_range, config.seed)

        def evaluate(m):
            return evaluate_proposals(m, val_folder, text, eval_short_side, eval_images)

        task = TrainTask(
            model=model,
            module=ProposalTrainModule(model, text, criterion),
            param_groups=groups,
            dataset=dataset,
            collate=collate_semseg,
            metadata={
                "trained": "proposals",
                "dataset": f"{dataset}:{data}",
                "class_names": train_folder.class_names,
                "init": str(init) if init else f"scratch:{model_name}",
            },
            evaluate=evaluate if val_folder is not None else None,
        )
        return Trainer(task, config, info, hooks).fit()
    finally:
        distributed.cleanup()
