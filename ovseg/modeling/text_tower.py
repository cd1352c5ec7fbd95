"""The CLIP text tower over many prompts at once, each distinct prefix encoded once.

CLIP's text transformer is causal: the hidden state at position ``p`` depends on tokens
``0..p`` only, and the class feature is read at the EOT token (the largest id). So

- positions after a prompt's EOT never matter and are not computed;
- two prompts that start with the same tokens have the same hidden states, keys and values
  along that common start. The prompts are put in a prefix tree (one node per distinct
  prefix) and every node is encoded once: ``<SOT> a photo of a`` once for all class names,
  ``<SOT> a photo of a traffic light`` once for the templates ``a photo of a {}.`` and
  ``a photo of a {} in the scene``. For the 14 ViLD templates and the 150 ADE20K names that
  is 8,287 positions instead of 25,460 (77 * 2,100 without the cut);
- a node attends to the keys and values of its ancestors and itself: the causal attention
  of its prompt, exactly;
- in the last block only the EOT nodes are needed after attention.

The result equals ``open_clip``'s ``encode_text`` up to float rounding (tested against it).
Works on the fp32 tower, under bf16 autocast, and on the int8 copy
(``ovseg.inference.quantize_int8``, whose attention is ``SelfAttention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ROW_CHUNK = 2048  # positions per linear-layer call (keeps the MLP's activations in cache)


@dataclass
class PrefixTree:
    """Nodes in depth order (a level is a contiguous range of ids).

    Attributes:
        tokens: (N,) token id per node; depth: (N,) its position in the prompt.
        levels: (start, end) node range per depth.
        paths: per depth ``d``, (end - start, d + 1) node ids from the root to each node.
        leaf: (B,) the node of each prompt's EOT.
    """

    tokens: torch.Tensor
    depth: torch.Tensor
    levels: list[tuple[int, int]]
    paths: list[torch.Tensor]
    leaf: torch.Tensor

    @classmethod
    def build(cls, tokens: torch.Tensor) -> PrefixTree:
        """The prefix tree of (B, L) ``tokens``, each row cut after its EOT."""
        rows = tokens.cpu().tolist()
        lengths = (tokens.argmax(dim=-1) + 1).tolist()
        node = [-1] * len(rows)  # each prompt's node at the current depth
        ids: dict[tuple[int, int], int] = {}
        node_tokens, node_depth, levels, paths = [], [], [], []
        for d in range(max(lengths)):
            start, parents = len(node_tokens), []
            for b, row in enumerate(rows):
                if d >= lengths[b]:
                    continue
                key = (node[b], row[d])
                if key not in ids:
                    ids[key] = len(node_tokens)
                    node_tokens.append(row[d])
                    node_depth.append(d)
                    parents.append(node[b])
                node[b] = ids[key]
            end = len(node_tokens)
            own = torch.arange(start, end)[:, None]
            if d == 0:
                paths.append(own)
            else:
                above = paths[-1][torch.tensor(parents) - levels[-1][0]]
                paths.append(torch.cat([above, own], dim=1))
            levels.append((start, end))
        return cls(
            torch.tensor(node_tokens),
            torch.tensor(node_depth),
            levels,
            paths,
            torch.tensor(node),
        )

    @property
    def size(self) -> int:
        return int(self.tokens.numel())


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


def _by_rows(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` (row-wise) applied to (N, ...) ``tensors`` in chunks of ``ROW_CHUNK`` rows."""
    n = tensors[0].shape[0]
    if n <= ROW_CHUNK:
        return fn(*tensors)
    return torch.cat([fn(*(t[i : i + ROW_CHUNK] for t in tensors)) for i in range(0, n, ROW_CHUNK)])


def _check_blocks(transformer: nn.Module) -> None:
    for block in transformer.resblocks:
        if hasattr(block, "ln_1_kv") or not all(
            hasattr(block, n) for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
        ):
            raise ValueError("the text tower must be made of open_clip ResidualAttentionBlocks")


def _tree_attention(q, k, v, tree: PrefixTree, heads: int) -> torch.Tensor:
    """(N, D) attention output of every node over its path (its prompt's causal context)."""
    n, d = q.shape
    dh = d // heads
    # head-major copies, so that gathering a level's paths gives bmm-ready blocks
    q, k, v = (t.view(n, heads, dh).transpose(0, 1).contiguous() for t in (q, k, v))
    out = torch.empty(n, d, dtype=q.dtype, device=q.device)
    for (start, end), path in zip(tree.levels, tree.paths):
        m, length = path.shape
        index = path.reshape(-1)
        kd = k.index_select(1, index).view(heads, m, length, dh)
        vd = v.index_select(1, index).view(heads, m, length, dh)
        # written out: for so few positions several times faster on CPU than
        # F.scaled_dot_product_attention, and equal up to rounding
        scores = q[:, start:end, None] @ kd.transpose(-2, -1)  # (H, m, 1, length)
        o = (scores * dh**-0.5).softmax(dim=-1) @ vd  # (H, m, 1, dh)
        out[start:end] = o.view(heads, m, dh).transpose(0, 1).reshape(m, d)
    return out


def encode_prompts(clip_model: nn.Module, tokens: torch.Tensor, transformer=None) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` (not normalised), (B, 77) -> (B, C), with every
    distinct prefix of the prompts encoded once (``PrefixTree``). ``transformer``: a stand-in
    for ``clip_model.transformer`` (e.g. its int8 copy)."""
    transformer = clip_model.transformer if transformer is None else transformer
    _check_blocks(transformer)
    device = tokens.device
    if tokens.shape[0] == 0:
        return clip_model.text_projection.new_zeros(0, clip_model.text_projection.shape[1])
    tree = PrefixTree.build(tokens)
    cast = transformer.get_cast_dtype()
    x = clip_model.token_embedding(tree.tokens.to(device)).to(cast)
    x = x + clip_model.positional_embedding.to(cast)[tree.depth.to(device)]
    tree.paths = [p.to(device) for p in tree.paths]
    leaf = tree.leaf.to(device)
    blocks = list(transformer.resblocks)
    for i, block in enumerate(blocks):
        qkv_proj, out_proj, heads = _projections(block.attn)
        q, k, v = _by_rows(lambda r, b=block, p=qkv_proj: p(b.ln_1(r)), x).chunk(3, dim=-1)
        o = _tree_attention(q, k, v, tree, heads)
        if i == len(blocks) - 1:  # only the EOT nodes are read after the last block
            x, o = x[leaf], o[leaf]

        def rest(y, a, block=block, out_proj=out_proj):
            y = y + block.ls_1(out_proj(a))
            return y + block.ls_2(block.mlp(block.ln_2(y)))

        x = _by_rows(rest, x, o)
    return clip_model.ln_final(x) @ clip_model.text_projection
