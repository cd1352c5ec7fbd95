"""bf16 on CPU: the CLIP image tower's products in bf16, its residual stream, LayerNorms
and embeddings in fp32 (``ovseg.inference.prepare.products_in`` under autocast)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ovseg import InferenceOptions
from ovseg.inference.prepare import prepare_model


@torch.no_grad()
def test_bf16_tower_keeps_norms_and_residual_in_fp32(official_tiny):
    model, out, image, names = official_tiny
    mixed = prepare_model(copy.deepcopy(model), InferenceOptions(dtype="bf16", text_cache=False))
    clip = mixed.clip_adapter
    visual = clip.clip_model.visual
    assert clip.image_autocast is torch.bfloat16
    for m in visual.modules():
        if isinstance(m, nn.LayerNorm):
            assert m.weight.dtype == torch.float32
        if isinstance(m, nn.Linear):
            assert m.weight.dtype == torch.bfloat16
    assert visual.positional_embedding.dtype == torch.float32
    assert visual.mask_embedding.dtype == torch.float32
    # the residual stream: a block's input and output stay fp32
    seen = []
    hook = visual.transformer.resblocks[0].register_forward_hook(
        lambda m, args, result: seen.append((args[0].dtype, result.dtype))
    )
    crops, masks = out["clip.regions_normalized_224"], out["clip.region_masks_224"].float()
    feats = clip.encode_masked(crops, masks)
    hook.remove()
    assert seen == [(torch.float32, torch.float32)]
    # closer to the official fp32 features than the same tower all in bf16
    pure = copy.deepcopy(model).clip_adapter
    pure.clip_model.visual.to(torch.bfloat16)
    reference = out["clip.image_features_normalized"]

    def error(f):
        return (F.normalize(f.float(), dim=-1) - reference).norm(dim=-1).mean()

    assert error(feats) < error(pure.encode_masked(crops, masks))
    assert (F.normalize(feats.float(), dim=-1) * reference).sum(-1).min() > 0.999
    # the whole model keeps most official labels; measured 97.2%, of which the bf16
    # backbone and pixel decoder cost most (98.6% with those in fp32)
    agreement = (mixed(image, names).argmax(0) == out["sem_seg_argmax"]).float().mean()
    assert agreement >= 0.97


@torch.no_grad()
def test_tower_without_autocast_runs_on_the_meta_device():
    """FLOP counting (benchmarks/latency.py) runs the tower on the meta device, where no
    autocast exists: only a mixed-precision tower may enter one."""
    import ovseg

    clip = ovseg.build_model("ovseg-test-tiny").clip_adapter.to("meta")
    s = clip.arch.image_size
    out = clip.encode_masked(torch.zeros(2, 3, s, s, device="meta"), None)
    assert out.shape == (2, clip.arch.embed_dim) and out.device.type == "meta"


def test_flops_of_a_whole_model_count_on_the_meta_device():
    """benchmarks/latency.py counts FLOPs on a meta copy of the model: every stage must run
    there (autocast switches included)."""
    import ovseg
    from benchmarks.latency_measure import count_flops

    model = ovseg.build_model("ovseg-test-tiny")
    counts = count_flops(model, (64, 96), crops=3, queries=model.config.num_queries, classes=5)
    assert counts["backbone_proposals"] > 0 and counts["clip"] > 0
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
