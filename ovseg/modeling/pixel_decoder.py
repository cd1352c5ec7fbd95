"""MaskFormer's FPN pixel decoder (``BasePixelDecoder``) with the official parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvGN(nn.Conv2d):
    """Conv2d followed by GroupNorm stored as ``.norm`` (detectron2 Conv2d layout), optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, relu: bool, groups: int = 32):
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(groups, cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """Top-down FPN over res2..res5 producing per-pixel mask features at stride 4.

    Modules are ``adapter_{i}`` (1x1 lateral) and ``layer_{i}`` (3x3 output) for the
    i-th input feature (1-based, finest first); the coarsest feature has only ``layer_N``.

    Args:
        in_channels: channels of each input feature, finest first (res2..res5).
        conv_dim: FPN width (CONVS_DIM). mask_dim: output channels (MASK_DIM).
    """

    def __init__(self, in_channels: list[int], conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        self.num_levels = len(in_channels)
        for i, cin in enumerate(in_channels, start=1):
            if i < self.num_levels:
                self.add_module(f"adapter_{i}", ConvGN(cin, conv_dim, 1, relu=False))
                self.add_module(f"layer_{i}", ConvGN(conv_dim, conv_dim, 3, relu=True))
            else:
                self.add_module(f"layer_{i}", ConvGN(cin, conv_dim, 3, relu=True))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: finest first, (B, C_i, H_i, W_i) -> mask features (B, mask_dim, H_0, W_0)."""
        y = getattr(self, f"layer_{self.num_levels}")(features[-1])
        for i in range(self.num_levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{i}")(features[i - 1])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{i}")(y)
        return self.mask_features(y)
