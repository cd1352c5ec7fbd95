"""``ovseg combine``: the combined checkpoint takes each part from the right source."""

import pytest
import torch

import ovseg
from ovseg.cli import main
from ovseg.train.combine import CLIP_PREFIX
from ovseg.weights.checkpoints import read_metadata
from tests.train_fixtures import make_tiny_model


def test_combine_takes_clip_and_proposal_parts(tmp_path):
    clip = make_tiny_model(mask_prompt_fwd=True)
    with torch.no_grad():
        clip.clip_adapter.clip_model.visual.mask_embedding.add_(1.0)  # "trained" prompts
        clip.clip_adapter.clip_model.visual.conv1.weight.mul_(2.0)  # "fine-tuned" tower
    ovseg.save_checkpoint(clip, tmp_path / "clip.safetensors", {"clip_adaptation": "ft+mpt"})
    proposals = make_tiny_model()
    with torch.no_grad():
        for p in proposals.sem_seg_head.parameters():
            p.add_(0.5)
        proposals.clip_adapter.non_object_embedding.add_(3.0)
    ovseg.save_checkpoint(proposals, tmp_path / "prop.safetensors")
    out = tmp_path / "combined.safetensors"
    code = main(["combine", "--clip", str(tmp_path / "clip.safetensors"),
                 "--proposals", str(tmp_path / "prop.safetensors"), "--out", str(out)])  # fmt: skip
    assert code == 0
    combined = ovseg.load_checkpoint(out).state_dict()
    for key, value in combined.items():
        source = clip if key.startswith(CLIP_PREFIX) else proposals
        assert torch.equal(value, source.state_dict()[key]), key
    assert read_metadata(out)["clip_adaptation"] == "ft+mpt"


def test_combine_refuses_different_text_towers(tmp_path):
    a, b = make_tiny_model(), make_tiny_model()
    with torch.no_grad():
        b.clip_adapter.clip_model.token_embedding.weight.add_(1e-3)
    ovseg.save_checkpoint(a, tmp_path / "a.safetensors")
    ovseg.save_checkpoint(b, tmp_path / "b.safetensors")
    from ovseg.train.combine import combine_checkpoints

    with pytest.raises(ValueError, match="text towers differ"):
        combine_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c")


def test_scratch_proposal_model_can_share_a_checkpoints_clip(tmp_path):
    from ovseg.train.combine import text_tower
    from ovseg.train.proposal_training import build_start_model
    from tests.train_fixtures import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "clip.safetensors")
    plain = build_start_model("ovseg-test-tiny", None, {"num_queries": 5}, seed=0)
    shared = build_start_model("ovseg-test-tiny", None, {"num_queries": 5}, 0, clip_weights=ckpt)
    want = text_tower(ovseg.load_checkpoint(ckpt))
    assert all(torch.equal(v, text_tower(shared)[k]) for k, v in want.items())
    assert not all(torch.equal(v, text_tower(plain)[k]) for k, v in want.items())
