"""GPU launch cutting, as far as a CPU can check it: the compiled CLIP blocks compute what the
eager tower does (any batch of crops), and CUDA graphs are refused off CUDA and never used for
CPU tensors. (Recording and replaying the graphs needs a GPU: benchmarks/gpu_check.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

import ovseg
from ovseg.inference.acceleration import GraphedProposals, compile_clip_blocks
from ovseg.inference.options import InferenceOptions
from ovseg.inference.prepare import prepare_model


@pytest.mark.slow  # inductor compiles one tiny block on the CPU: ~20-60 s
def test_compiled_clip_blocks_equal_the_eager_tower(tiny_model):
    model = copy.deepcopy(tiny_model).eval()
    g = torch.Generator().manual_seed(0)
    crops = torch.randn(5, 3, 224, 224, generator=g)
    regions = (torch.rand(5, 1, 224, 224, generator=g) > 0.5).float()
    with torch.inference_mode():
        eager = model.clip_adapter.encode_masked(crops, regions)
        compile_clip_blocks(model)
        blocks = model.clip_adapter.clip_model.visual.transformer.resblocks
        assert all(b._compiled_call_impl is not None for b in blocks)
        for n in (3, 5):  # two batch sizes: one dynamic compile
            got = model.clip_adapter.encode_masked(crops[:n], regions[:n])
            assert (got - eager[:n]).abs().max() < 1e-4


def test_cuda_graphs_need_cuda(tiny_model):
    with pytest.raises(ValueError, match="cuda_graphs needs the model on a CUDA device"):
        prepare_model(copy.deepcopy(tiny_model), InferenceOptions(cuda_graphs=True))


def test_graphed_proposals_run_eagerly_off_cuda(tiny_model):
    model = copy.deepcopy(tiny_model).eval()
    graphed = GraphedProposals(model.proposal_outputs)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        embeddings, masks = graphed(x)
        expected = model.proposal_outputs(x)
    assert graphed.graphs == {}
    assert torch.equal(embeddings, expected[0]) and torch.equal(masks, expected[1])


def test_predictor_compile_option_compiles_the_clip_blocks(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(
        ovseg.inference.predictor, "compile_clip_blocks", lambda model: calls.append(model)
    )
    predictor = ovseg.Predictor(copy.deepcopy(tiny_model), options=InferenceOptions(compile=True))
    assert calls == [predictor.model]


def test_fused_block_computes_the_block(tiny_model):
    """``fused_block`` (scaled-dot-product attention on projection views, QuickGELU as an
    in-place SiLU with the 1.702 in the products' alpha) against open_clip's own block, and
    the whole tower both ways; then the planted defect of a missing 1/1.702 is caught."""
    from ovseg.modeling import clip_branch

    model = copy.deepcopy(tiny_model).eval()
    clip = model.clip_adapter
    blocks = clip.clip_model.visual.transformer.resblocks
    assert all(clip_branch.fusable(b) for b in blocks)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 197, blocks[0].attn.embed_dim, generator=g)
    crops = torch.randn(4, 3, 224, 224, generator=g)
    regions = (torch.rand(4, 1, 224, 224, generator=g) > 0.5).float()
    with torch.inference_mode():
        for block in blocks:
            expected = block(x)
            got = clip_branch.fused_block(block, x)
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        plain = clip.encode_masked(crops, regions)
        clip.fused_blocks = True
        fused = clip.encode_masked(crops, regions)
        assert (fused - plain).abs().max() <= 1e-5 * plain.abs().max()
        defect = copy.deepcopy(blocks[0])
        defect.mlp.c_proj.weight.mul_(clip_branch.QUICK_GELU)  # as if 1/1.702 were missing
        assert (clip_branch.fused_block(defect, x) - blocks[0](x)).abs().max() > 1e-2


def test_fused_blocks_only_for_low_precision_on_gpus(tiny_model):
    """On a CPU ``prepare_model`` leaves the blocks as they are (int8 and bf16 have their
    own CPU paths); a block with a layer scale or quantised layers is not fusable."""
    from ovseg.modeling import clip_branch

    model = prepare_model(copy.deepcopy(tiny_model), InferenceOptions(dtype="bf16"))
    assert model.clip_adapter.fused_blocks is False
    block = copy.deepcopy(tiny_model.clip_adapter.clip_model.visual.transformer.resblocks[0])
    block.ls_1 = torch.nn.Linear(1, 1)
    assert not clip_branch.fusable(block)
