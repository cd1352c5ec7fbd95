"""Per-dataset settings of the official evaluation.

The official evaluation runs one config (lambda = ``CLIP_ENSEMBLE_WEIGHT`` 0.7) and overrides
lambda on the command line for Pascal Context (0.6, both 59 and 459 classes) and Pascal VOC
(0.45) (ov-seg GETTING_STARTED.md); ADE20K keeps the config's 0.7.
"""

from __future__ import annotations

PUBLISHED_ENSEMBLE_WEIGHTS = {
    "pascal-context-59": 0.6,
    "pascal-context-459": 0.6,
    "pascal-voc-20": 0.45,
}


def eval_ensemble_weight(dataset: str, model_weight: float, override: float | None) -> float:
    """lambda for evaluating on ``dataset``: the user's ``override``, else the published
    per-dataset value, else the model's own (``OVSegConfig.ensemble_weight``)."""
    if override is not None:
        return float(override)
    return PUBLISHED_ENSEMBLE_WEIGHTS.get(dataset, float(model_weight))
