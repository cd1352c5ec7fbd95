"""The CLIP text tower over a vocabulary, with each template's shared prefix encoded once.

CLIP's text transformer is causal: the hidden state at position ``p`` depends on tokens
``0..p`` only, and the class feature is read at the EOT token. So

- positions after a prompt's EOT never matter: each batch is cut after its longest prompt;
- the positions every prompt of one template shares (``<SOT> a photo of a`` in
  ``a photo of a {}.``) give the same hidden states, keys and values for every class name:
  they are encoded once per template (a batch of one), and the rest of each prompt attends to
  their cached keys and values. For the 14 ViLD templates and the 150 ADE20K names this
  removes more than half of the tokens;
- in the last block only the EOT position is needed after attention: the output projection
  and the MLP run on that one position per prompt.

The result equals ``open_clip``'s ``encode_text`` up to float rounding (tested against it).
Works on the fp32 tower, under bf16 autocast, and on the int8 copy
(``ovseg.inference.quantize_int8``, whose attention is ``SelfAttention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def shared_prefix_length(tokens: torch.Tensor) -> int:
    """Leading positions equal in every row of (B, L) ``tokens``, stopping before the first
    EOT (the largest id), so that every row keeps at least its EOT to encode."""
    same = (tokens == tokens[:1]).all(dim=0).long().cumprod(0).sum()
    return int(min(int(same), int(tokens.argmax(dim=-1).min())))


def _projections(attn: nn.Module):
    """(qkv projection, output projection, heads) of a text block's self-attention."""
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or not attn.batch_first:
            raise ValueError("the text tower's attention must be plain batch-first attention")
        w, b = attn.in_proj_weight, attn.in_proj_bias
        out_w, out_b = attn.out_proj.weight, attn.out_proj.bias
        return (lambda h: F.linear(h, w, b)), (lambda o: F.linear(o, out_w, out_b)), attn.num_heads
    if not getattr(attn, "batch_first", False):  # ovseg.inference.SelfAttention
        raise ValueError("the text tower's attention must be batch first")
    return attn.in_proj, attn.out_proj, attn.num_heads


def _block(block: nn.Module, x, past, mask, rows=None):
    """One residual attention block on (B, S, D) ``x`` whose keys/values are preceded by
    ``past`` ((1, H, P, dh) each, or None). ``rows``: (B,) positions of ``x`` to keep after
    attention (the last block), else all. Returns (output, (keys, values) of ``x``)."""
    qkv_proj, out_proj, heads = _projections(block.attn)
    b, s, d = x.shape
    q, k, v = qkv_proj(block.ln_1(x)).view(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    new = (k, v)
    if past is not None:
        k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
    if rows is not None:  # only these queries matter from here on
        index = torch.arange(b, device=x.device)
        x, q = x[index, rows][:, None], q[index, :, rows][:, :, None]
        mask = mask[rows][:, None, None]
    # written out: for these few positions it is several times faster on CPU than
    # F.scaled_dot_product_attention with a mask, and equal up to rounding
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    o = scores.masked_fill_(~mask, float("-inf")).softmax(dim=-1) @ v
    x = x + block.ls_1(out_proj(o.transpose(1, 2).reshape(x.shape)))
    return x + block.ls_2(block.mlp(block.ln_2(x))), new


def _check_blocks(transformer: nn.Module) -> None:
    for block in transformer.resblocks:
        if hasattr(block, "ln_1_kv") or not all(
            hasattr(block, n) for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
        ):
            raise ValueError("the text tower must be made of open_clip ResidualAttentionBlocks")


def encode_prompts(clip_model: nn.Module, tokens: torch.Tensor, transformer=None) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` (not normalised), (B, 77) -> (B, C), computing the
    positions all rows share once. ``transformer``: a stand-in for ``clip_model.transformer``
    (e.g. its int8 copy)."""
    transformer = clip_model.transformer if transformer is None else transformer
    _check_blocks(transformer)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    p = shared_prefix_length(tokens[:, :length])
    cast = transformer.get_cast_dtype()
    positions = clip_model.positional_embedding.to(cast)
    blocks = list(transformer.resblocks)

    def embed(t, start):
        return clip_model.token_embedding(t).to(cast) + positions[start : start + t.shape[1]]

    past = [None] * len(blocks)
    if p:
        x = embed(tokens[:1, :p], 0)
        causal = torch.ones(p, p, dtype=torch.bool, device=tokens.device).tril()
        for i, block in enumerate(blocks[:-1]):  # the last block's output is never read
            x, past[i] = _block(block, x, None, causal)
        past[-1] = _block(blocks[-1], x, None, causal)[1]
    s = length - p
    x = embed(tokens[:, p:length], p)
    mask = torch.ones(s, length, dtype=torch.bool, device=tokens.device).tril(diagonal=p)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        x = _block(block, x, past[i], mask, rows=eot - p if last else None)[0]
    return clip_model.ln_final(x[:, 0]) @ clip_model.text_projection
