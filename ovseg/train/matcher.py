"""Hungarian matching of predicted masks to ground-truth masks (MaskFormer's matcher).

The cost of pairing query ``i`` with target ``j`` is::

    cost_class * -p_i(class_j) + cost_mask * focal(mask_i, mask_j)
        + cost_dice * dice(mask_i, mask_j)

computed at the prediction size: the target masks (at the padded image size) are
downsampled with nearest-neighbour ``F.interpolate``, as in the official matcher. ``p_i`` is
the softmax over all K+1 classes (no-object included), ``focal`` is the
per-pixel mean sigmoid focal loss and ``dice`` is 1 - the soft dice coefficient. The
assignment minimising the total cost is found with ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def resize_targets(masks: torch.Tensor, size) -> torch.Tensor:
    """(M, H, W) binary masks -> (M, *size) float, nearest (``F.interpolate``'s rule)."""
    masks = masks.float()
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros(0, *size)
    return F.interpolate(masks[:, None], size=tuple(size), mode="nearest")[:, 0]


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid focal loss of every (prediction, target) pair.

    Args:
        logits: (N, P) mask logits over P pixels. targets: (M, P) binary masks.
    Returns:
        (N, M) cost: the per-pixel mean of ``focal(logits_n, targets_m)``.
    """
    prob = logits.sigmoid()
    # focal loss of a pixel when its target is 1 (pos) or 0 (neg); BCE with logits is softplus
    pos = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * torch.nn.functional.softplus(-logits)
    neg = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * torch.nn.functional.softplus(logits)
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice (+1 smoothing) of every pair: (N, P), (M, P) -> (N, M)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """Optimal one-to-one assignment of queries to targets, image by image.

    Args:
        cost_class, cost_mask, cost_dice: weights of the three costs (official 1, 20, 1).
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0):
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice

    def cost_matrix(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels, masks
    ) -> torch.Tensor:
        """(Q, M) cost for one image.

        Args:
            class_logits: (Q, K+1). mask_logits: (Q, H, W).
            labels: (M,) int64 in [0, K). masks: (M, H, W) binary, at the image size (they
                are downsampled to the mask-logit size, nearest).
        """
        prob = class_logits.float().softmax(-1)
        cost = -self.cost_class * prob[:, labels]  # the order of the sum is the official one
        pred = mask_logits.float().flatten(1)
        tgt = resize_targets(masks, mask_logits.shape[-2:]).flatten(1)
        return (
            self.cost_mask * pairwise_focal_cost(pred, tgt)
            + cost
            + (self.cost_dice * pairwise_dice_cost(pred, tgt))
        )

    @torch.no_grad()
    def __call__(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            class_logits: (B, Q, K+1). mask_logits: (B, Q, H, W).
            targets: per image ``{"labels": (M,) int64, "masks": (M, H, W)}``.
        Returns:
            per image ``(query_indices, target_indices)``, int64 tensors of equal length
            min(Q, M), sorted by query index.
        """
        if class_logits.shape[0] != len(targets):
            raise ValueError(f"{class_logits.shape[0]} predictions but {len(targets)} targets")
        out = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(
                class_logits[b], mask_logits[b], target["labels"], target["masks"]
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return out
