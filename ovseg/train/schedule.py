"""Learning-rate schedules: linear warmup, then cosine, poly or constant (multipliers of the
base lr, for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "poly", "constant")
WARMUP_MODES = ("linear", "open_clip")


class WarmupSchedule:
    """lr multiplier at optimizer step ``s`` of ``total_steps``.

    - warmup (``s < warmup_steps``), ``warmup_mode``:
      - "linear" (detectron2's WarmupPolyLR): ``warmup_factor * (1 - a) + a``, ``a = s / W``;
      - "open_clip" (open_clip's ``cosine_lr``, used by the official CLIP adaptation):
        ``(s + 1) / W``;
    - cosine: ``0.5 * (1 + cos(pi * t))`` with t the post-warmup progress in [0, 1];
    - poly: ``(1 - s / total_steps) ** power`` (detectron2's WarmupPolyLR, power 0.9);
    - constant: 1.

    A plain object with plain attributes, so ``LambdaLR.state_dict`` saves it.
    """

    def __init__(
        self,
        name: str,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_factor: float = 1e-3,
        warmup_mode: str = "linear",
        power: float = 0.9,
    ):
        if name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        self.name, self.total_steps, self.warmup_steps = name, total_steps, warmup_steps
        if warmup_mode not in WARMUP_MODES:
            raise ValueError(f"warmup_mode must be one of {WARMUP_MODES}, got {warmup_mode!r}")
        self.warmup_factor, self.power = warmup_factor, power
        self.warmup_mode = warmup_mode

    def __call__(self, step: int) -> float:
        step = min(step, self.total_steps)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            if self.warmup_mode == "open_clip":
                warm = (step + 1) / self.warmup_steps
            else:
                warm = self.warmup_factor * (1 - alpha) + alpha
        else:
            warm = 1.0
        if self.name == "constant":
            return warm
        if self.name == "poly":
            return warm * (1 - step / self.total_steps) ** self.power
        span = max(1, self.total_steps - self.warmup_steps)
        progress = max(0, step - self.warmup_steps) / span
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
