"""ovseg: open-vocabulary semantic segmentation with mask-adapted CLIP (OVSeg)."""

from ovseg.build import build_clip_only, build_model, build_ovseg, list_models
from ovseg.checkpoints import load_checkpoint, load_clip_weights, load_official, save_checkpoint
from ovseg.config import OVSegConfig
from ovseg.inference import InferenceOptions
from ovseg.modeling.ovseg import OVSeg
from ovseg.modeling.proposals import Proposals
from ovseg.predictor import Predictor
from ovseg.segmentation import Segmentation

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
