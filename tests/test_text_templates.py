"""Prompt templates: the official sets, their aggregation, and where they are selected."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.prompts import IMAGENET_TEMPLATES, VILD_TEMPLATES, prompt_templates
from ovseg.weights.official_config import config_from_official

# The official lists, as data (source: repository, path and commit inside the file).
OFFICIAL = Path(__file__).parent / "data" / "official_text_templates.json"


def official_lists() -> dict[str, list[str]]:
    data = json.loads(OFFICIAL.read_text())
    assert data["source"]["path"] == "open_vocab_seg/modeling/clip_adapter/text_template.py"
    return data


def test_templates_equal_the_official_lists():
    lists = official_lists()
    assert IMAGENET_TEMPLATES == tuple(lists["IMAGENET_PROMPT"])  # in the official order
    assert VILD_TEMPLATES == tuple(lists["VILD_PROMPT"])
    assert (len(IMAGENET_TEMPLATES), len(VILD_TEMPLATES)) == (80, 14)
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES + VILD_TEMPLATES)


def test_vild_templates_are_the_ones_the_official_run_used():
    """official-tiny/meta.json records the templates its text features were made with."""
    from tests.conftest import OFFICIAL_TINY, require

    meta = json.loads((require(OFFICIAL_TINY) / "meta.json").read_text())
    assert VILD_TEMPLATES == tuple(meta["vild_templates"]) == tuple(official_lists()["VILD_PROMPT"])


def test_prompt_template_sets_and_errors():
    assert prompt_templates("vild") is VILD_TEMPLATES
    assert prompt_templates("imagenet") is IMAGENET_TEMPLATES
    assert prompt_templates("predefined", ("a {} here",)) == ("a {} here",)
    assert prompt_templates("predefined") == ("a photo of a {}.",)  # the official default
    with pytest.raises(ValueError, match="vild, imagenet, predefined"):
        prompt_templates("clip")
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        prompt_templates("predefined", ("no slot",))


@torch.no_grad()
def by_hand(model, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """The official PredefinedPromptExtractor: per template, encode (open_clip's own full
    77-token encode_text) and L2-normalise; mean over templates; L2-normalise."""
    import open_clip

    tokens = open_clip.tokenize([t.format(n) for t in templates for n in names])
    encoded = model.clip_adapter.clip_model.encode_text(tokens).view(len(templates), len(names), -1)
    per_template = [F.normalize(feats, dim=-1) for feats in encoded]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


@pytest.mark.parametrize("kind", ["vild", "imagenet", "predefined"])
def test_aggregation_matches_the_official_extractor(tiny_model, kind):
    names = ["cat", "traffic light"]
    model = copy.copy(tiny_model)  # the same modules, another config
    model.config = dataclasses.replace(
        tiny_model.config, predefined_templates=("a {} in the sun.", "the {}.")
    )
    templates = {
        "vild": VILD_TEMPLATES,
        "imagenet": IMAGENET_TEMPLATES,
        "predefined": ("a {} in the sun.", "the {}."),
    }[kind]
    ours = model.encode_text(names, kind)
    assert torch.allclose(ours, by_hand(model, names, templates), atol=1e-5)
    # the config's choice is the default
    model.config = dataclasses.replace(model.config, text_templates=kind)
    assert torch.equal(model.encode_text(names), ours)


def test_templates_are_part_of_the_text_cache_key(tiny_model):
    clip = tiny_model.clip_adapter
    vild = clip.text_features(["cat"], VILD_TEMPLATES)
    imagenet = clip.text_features(["cat"], IMAGENET_TEMPLATES)
    assert not torch.allclose(vild, imagenet)
    assert clip.text_features(["cat"], VILD_TEMPLATES) is vild


def test_predict_takes_templates(tiny_model):
    import numpy as np

    import ovseg

    predictor = ovseg.Predictor(tiny_model)
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    names = ["cat", "dog"]
    vild = predictor.predict(names, mode="eval").sem_seg
    assert torch.equal(predictor.predict(names, mode="eval", templates="vild").sem_seg, vild)
    imagenet = predictor.predict(names, mode="eval", templates="imagenet").sem_seg
    assert not torch.allclose(imagenet, vild)
    custom = predictor.predict(names, mode="eval", templates=["a photo of a {}."]).sem_seg
    assert not torch.allclose(custom, vild)


def test_config_reads_text_templates():
    import copy

    from ovseg.weights.official_yaml import read_official_yaml
    from tests.conftest import FIXTURES, require

    base = read_official_yaml(
        require(FIXTURES / "configs" / "ovseg_swinB_vitL_bs32_120k.resolved.yaml")
    )

    def with_(meta=None, **clip_adapter):
        cfg = copy.deepcopy(base)
        cfg["MODEL"]["CLIP_ADAPTER"].update(clip_adapter)
        if meta:
            cfg["MODEL"]["META_ARCHITECTURE"] = meta
        return cfg

    ca = {"TEXT_TEMPLATES": "predefined", "PREDEFINED_PROMPT_TEMPLATES": ["a {} photo."]}
    cfg = config_from_official(with_(**ca), ClipArch())
    assert (cfg.text_templates, cfg.predefined_templates) == ("predefined", ("a {} photo.",))
    cfg = config_from_official(with_("OVSegDEMO"), ClipArch())
    assert (cfg.mode, cfg.text_templates, cfg.predefined_templates) == (
        "demo",
        "vild",
        ("a photo of a {}.",),
    )
    with pytest.raises(ValueError, match="TEXT_TEMPLATES='learned'"):
        config_from_official(with_(TEXT_TEMPLATES="learned"), ClipArch())
