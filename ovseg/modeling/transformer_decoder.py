"""MaskFormer's transformer decoder with an open-vocabulary class head.

Each of N learned queries attends to the coarsest backbone feature and yields a mask
embedding (dotted with the pixel decoder's mask features) and a class embedding in CLIP's
text space (``class_embed``), so classes are any text. Parameter names match the official
``sem_seg_head.predictor`` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(
    b: int, h: int, w: int, num_feats: int, device, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's normalised sine encoding (scale 2*pi) for an unpadded map -> (B, 2*num_feats, H, W)."""
    eps, scale = 1e-6, 2 * math.pi
    ones = torch.ones(b, h, w, device=device)
    y = ones.cumsum(1, dtype=torch.float32)
    x = ones.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.i``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos):
        """tgt, query_pos: (Q, B, D); memory, pos: (HW, B, D) (sequence first)."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, value=tgt, need_weights=True)[0]))
        attended = self.multihead_attn(
            tgt + query_pos, memory + pos, value=memory, need_weights=True
        )[0]
        tgt = self.norm2(tgt + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class Decoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, memory, pos, query_pos) -> list[torch.Tensor]:
        """Returns the normalised output of every layer, each (Q, B, D)."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            outputs.append(self.norm(tgt))
        return outputs


class Transformer(nn.Module):
    """Holds the decoder under the official name ``transformer.decoder`` (no encoder layers)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.decoder = Decoder(dim, heads, ffn_dim, num_layers, dropout)


class OpenVocabPredictor(nn.Module):
    """Queries -> per-query mask embeddings and CLIP-space class embeddings.

    Args:
        in_channels: channels of the coarsest backbone feature (res5).
        hidden_dim, nheads, dim_feedforward, dec_layers, num_queries: decoder sizes.
        mask_dim: channels of the pixel decoder's mask features.
        embed_dim: CLIP embedding dim C; embed_hidden_dim, embed_layers: the class MLP.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 6,
        num_queries: int = 100,
        mask_dim: int = 256,
        embed_dim: int = 768,
        embed_hidden_dim: int = 1024,
        embed_layers: int = 2,
        dropout: float = 0.1,
        enforce_input_proj: bool = False,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.transformer = Transformer(hidden_dim, nheads, dim_feedforward, dec_layers, dropout)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_proj:
            self.input_proj = nn.Conv2d(in_channels, hidden_dim, 1)
        else:
            self.input_proj = nn.Identity()
        self.class_embed = MLP(hidden_dim, embed_hidden_dim, embed_dim, embed_layers)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor, all_layers: bool = False):
        """x: (B, C, h, w) res5; mask_features: (B, M, H, W).

        Returns ``(class_embeddings (B, Q, C), mask_logits (B, Q, H, W))`` of the last layer, or
        lists over decoder layers when ``all_layers`` (deep supervision in training).
        """
        b, _, h, w = x.shape
        pos = sine_position_encoding(b, h, w, self.hidden_dim // 2, x.device).to(x.dtype)
        memory = self.input_proj(x).flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        outputs = self.transformer.decoder(torch.zeros_like(query_pos), memory, pos, query_pos)
        layers = outputs if all_layers else outputs[-1:]
        embeds, masks = [], []
        for hs in layers:
            hs = hs.transpose(0, 1)
            embeds.append(self.class_embed(hs))
            masks.append(torch.einsum("bqc,bchw->bqhw", self.mask_embed(hs), mask_features))
        return (embeds, masks) if all_layers else (embeds[0], masks[0])
