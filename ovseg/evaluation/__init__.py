"""Zero-shot semantic segmentation evaluation: evaluator, evaluation loop, oracles, sweeps."""

from ovseg.evaluation.loop import ConfusionCache, evaluate_dataset
from ovseg.evaluation.sem_seg import SemSegEvaluator, image_confusion, metrics_from_confusion

__all__ = [
    "ConfusionCache",
    "SemSegEvaluator",
    "evaluate_dataset",
    "image_confusion",
    "metrics_from_confusion",
]
