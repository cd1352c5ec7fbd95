"""Training for OVSeg: the proposal model (MaskFormer set criterion) and CLIP adaptation
(mask prompt tuning, fine-tuning), on one process or many under ``torchrun``.

This package imports the library (``ovseg``); the library never imports it.
"""
