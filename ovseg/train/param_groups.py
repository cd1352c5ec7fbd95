"""AdamW parameter groups by the official rules (ov-seg ``train_net.Trainer.build_optimizer``).

For every trainable parameter, visited once in ``model.named_modules()`` order:

- lr = ``base_lr``, times ``backbone_multiplier`` when the owning module's name contains
  "backbone";
- weight decay = ``weight_decay``, except ``weight_decay_norm`` for the parameters of norm
  modules (batch/group/instance/layer norms), ``weight_decay_embed`` for ``nn.Embedding``
  (the decoder's ``query_embed``), and 0 for parameters named
  ``relative_position_bias_table`` or ``absolute_pos_embed``. Biases are not special.

Parameters with the same (lr, weight decay) share one group; each group lists its
parameters' full names under ``"names"`` (AdamW keeps the extra key).
"""

from __future__ import annotations

from torch import nn

NORM_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float = 1.0,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict]:
    """Groups ``{"params", "names", "lr", "weight_decay"}`` of the trainable parameters."""
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = base_lr * (backbone_multiplier if "backbone" in module_name else 1.0)
            decay = weight_decay
            if any(n in param_name for n in NO_DECAY_NAMES):
                decay = 0.0
            if isinstance(module, NORM_MODULES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            group = groups.setdefault(
                (lr, decay), {"params": [], "names": [], "lr": lr, "weight_decay": decay}
            )
            group["params"].append(param)
            group["names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return list(groups.values())
