"""The vocabulary text encoder (ovseg.modeling.text_tower) against open_clip's encode_text."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.tokenizer import tokenize

from ovseg.modeling.int8 import SelfAttention, quantize_int8
from ovseg.modeling.text_tower import PrefixTree, encode_prompts

NAMES = ["cat", "dog", "traffic light", "chest of drawers", "a", "potted plant in a pot"]


@pytest.fixture(scope="module")
def clip_model(tiny_model):
    return copy.deepcopy(tiny_model.clip_adapter.clip_model).eval()


def distinct_prefixes(tokens) -> int:
    """Count of distinct prefixes (up to each EOT) of the rows, by brute force."""
    seen = set()
    for row in tokens.tolist():
        end = row.index(max(row)) + 1
        seen.update(tuple(row[:i]) for i in range(1, end + 1))
    return len(seen)


def test_prefix_tree_by_hand():
    # <SOT> a photo of a {cat | traffic light} . <EOT>
    tokens = tokenize(["a photo of a cat.", "a photo of a traffic light."])
    tree = PrefixTree.build(tokens)
    assert tree.size == 5 + 3 + 4 == distinct_prefixes(tokens)
    for b, row in enumerate(tokens):
        # the path to each prompt's leaf spells the prompt up to its EOT
        eot = int(row.argmax())
        path = tree.path(b)
        assert int(path[-1]) == int(tree.leaf[b])
        assert tree.tokens[path].tolist() == row[: eot + 1].tolist()
        assert tree.depth[path].tolist() == list(range(eot + 1))
    # the shared start belongs to the first prompt, the second owns only its own tail
    assert tree.owner.tolist() == [0] * 8 + [1] * 4
    # the attention groups own every node exactly once
    owned = torch.cat([nodes for *_, nodes in tree.attention_groups("cpu")])
    assert sorted(owned.tolist()) == list(range(tree.size))
    # identical prompts share every node
    assert PrefixTree.build(tokenize(["a cat", "a cat"])).size == 4


@pytest.mark.parametrize(
    "prompts",
    [
        [f"a photo of a {n}." for n in NAMES],  # a long shared prefix
        [f"There is a {n} in the scene" for n in NAMES],  # a suffix after the name
        [f"{n}" for n in NAMES],  # <SOT> only
        ["a photo of a cat.", "There is a dog in the scene"],  # mixed templates
        ["a photo of a cat."],  # one prompt
        ["a cat", "a cat", "a dog"],  # duplicates
    ],
)
@torch.no_grad()
def test_equals_open_clip_encode_text(clip_model, prompts):
    tokens = tokenize(prompts)
    expected = clip_model.encode_text(tokens)  # 77 positions, open_clip's own forward
    got = encode_prompts(clip_model, tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


@torch.no_grad()
def test_each_distinct_prefix_is_encoded_once(clip_model):
    """The first block sees one row per distinct prefix, counted by brute force (here all
    templates of ViLD-like prompts: <SOT> a photo of a NAME is shared by two templates)."""
    prompts = [
        t.format(n) for t in ("a photo of a {}.", "a photo of a {} in the scene") for n in NAMES
    ]
    tokens = tokenize(prompts)
    seen = []
    hook = clip_model.transformer.resblocks[0].ln_1.register_forward_hook(
        lambda m, i, o: seen.append(o.shape[0])
    )
    try:
        got = encode_prompts(clip_model, tokens)
    finally:
        hook.remove()
    assert sum(seen) == distinct_prefixes(tokens) < (tokens.argmax(-1) + 1).sum()
    expected = clip_model.encode_text(tokens)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


@torch.no_grad()
def test_self_attention_copy_equals_open_clip(clip_model):
    """The int8 copy's attention module (SelfAttention, before quantisation): exact."""
    model = copy.deepcopy(clip_model)
    for block in model.transformer.resblocks:
        block.attn = SelfAttention(block.attn)
    tokens = tokenize([f"There is a small {n} in the scene." for n in NAMES])
    expected = clip_model.encode_text(tokens)
    got = encode_prompts(clip_model, tokens, model.transformer)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


@torch.no_grad()
def test_int8_copy_close_to_fp32(clip_model):
    """On the int8 copy the features stay close to fp32, as close as open_clip's own forward
    through that copy gets (activations are quantised per call, so the shared prefix, encoded
    on its own, has its own scales: not bit-equal to the 77-position forward)."""
    int8 = quantize_int8(copy.deepcopy(clip_model.transformer))
    tokens = tokenize([f"a photo of a {n}." for n in NAMES])
    fp32 = clip_model.encode_text(tokens)
    model = copy.deepcopy(clip_model)
    model.transformer = int8
    cosine = torch.nn.functional.cosine_similarity
    ours = cosine(encode_prompts(clip_model, tokens, int8), fp32, dim=-1).min()
    theirs = cosine(model.encode_text(tokens), fp32, dim=-1).min()
    assert ours > 0.995 and theirs > 0.995


def test_quick_gelu_equals_open_clip_bitwise():
    """The CLIP towers use ovseg's QuickGELU (one temporary without autograd): the same
    values as open_clip's, bit for bit, and the same gradient."""
    from open_clip.transformer import QuickGELU as Theirs

    from ovseg.modeling.clip_branch import QuickGELU

    x = torch.randn(4, 77, 96) * 4
    with torch.no_grad():
        assert torch.equal(QuickGELU()(x), Theirs()(x))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    QuickGELU()(a).sum().backward()
    Theirs()(b).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_towers_use_it(clip_model):
    from open_clip.transformer import QuickGELU as Theirs

    from ovseg.modeling.clip_branch import QuickGELU

    kinds = {type(m) for m in clip_model.modules()}
    assert QuickGELU in kinds and Theirs not in kinds


@pytest.mark.parametrize("setting", [("ROW_CHUNK", 7), ("PROMPT_CHUNK", 2)])
@torch.no_grad()
def test_chunks_change_nothing(clip_model, monkeypatch, setting):
    """Linear layers over 7 rows at a time, or attention over 2 prompts at a time (prompts of
    several lengths, several groups per length): still open_clip's result."""
    from ovseg.modeling import text_tower

    templates = ("There is a {} in the scene", "a photo of a {}.")
    tokens = tokenize([t.format(n) for n in NAMES for t in templates])
    expected = clip_model.encode_text(tokens)
    monkeypatch.setattr(text_tower, *setting)
    got = encode_prompts(clip_model, tokens)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


@torch.no_grad()
def test_no_prompts(clip_model):
    assert encode_prompts(clip_model, tokenize([])).shape == (
        0,
        clip_model.text_projection.shape[1],
    )
