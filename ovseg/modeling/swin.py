"""Swin Transformer backbone in the layout of the official Swin segmentation code.

Parameter names (``patch_embed``, ``layers.i.blocks.j``, ``norm{i}``) match the official
OVSeg / MaskFormer checkpoints. Inputs of any size are padded inside the model: the patch
embedding pads to a multiple of the patch size, every block pads to a multiple of the window,
and patch merging pads odd sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * H/w * W/w, w*w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) of 0 / -100, or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of a random ``rate`` share of the samples
    and scale the others by ``1 / (1 - rate)`` (timm's ``DropPath``); identity in eval."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool
    ):
        super().__init__()
        self.window, self.shift = window, shift
        self.drop_path = 0.0  # stochastic depth rate (training only), set by SwinTransformer
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C)."""
        b, _, c = x.shape
        ws = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), attn_mask if self.shift > 0 else None)
        y = window_reverse(y, ws, hp, wp)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shifted_window_mask(h: int, w: int, window: int, shift: int, device) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask (0 / -100) keeping shifted windows within their region."""
    # positive-only arithmetic: traced ONNX integer division truncates toward zero
    hp, wp = (h + window - 1) // window * window, (w + window - 1) // window * window
    region = torch.zeros(1, hp, wp, 1, device=device)
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in spans:
        for ws in spans:
            region[:, hs, ws, :] = label
            label += 1
    windows = window_partition(region, window).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        downsample: bool,
    ):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = shifted_window_mask(h, w, self.window, self.window // 2, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int, norm: bool):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(x)
        if self.norm is not None:
            b, c, hh, ww = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, hh, ww)
        return x


class SwinTransformer(nn.Module):
    """Swin backbone returning ``{"res2": ..., "res5": ...}`` at strides 4, 8, 16, 32.

    Args:
        embed_dim: channels of the first stage (128 for Swin-B); stage i has embed_dim * 2**i.
        depths, num_heads: per stage.
        window_size: attention window (12 for the released Swin-B, 7 for Swin-T/S).
        drop_path_rate: stochastic depth of the last block; block k of n gets
            ``rate * k / (n - 1)`` (Swin's linear rule; official training 0.3). Training only.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        window_size: int = 12,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_norm: bool = True,
        in_chans: int = 3,
        out_features=("res2", "res3", "res4", "res5"),
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.out_features = tuple(out_features)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2**i,
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                downsample=i < len(depths) - 1,
            )
            for i in range(len(depths))
        )
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        for i, dim in enumerate(self.num_features):
            if f"res{i + 2}" in self.out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.set_drop_path_rate(drop_path_rate)

    def set_drop_path_rate(self, rate: float) -> None:
        """Stochastic depth rising linearly over all blocks from 0 to ``rate``
        (``torch.linspace(0, rate, total_blocks)``, as the official Swin)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
        blocks = [b for stage in self.layers for b in stage.blocks]
        for block, r in zip(blocks, torch.linspace(0, rate, len(blocks), device="cpu").tolist()):
            block.drop_path = r

    @property
    def out_channels(self) -> dict[str, int]:
        return {f"res{i + 2}": c for i, c in enumerate(self.num_features)}

    @property
    def out_strides(self) -> dict[str, int]:
        return {f"res{i + 2}": 4 * 2**i for i in range(len(self.num_features))}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalised image -> dict of (B, C_i, H/s_i, W/s_i)."""
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        out = {}
        for i, stage in enumerate(self.layers):
            y, x, nh, nw = stage(x, h, w)
            name = f"res{i + 2}"
            if name in self.out_features:
                y = getattr(self, f"norm{i}")(y)
                out[name] = y.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            h, w = nh, nw
        return out
