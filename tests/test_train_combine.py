"""``ovseg combine``: the combined checkpoint takes each part from the right source."""

import pytest
import torch

import ovseg
from ovseg.checkpoints import read_metadata
from ovseg.cli import main
from ovseg.train.combine import CLIP_PREFIX
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
