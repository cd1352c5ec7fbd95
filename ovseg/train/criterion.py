"""MaskFormer's set criterion: classification CE with a down-weighted no-object class, and
sigmoid focal + dice mask losses on the matched pairs, optionally on every decoder layer.

Targets are per-class masks at the padded image size, as the official dataset mapper makes
them. The matcher compares them at the prediction size (targets downsampled, nearest); the
mask losses, as in the official ``SetCriterion.loss_masks``, upsample the matched predictions
to the target size (bilinear, ``align_corners=False``). ``mask_loss_resolution="quarter"``
is our cheaper variant: the loss is computed at the prediction size (1/4) on the
nearest-downsampled targets.

Normalisation is global across processes, so a run split over N processes gives the same
loss and gradients as one process with the whole batch (DDP averages gradients, so each
process's loss is ``its share of the global sum / (global normaliser / world size)``):

- ``loss_ce``: sum over queries of ``w * ce`` / sum of ``w`` (``w`` is 1 for a matched
  query, ``no_object_weight`` for the others);
- ``loss_mask`` (focal) and ``loss_dice``: sum over matched pairs / number of target masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovseg.train import distributed
from ovseg.train.matcher import FOCAL_ALPHA, FOCAL_GAMMA, HungarianMatcher, resize_targets

MASK_LOSS_RESOLUTIONS = ("image", "quarter")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pair focal loss, averaged over pixels: (M, P), (M, P) -> (M,).

    ``alpha_t * (1 - p_t) ** gamma * BCE`` with alpha 0.25, gamma 2 (RetinaNet's).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pair ``1 - (2 |p t| + 1) / (|p| + |t| + 1)``: (M, P), (M, P) -> (M,)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


class SetCriterion:
    """The MaskFormer loss for open-vocabulary class logits.

    Args:
        num_classes: K (the logits have K+1 columns, the last is no-object).
        matcher: the ``HungarianMatcher``.
        no_object_weight: CE weight of the no-object class (official 0.1).
        weights: ``{"loss_ce": 1, "loss_mask": 20, "loss_dice": 1}`` (official).
        deep_supervision: also apply the loss to every intermediate decoder layer.
        mask_loss_resolution: "image" (official: predictions upsampled to the target size)
            or "quarter" (targets downsampled to the prediction size, nearest).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        no_object_weight: float = 0.1,
        weights: dict[str, float] | None = None,
        deep_supervision: bool = True,
        mask_loss_resolution: str = "image",
    ):
        if mask_loss_resolution not in MASK_LOSS_RESOLUTIONS:
            raise ValueError(
                f"mask_loss_resolution must be one of {MASK_LOSS_RESOLUTIONS}, "
                f"got {mask_loss_resolution!r}"
            )
        self.mask_loss_resolution = mask_loss_resolution
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.no_object_weight = no_object_weight
        self.weights = weights or {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
        unknown = set(self.weights) - {"loss_ce", "loss_mask", "loss_dice"}
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; use loss_ce/mask/dice")
        self.deep_supervision = deep_supervision

    def layer_losses(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[dict],
        indices: list | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one decoder layer.

        Args:
            class_logits: (B, Q, K+1). mask_logits: (B, Q, h, w).
            targets: per image ``{"labels": (M,), "masks": (M, H, W)}`` at the padded image
                size (any size that is a whole multiple of the prediction's works).
            indices: the matching (``matcher`` output); computed when None.
        """
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"class logits have {class_logits.shape[-1]} columns, expected "
                f"{self.num_classes} classes + no-object"
            )
        if indices is None:
            indices = self.matcher(class_logits, mask_logits, targets)
        b, q = class_logits.shape[:2]
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64)
        for i, ((src, tgt), target) in enumerate(zip(indices, targets)):
            target_classes[i, src] = target["labels"][tgt].cpu()
        target_classes = target_classes.to(class_logits.device)
        class_weight = torch.ones(self.num_classes + 1, device=class_logits.device)
        class_weight[-1] = self.no_object_weight
        ce = F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, reduction="none")
        w = class_weight[target_classes]
        loss_ce = (w * ce).sum() / _global_mean(w.sum().detach())

        num_masks = _global_mean(
            torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=mask_logits.device)
        ).clamp(min=1.0)
        pred = torch.cat([mask_logits[i, src] for i, (src, _) in enumerate(indices)]).float()
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(pred)
        if self.mask_loss_resolution == "image":
            if len(pred):
                pred = F.interpolate(
                    pred[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
        else:
            tgt = resize_targets(tgt, pred.shape[-2:])
        pred, tgt = pred.flatten(1), tgt.flatten(1)
        return {
            "loss_ce": loss_ce,
            "loss_mask": sigmoid_focal_loss(pred, tgt).sum() / num_masks,
            "loss_dice": dice_loss(pred, tgt).sum() / num_masks,
        }

    def __call__(
        self,
        class_logits: list[torch.Tensor],
        mask_logits: list[torch.Tensor],
        targets: list[dict],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted loss and its terms.

        Args:
            class_logits, mask_logits: per decoder layer, last layer last (lists of
                (B, Q, K+1) and (B, Q, H, W)).
        Returns:
            ``(loss, terms)``: terms has the last layer's ``loss_ce/loss_mask/loss_dice`` and,
            with deep supervision, ``loss_aux`` (the weighted sum of the other layers).
        """
        layers = list(zip(class_logits, mask_logits))
        if not self.deep_supervision:
            layers = layers[-1:]
        total, terms = 0.0, {}
        for depth, (cls, masks) in enumerate(layers):
            losses = self.layer_losses(cls, masks, targets)
            weighted = sum(self.weights[k] * v for k, v in losses.items())
            total = total + weighted
            if depth == len(layers) - 1:
                terms.update({k: v.detach() for k, v in losses.items()})
            else:
                terms["loss_aux"] = terms.get("loss_aux", 0.0) + weighted.detach()
        return total, terms


def _global_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over the processes (itself on one process)."""
    return distributed.all_reduce_mean(value)
