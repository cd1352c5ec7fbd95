"""ovseg: open-vocabulary semantic segmentation with mask-adapted CLIP (OVSeg)."""

from ovseg.inference import InferenceOptions, Predictor, Segmentation
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.config import OVSegConfig
from ovseg.modeling.ovseg import OVSeg
from ovseg.modeling.proposals import Proposals
from ovseg.modeling.variants import list_models
from ovseg.weights import (
    build_clip_only,
    build_model,
    load_checkpoint,
    load_clip_weights,
    load_official,
    save_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "InferenceOptions",
    "OVSeg",
    "OVSegConfig",
    "Predictor",
    "Proposals",
    "Segmentation",
    "build_clip_only",
    "build_model",
    "build_ovseg",
    "list_models",
    "load_checkpoint",
    "load_clip_weights",
    "load_official",
    "save_checkpoint",
]
