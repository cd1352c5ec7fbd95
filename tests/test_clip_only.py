"""The authors' SAM demo path: a CLIP-branch-only OVSeg built from a standalone CLIP file in
any of the layouts such files come in, classifying external proposals (SAM) with CLIP alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ovseg
from ovseg.cli import main
from ovseg.weights.checkpoints import CLIP_PREFIX

PROMPT_KEY = "visual.mask_embedding"


@pytest.fixture(scope="module")
def clip_sd(tiny_model) -> dict[str, torch.Tensor]:
    """A tiny CLIP (our builders), OpenAI key layout, with mask prompts, values shifted so a
    load is visible."""
    sd = tiny_model.clip_adapter.clip_model.state_dict()
    # contiguous: a Predictor may have made the shared tiny model's convs channels_last
    return {k: (v + 0.01).contiguous() for k, v in sd.items()}


def _without_prompts(sd):
    return {k: v for k, v in sd.items() if k != PROMPT_KEY}


LAYOUTS = {
    "openai": lambda sd, full: _without_prompts(sd),
    "openai+prompts": lambda sd, full: sd,
    "ovseg-prefix": lambda sd, full: {CLIP_PREFIX + k: v for k, v in sd.items()},
    "ovseg-full-checkpoint": lambda sd, full: {
        **{k: v for k, v in full.items() if not k.startswith(CLIP_PREFIX)},
        **{CLIP_PREFIX + k: v for k, v in sd.items()},
    },
    "ddp-module": lambda sd, full: {"module." + k: v for k, v in _without_prompts(sd).items()},
    "state_dict-wrapper": lambda sd, full: {
        "state_dict": {CLIP_PREFIX + k: v for k, v in sd.items()}
    },
    "model-wrapper": lambda sd, full: {"model": _without_prompts(sd)},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_standalone_clip_layouts_load_exactly(layout, clip_sd, tiny_model, tmp_path):
    obj = LAYOUTS[layout](clip_sd, tiny_model.state_dict())
    path = tmp_path / "clip.pth"
    torch.save(obj, path)
    model = ovseg.build_clip_only(path)
    assert not model.has_proposal_head and model.backbone is None
    loaded = model.clip_adapter.clip_model.state_dict()
    has_prompts = layout in (
        "openai+prompts",
        "ovseg-prefix",
        "ovseg-full-checkpoint",
        "state_dict-wrapper",
    )
    assert model.config.prompt_depth == (clip_sd[PROMPT_KEY].shape[0] if has_prompts else 0)
    expected = clip_sd if has_prompts else _without_prompts(clip_sd)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_safetensors_clip_file(clip_sd, tmp_path):
    save_file(clip_sd, str(tmp_path / "clip.safetensors"))
    model = ovseg.build_clip_only(tmp_path / "clip.safetensors")
    assert torch.equal(model.clip_adapter.clip_model.visual.mask_embedding, clip_sd[PROMPT_KEY])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"foo.weight": torch.zeros(1), "foo.bias": torch.zeros(1)}, r"foo\.\* \(2\)"),
        ({"visual.trunk.patch_embed.proj.weight": torch.zeros(1)}, "timm-backbone"),
        ({"text.token_embedding.weight": torch.zeros(1)}, "CustomTextCLIP"),
    ],
)
def test_other_layouts_are_named_in_the_error(content, message, tmp_path):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=message) as info:
        ovseg.build_clip_only(tmp_path / "x.pth")
    assert "not a CLIP state dict" in str(info.value)


def test_sam_demo_settings(clip_sd, tmp_path):
    torch.save(_without_prompts(clip_sd), tmp_path / "clip.pth")
    model = ovseg.build_clip_only(tmp_path / "clip.pth")
    cfg = model.config
    assert (cfg.min_size_test, cfg.max_size_test) == (1280, 1280)  # longer side -> 1280
    assert cfg.text_templates == "photo" and not cfg.mask_prompt_fwd
    assert cfg.clip_only_default
    # one template, "a photo of {}": the class feature is that prompt's normalised embedding
    import open_clip

    tokens = open_clip.tokenize(["a photo of sky"])
    with torch.no_grad():
        direct = model.clip_adapter.clip_model.encode_text(tokens)
    direct = torch.nn.functional.normalize(direct, dim=-1)
    assert torch.allclose(model.encode_text(["sky"]), direct, atol=1e-6)
    with pytest.raises(ValueError, match="no MaskFormer proposal head"):
        model.propose(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_clip_only_model_classifies_given_masks_with_clip_alone(clip_sd, tmp_path):
    torch.save(_without_prompts(clip_sd), tmp_path / "clip.pth")
    model = ovseg.build_clip_only(tmp_path / "clip.pth")

    def halves(image):  # left and right half of the (resized) model input
        h, w = image.shape[-2:]
        masks = torch.zeros(2, h, w)
        masks[0, :, : w // 2] = 1
        masks[1, :, w // 2 :] = 1
        return ovseg.Proposals(masks=masks, embeddings=None)

    predictor = ovseg.Predictor(model, proposal_generator=halves)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor.set_image(image)
    seg = predictor.predict(["sky", "grass", "road"])
    # two masks partition the image: each pixel's class scores are one mask's CLIP softmax
    total = seg.sem_seg.sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)


def test_segment_command_with_sam_and_the_standalone_clip(clip_sd, tmp_path):
    torch.save(_without_prompts(clip_sd), tmp_path / "clip.pth")
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    args = ["segment", str(tmp_path / "photo.png"), "--classes", "sky, tree", "--out"]
    args += [str(tmp_path / "out"), "--clip", str(tmp_path / "clip.pth"), "--proposals", "sam"]
    args += ["--sam-model-type", "test_tiny", "--sam-points-per-side", "4", "--clip-only"]
    assert main(args) == 0
    record = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert record["class_names"] == ["sky", "tree"]
    assert np.asarray(Image.open(tmp_path / "out" / "photo.png")).shape == (48, 64)


def test_clip_option_errors(clip_sd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    torch.save(_without_prompts(clip_sd), tmp_path / "clip.pth")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    base = ["segment", str(tmp_path / "p.png"), "--classes", "a, b", "--out", str(tmp_path / "o")]
    assert main([*base, "--clip", str(tmp_path / "clip.pth")]) == 2
    assert "choose --proposals sam or superpixels" in capsys.readouterr().err
    assert main([*base, "--clip", str(tmp_path / "clip.pth"), "--model", "ovseg-test-tiny"]) == 2
    assert "give it alone" in capsys.readouterr().err
    assert main([*base, "--clip", "ovseg-clip-vitL14", "--proposals", "sam"]) == 2
    assert "ovseg download ovseg-clip-vitL14" in capsys.readouterr().err
    args = [*base, "--clip", str(tmp_path / "clip.pth"), "--proposals", "sam"]
    assert main([*args, "--sam-checkpoint", "sam-vit-l"]) == 2
    assert "run `ovseg download sam-vit-l`" in capsys.readouterr().err
