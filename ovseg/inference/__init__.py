"""Running a model on images: ``Predictor`` (``predictor``), how it runs (``options``: dtype,
fast paths), test-time augmentation and sliding window (``tta``), the result type and its
files (``segmentation``, ``visualize``) and the ONNX export (``onnx``)."""

from ovseg.inference.options import InferenceOptions
from ovseg.inference.predictor import Predictor
from ovseg.inference.segmentation import Segmentation

__all__ = ["InferenceOptions", "Predictor", "Segmentation"]
