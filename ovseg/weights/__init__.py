"""Loading weights: released files (``hub``), checkpoint formats (``checkpoints``), the Hub
folder format (``pretrained``), official YAML configs (``official_yaml``,
``official_config``) and named variants with their weights (``registry``).

Loaders call the builder (``ovseg.modeling.build``); nothing in ``ovseg.modeling`` imports
this package. Importing it registers the Hub formats on ``OVSeg`` (``pretrained``).
"""

from ovseg.weights.checkpoints import (
    load_checkpoint,
    load_clip_weights,
    load_official,
    save_checkpoint,
)
from ovseg.weights.pretrained import load_pretrained, save_pretrained_files
from ovseg.weights.registry import build_clip_only, build_model

__all__ = [
    "build_clip_only",
    "build_model",
    "load_checkpoint",
    "load_clip_weights",
    "load_official",
    "load_pretrained",
    "save_checkpoint",
    "save_pretrained_files",
]
