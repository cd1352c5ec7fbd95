"""Our safetensors format round trip, official-format loading, CLIP weights, bad files."""

from __future__ import annotations

import warnings

import pytest
import torch

import ovseg
from ovseg.weights.checkpoints import load_clip_weights, read_state_dict
from tests.conftest import OFFICIAL_TINY, require


def test_save_load_round_trip_is_exact(tiny_model, tmp_path):
    path = ovseg.save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    loaded = ovseg.load_checkpoint(path)
    assert loaded.config == tiny_model.config
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves nothing behind


def test_official_pth_bare_and_wrapped(tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(require(OFFICIAL_TINY) / "model_state.safetensors"))
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"model": sd, "iteration": 7}, tmp_path / "wrapped.pth")
    config = OFFICIAL_TINY / "config.yaml"
    for name in ("bare.pth", "wrapped.pth"):
        model = ovseg.load_official(config, tmp_path / name)
        assert torch.equal(model.backbone.norm0.weight, sd["backbone.norm0.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ovseg.build_model("ovseg-test-tiny", checkpoint=tmp_path / "wrapped.pth")
    assert torch.equal(
        model.clip_adapter.non_object_embedding, sd["clip_adapter.non_object_embedding"]
    )
    del sd["backbone.norm3.bias"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing \(1\):\s+backbone.norm3.bias"):
        ovseg.load_official(config, tmp_path / "broken.pth")


def test_missing_corrupt_and_unsafe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.safetensors"):
        ovseg.load_checkpoint(tmp_path / "junk.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refused or unreadable"):
        read_state_dict(tmp_path / "evil.pth")


def test_openai_layout_clip_weights_load_with_prompts_kept(tiny_model, tmp_path):
    clip_sd = tiny_model.clip_adapter.clip_model.state_dict()
    openai = {k: v.clone() + 0.01 for k, v in clip_sd.items() if k != "visual.mask_embedding"}
    openai["input_resolution"] = torch.tensor(224)
    torch.save(openai, tmp_path / "ViT-tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ovseg.build_model("ovseg-test-tiny")
    prompts = model.clip_adapter.clip_model.visual.mask_embedding.clone()
    load_clip_weights(model, tmp_path / "ViT-tiny.pt")
    loaded = model.clip_adapter.clip_model.state_dict()
    assert torch.equal(loaded["visual.conv1.weight"], openai["visual.conv1.weight"])
    assert torch.equal(loaded["visual.mask_embedding"], prompts)
    wrong = {k: v for k, v in openai.items() if not k.startswith("transformer.resblocks.1.")}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="architecture"):
        load_clip_weights(model, tmp_path / "wrong.pt")


def test_builders(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="random weights"):
        a = ovseg.build_model("ovseg-test-tiny")
    with pytest.warns(UserWarning):
        b = ovseg.build_model("ovseg-test-tiny")
    assert torch.equal(a.backbone.patch_embed.proj.weight, b.backbone.patch_embed.proj.weight)
    with pytest.raises(FileNotFoundError, match="ovseg download ovseg-R101c-vitB16"):
        ovseg.build_model("ovseg-R101c-vitB16")
    with pytest.raises(ValueError, match="available"):
        ovseg.build_model("ovseg-huge")
