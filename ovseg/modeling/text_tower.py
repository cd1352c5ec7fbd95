"""The CLIP text tower over many prompts at once, each distinct prefix encoded once.

CLIP's text transformer is causal: the hidden state at position ``p`` depends on tokens
``0..p`` only, and the class feature is read at the EOT token (the largest id). So

- positions after a prompt's EOT never matter and are not computed;
- two prompts that start with the same tokens have the same hidden states, keys and values
  along that common start. The prompts are put in a prefix tree (one node per distinct
  prefix) and every node is encoded once: ``<SOT> a photo of a`` once for all class names,
  ``<SOT> a photo of a traffic light`` once for the templates ``a photo of a {}.`` and
  ``a photo of a {} in the scene``. For the 14 ViLD templates and the 150 ADE20K names that
  is 11,056 positions instead of 23,724 (77 * 2,100 without the cut);
- a node attends to the keys and values of its ancestors and itself: the causal attention
  of its prompt, exactly. The linear layers run once per node; attention gathers each
  prompt's path (prompts of one length together) and keeps, for each node, the result of the
  first prompt through it (gathering whole prompts moves 3-4x less memory on CPU than
  gathering every node's own path);
- in the last block only the EOT nodes are needed after attention.

The result equals ``open_clip``'s ``encode_text`` up to float rounding (tested against it).
Works on the fp32 tower, under bf16 autocast, and on the int8 copy
(``ovseg.modeling.int8.quantize_int8``, whose attention is ``SelfAttention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ROW_CHUNK = 2048  # positions per MLP call (keeps its activations in cache)
PROMPT_CHUNK = 64  # prompts per attention call (their keys and values stay in cache)


@dataclass
class PrefixTree:
    """One node per distinct prefix; each belongs to the first prompt that passes through it.

    Attributes:
        tokens: (N,) token id per node; depth: (N,) its position in the prompt.
        nodes: (B, L) each prompt's node per position, -1 after its EOT.
        lengths: (B,) each prompt's length up to and with its EOT.
        owner: (N,) the first prompt through each node (it computes the node's attention).
        leaf: (B,) the node of each prompt's EOT.
    """

    tokens: torch.Tensor
    depth: torch.Tensor
    nodes: torch.Tensor
    lengths: torch.Tensor
    owner: torch.Tensor
    leaf: torch.Tensor

    @classmethod
    def build(cls, tokens: torch.Tensor) -> PrefixTree:
        """The prefix tree of (B, L) ``tokens``, each row cut after its EOT."""
        rows = tokens.cpu().tolist()
        lengths = (tokens.argmax(dim=-1) + 1).cpu()
        width = int(lengths.max()) if len(rows) else 0
        ids: dict[tuple[int, int], int] = {}
        node_tokens, node_depth, owner, paths = [], [], [], []
        for b, (row, length) in enumerate(zip(rows, lengths.tolist())):
            node, path = -1, []
            for d in range(length):
                key = (node, row[d])
                if key not in ids:
                    ids[key] = len(node_tokens)
                    node_tokens.append(row[d])
                    node_depth.append(d)
                    owner.append(b)
                node = ids[key]
                path.append(node)
            paths.append(path + [-1] * (width - length))
        nodes = torch.tensor(paths, dtype=torch.long).view(len(rows), width)
        leaf = nodes.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        return cls(
            torch.tensor(node_tokens, dtype=torch.long),
            torch.tensor(node_depth, dtype=torch.long),
            nodes,
            lengths,
            torch.tensor(owner, dtype=torch.long),
            leaf,
        )

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def path(self, b: int) -> torch.Tensor:
        """The node ids of prompt ``b`` from its first token to its EOT."""
        return self.nodes[b, : int(self.lengths[b])]

    def attention_groups(self, device) -> list[tuple]:
        """Prompts of one length, ``PROMPT_CHUNK`` at a time: (node ids, (m, L)), L, and the
        positions in it (flat) whose nodes these prompts own, with those nodes' ids. Each node
        is owned once, so the groups' owned nodes cover the tree exactly once."""
        groups = []
        for length in sorted(set(self.lengths.tolist())):
            prompts = (self.lengths == length).nonzero().squeeze(1)
            for i in range(0, prompts.numel(), PROMPT_CHUNK):
                chosen = prompts[i : i + PROMPT_CHUNK]
                ids = self.nodes[chosen, :length]
                own = (self.owner[ids] == chosen[:, None]).reshape(-1).nonzero().squeeze(1)
                groups.append(
                    (ids.to(device), length, own.to(device), ids.reshape(-1)[own].to(device))
                )
        return groups


def _projections(attn: nn.Module):
    """(qkv projection, output projection, heads) of a text block's self-attention."""
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or not attn.batch_first:
            raise ValueError("the text tower's attention must be plain batch-first attention")
        w, b = attn.in_proj_weight, attn.in_proj_bias
        out_w, out_b = attn.out_proj.weight, attn.out_proj.bias
        return (lambda h: F.linear(h, w, b)), (lambda o: F.linear(o, out_w, out_b)), attn.num_heads
    if not getattr(attn, "batch_first", False):  # ovseg.modeling.int8.SelfAttention
        raise ValueError("the text tower's attention must be batch first")
    return attn.in_proj, attn.out_proj, attn.num_heads


def _check_blocks(transformer: nn.Module) -> None:
    for block in transformer.resblocks:
        if hasattr(block, "ln_1_kv") or not all(
            hasattr(block, n) for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
        ):
            raise ValueError("the text tower must be made of open_clip ResidualAttentionBlocks")


def _tree_attention(qkv: torch.Tensor, groups, heads: int) -> torch.Tensor:
    """(N, D) attention output of every node over its path (its prompt's causal context),
    from the nodes' (N, 3D) queries, keys and values. Each group gathers its prompts' paths
    and runs causal attention over them; a node's output is taken from the prompt that owns
    it (the same result from any prompt through it, but computed once)."""
    n, d = qkv.shape[0], qkv.shape[1] // 3
    dh = d // heads
    out = torch.empty(n, d, dtype=qkv.dtype, device=qkv.device)
    causal = {}
    for ids, length, own, nodes in groups:
        m = ids.shape[0]
        q, k, v = qkv.index_select(0, ids.reshape(-1)).view(m, length, 3, heads, dh).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (m, H, L, dh)
        if length not in causal:
            causal[length] = torch.full(
                (length, length), float("-inf"), dtype=qkv.dtype, device=qkv.device
            ).triu(1)
        # written out: for so few positions faster on CPU than F.scaled_dot_product_attention,
        # and equal up to rounding
        scores = (q @ k.transpose(-2, -1)) * dh**-0.5 + causal[length]
        o = scores.softmax(dim=-1) @ v  # (m, H, L, dh)
        out[nodes] = o.transpose(1, 2).reshape(m * length, d)[own]
    return out


@torch.no_grad()  # the text tower is frozen in every OVSeg stage
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
    groups = tree.attention_groups(device)
    leaf = tree.leaf.to(device)
    blocks = list(transformer.resblocks)
    for i, block in enumerate(blocks):
        qkv_proj, out_proj, heads = _projections(block.attn)
        o = _tree_attention(qkv_proj(block.ln_1(x)), groups, heads)
        if i == len(blocks) - 1:  # only the EOT nodes are read after the last block
            x, o = x[leaf], o[leaf]
        # the rest of the block in place, ROW_CHUNK rows at a time (x is this function's own)
        for start in range(0, x.shape[0], ROW_CHUNK):
            y = x[start : start + ROW_CHUNK]
            y += block.ls_1(out_proj(o[start : start + ROW_CHUNK]))
            y += block.ls_2(block.mlp(block.ln_2(y)))
    return clip_model.ln_final(x) @ clip_model.text_projection
