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
from ovseg.train.param_groups import param_groups


def class_logits(model: nn.Module, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, Q, C) query embeddings, (K, C) text -> (B, Q, K+1) logits with no-object last."""
    b, q, _ = embeddings.shape
    with_void = model.clip_adapter.with_void(text)
    return model.clip_adapter.similarity_logits(embeddings.flatten(0, 1), with_void).view(b, q, -1)


def freeze_for_proposals(model: nn.Module, freeze_at: int = 0) -> None:
    """Train everything but CLIP (``clip_adapter.clip_model``, frozen as in the official
    ``build_clip_model``); ``freeze_at`` > 0 also freezes the first ResNet stages
    (``MODEL.BACKBONE.FREEZE_AT``; the official R101c uses 2: stem and res2)."""
    model.requires_grad_(True)
    model.clip_adapter.clip_model.requires_grad_(False)
    if freeze_at:
        if not hasattr(model.backbone, "freeze"):
            raise ValueError(
                f"freeze_at={freeze_at} needs a ResNet backbone; "
                f"{type(model.backbone).__name__} has no stages to freeze (use 0)"
            )
        model.backbone.freeze(freeze_at)


def recipe_param_groups(model: nn.Module, recipe: dict) -> list[dict]:
    """The official AdamW groups (``ovseg.train.param_groups``) with a recipe's lr, weight
    decays and backbone multiplier."""
    return param_groups(
        model,
        recipe["lr"],
        recipe["weight_decay"],
        recipe["backbone_lr_mult"],
        recipe["weight_decay_norm"],
        recipe["weight_decay_embed"],
    )


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
        """batch: ``image`` (B, 3, H, W) 0-255 (padded by the mapper with 128), ``targets``
        list of ``{"labels", "masks" (M, H, W)}``.

        As the official model: every pixel is normalised (the mapper's padding too), then the
        batch is zero-padded to a multiple of ``size_divisibility`` (``ImageList``), and the
        target masks with it (``prepare_targets``)."""
        m = self.model
        image = batch["image"].float()
        x = (image - m.pixel_mean.view(1, 3, 1, 1)) / m.pixel_std.view(1, 3, 1, 1)
        h, w = x.shape[-2:]
        div = m.config.size_divisibility
        pad = (0, (-w) % div, 0, (-h) % div)
        targets = batch["targets"]
        if any(pad):
            x = F.pad(x, pad)
            targets = [t | {"masks": F.pad(t["masks"], pad)} for t in targets]
        embeddings, masks = m.proposal_outputs(x, all_layers=True)
        logits = [class_logits(m, e, self.text_features) for e in embeddings]
        return self.criterion(logits, masks, targets)


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
    from ovseg.modeling.build import build_ovseg
    from ovseg.modeling.config import OVSegConfig
    from ovseg.modeling.variants import MODELS
    from ovseg.weights.checkpoints import load_checkpoint, load_clip_weights, read_metadata

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


# our own options beside the official recipe values (``--augment simple-scale`` and its sizes)
OWN_SETTINGS = {"augment": "official", "short_side": 512, "scale_range": (0.5, 2.0)}
AUGMENTS = ("official", "simple-scale")


def resolve_settings(recipe: str | dict, **settings) -> dict:
    """A recipe's values (``ovseg.train.recipes``; a name or a dict) with ``settings``
    overriding them; unknown names raise ``ValueError``."""
    from ovseg.train.recipes import get_recipe

    base = (get_recipe(recipe) if isinstance(recipe, str) else dict(recipe)) | OWN_SETTINGS
    unknown = sorted(set(settings) - set(base))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(base)}")
    given = {k: v for k, v in settings.items() if v is not None}
    if "crop" in given and "pad_to" not in given and base["pad_to"] == base["crop"]:
        given["pad_to"] = given["crop"]  # the official configs pad to the crop size
    out = base | given
    if out["augment"] not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {out['augment']!r}")
    return out


def recipe_train_config(settings: dict, out_dir: str, world_size: int = 1, accum_steps: int = 1,
                        **loop):  # fmt: skip
    """A ``TrainConfig`` with the recipe's optimizer and schedule values. The per-process
    batch is the recipe's global batch / (processes x ``accum_steps``) unless ``loop`` sets
    ``batch_size``; other ``loop`` keys (``TrainConfig`` fields) override."""
    from ovseg.train.trainer import TrainConfig

    batch = loop.pop("batch_size", None)
    if batch is None:
        batch, rest = divmod(settings["global_batch"], world_size * accum_steps)
        if rest or batch < 1:
            raise ValueError(
                f"the global batch {settings['global_batch']} does not split over "
                f"{world_size} processes x {accum_steps} accumulation steps; set --batch-size"
            )
    values = dict(
        out_dir=out_dir,
        batch_size=batch,
        accum_steps=accum_steps,
        max_steps=settings["max_steps"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        schedule=settings["schedule"],
        poly_power=settings["poly_power"],
        warmup_steps=settings["warmup_steps"],
        warmup_factor=settings["warmup_factor"],
        adam_betas=tuple(settings["adam_betas"]),
        adam_eps=settings["adam_eps"],
        grad_clip=settings["grad_clip"],
    )
    return TrainConfig(**(values | {k: v for k, v in loop.items() if v is not None}))


def build_augmentation(settings: dict):
    """The augmentation of ``settings`` (``ovseg.train.augment``)."""
    from ovseg.train.augment import OfficialAugmentation, SimpleScaleAugmentation

    if settings["augment"] == "simple-scale":
        return SimpleScaleAugmentation(
            settings["crop"], settings["short_side"], settings["scale_range"],
            settings["image_pad_value"],
        )  # fmt: skip
    return OfficialAugmentation(
        settings["min_size_train"],
        settings["max_size_train"],
        settings["crop"],
        settings["single_category_max_area"],
        settings["color_aug_ssd"],
        settings["flip"],
        settings["pad_to"],
        settings["image_pad_value"],
    )


def train_proposals(
    data: str,
    config,
    recipe: str | dict = "swinB-coco-stuff",
    model_name: str | None = None,
    init: str | None = None,
    overrides: dict | None = None,
    clip_weights: str | None = None,
    eval_images: int | None = None,
    eval_short_side: int = 256,
    hooks=(),
    **settings,
):
    """Train the proposal model on the ``train`` split of ``data``; validate on its ``val``
    split. Returns the trained model's path (``config.out_dir/model.safetensors``).

    Args:
        config: the loop's ``TrainConfig`` (lr, weight decay, schedule, clipping, batch...;
            ``recipe_train_config`` makes it from a recipe).
        recipe: a name of ``ovseg.train.recipes.PROPOSAL_RECIPES`` or a settings dict; its
            model and dataset are used unless ``model_name`` / ``init`` / ``dataset`` say
            otherwise.
        settings: recipe values to override (``dataset``, ``crop``, ``min_size_train``,
            ``freeze_at``, ``mask_loss_resolution``, ``augment``...).
    """
    from ovseg.train import distributed
    from ovseg.train.matcher import HungarianMatcher
    from ovseg.train.semseg_data import SemSegTrainSet, collate_semseg, open_source
    from ovseg.train.trainer import Trainer, TrainTask

    s = resolve_settings(recipe, **settings)
    if model_name is None and init is None:
        model_name = s["model"]
    weights = {"loss_ce": s["class_weight"], "loss_mask": s["mask_weight"],
               "loss_dice": s["dice_weight"]}  # fmt: skip
    train_folder = open_source(s["dataset"], data, "train")
    val_folder = open_source(s["dataset"], data, "val") if config.eval_every else None
    info = distributed.setup(config.device)
    try:
        model = build_start_model(model_name, init, overrides or {}, config.seed, clip_weights)
        freeze_for_proposals(model, s["freeze_at"])
        if s["drop_path_rate"]:
            if not hasattr(model.backbone, "set_drop_path_rate"):
                raise ValueError("drop_path_rate > 0 needs a Swin backbone")
            model.backbone.set_drop_path_rate(s["drop_path_rate"])
        groups = param_groups(
            model, config.lr, config.weight_decay, s["backbone_lr_mult"],
            s["weight_decay_norm"], s["weight_decay_embed"],
        )  # fmt: skip
        text = model.clip_adapter.text_features(train_folder.class_names).clone()
        criterion = SetCriterion(
            len(train_folder.class_names),
            HungarianMatcher(weights["loss_ce"], weights["loss_mask"], weights["loss_dice"]),
            no_object_weight=s["no_object_weight"],
            weights=weights,
            deep_supervision=s["deep_supervision"],
            mask_loss_resolution=s["mask_loss_resolution"],
        )
        train_set = SemSegTrainSet(train_folder, build_augmentation(s), config.seed)

        def evaluate(m):
            return evaluate_proposals(m, val_folder, text, eval_short_side, eval_images)

        task = TrainTask(
            model=model,
            module=ProposalTrainModule(model, text, criterion),
            param_groups=groups,
            dataset=train_set,
            collate=collate_semseg,
            metadata={
                "trained": "proposals",
                "dataset": f"{s['dataset']}:{data}",
                "class_names": train_folder.class_names,
                "init": str(init) if init else f"scratch:{model_name}",
                "recipe": recipe if isinstance(recipe, str) else "custom",
                "settings": {k: v for k, v in s.items() if k != "model"},
            },
            evaluate=evaluate if val_folder is not None else None,
        )
        return Trainer(task, config, info, hooks).fit()
    finally:
        distributed.cleanup()
