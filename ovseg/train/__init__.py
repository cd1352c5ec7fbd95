"""Training for OVSeg: mining mask-noun pairs, CLIP adaptation (mask prompt tuning,
fine-tuning) and the proposal model (MaskFormer set criterion), on one process or many
under ``torchrun``.

This package imports the library (``ovseg``); the library never imports it.
"""
