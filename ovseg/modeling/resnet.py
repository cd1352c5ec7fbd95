"""ResNet-101c: ResNet with the DeepLab stem (three 3x3 convs) and frozen batch norm.

Parameter names (``stem.conv1``, ``res2.0.conv1.norm``, ``shortcut``) follow the official
checkpoints. Stage res5 uses multi-grid dilations (1, 2, 4) as the DeepLab builder does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class ConvNorm(nn.Conv2d):
    """Conv2d (no bias) followed by frozen BN, stored as ``.norm`` like detectron2's Conv2d."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            bias=False,
        )
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    def __init__(
        self, cin: int, cout: int, bottleneck: int, stride: int, dilation: int, stride_in_1x1: bool
    ):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=s1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=s3, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class DeepLabStem(nn.Module):
    def __init__(self, in_chans: int = 3, out_channels: int = 128):
        super().__init__()
        self.conv1 = ConvNorm(in_chans, out_channels // 2, 3, stride=2)
        self.conv2 = ConvNorm(out_channels // 2, out_channels // 2, 3)
        self.conv3 = ConvNorm(out_channels // 2, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNetDeepLab(nn.Module):
    """ResNet with a DeepLab stem, returning ``{"res2": ..., "res5": ...}`` (strides 4..32).

    Args:
        depth: 50 or 101 (blocks per stage (3, 4, 6, 3) or (3, 4, 23, 3)).
        stem_channels: stem output channels (128 for R101c).
        res2_channels: output channels of res2 (256); doubles per stage.
        res5_multi_grid: dilation multipliers of the three res5 blocks.
    """

    BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

    def __init__(
        self,
        depth: int = 101,
        stem_channels: int = 128,
        res2_channels: int = 256,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        res5_multi_grid=(1, 2, 4),
        out_features=("res2", "res3", "res4", "res5"),
    ):
        super().__init__()
        if depth not in self.BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(self.BLOCKS)}, got {depth}")
        self.out_features = tuple(out_features)
        self.stem = DeepLabStem(3, stem_channels)
        cin, cout, bott = stem_channels, res2_channels, width_per_group
        self._channels = {}
        for i, n in enumerate(self.BLOCKS[depth]):
            name = f"res{i + 2}"
            first_stride = 1 if i == 0 else 2
            dilations = list(res5_multi_grid) if name == "res5" else [1] * n
            if len(dilations) != n:
                raise ValueError(f"res5_multi_grid needs {n} entries, got {res5_multi_grid}")
            blocks = [
                Bottleneck(
                    cin if j == 0 else cout,
                    cout,
                    bott,
                    first_stride if j == 0 else 1,
                    dilations[j],
                    stride_in_1x1,
                )
                for j in range(n)
            ]
            self.add_module(name, nn.Sequential(*blocks))
            self._channels[name] = cout
            cin, cout, bott = cout, cout * 2, bott * 2

    def freeze(self, freeze_at: int) -> None:
        """Stop training the first stages, like detectron2's ``FREEZE_AT``: 1 freezes the
        stem, 2 the stem and res2 (the official R101c value), ... up to 5. The batch norms
        are frozen already. 0 freezes nothing."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        for index, name in enumerate(("stem", "res2", "res3", "res4", "res5"), start=1):
            if freeze_at >= index:
                getattr(self, name).requires_grad_(False)

    @property
    def out_channels(self) -> dict[str, int]:
        return dict(self._channels)

    @property
    def out_strides(self) -> dict[str, int]:
        return {f"res{i + 2}": 4 * 2**i for i in range(4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalised image -> dict of (B, C_i, H/s_i, W/s_i)."""
        x = self.stem(x)
        out = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            if name in self.out_features:
                out[name] = x
        return out
