"""Full-size official checkpoint layouts load with zero missing and zero unexpected keys."""

from __future__ import annotations

import json

import pytest
import torch

import ovseg
from ovseg.build import MODELS, build_ovseg
from ovseg.checkpoints import CLIP_PREFIX, check_state_dict, load_official_state_dict
from ovseg.config import config_from_official, read_official_yaml
from ovseg.modeling.clip_branch import ClipArch
from tests.conftest import FIXTURES, require

CASES = [
    ("ovseg-swinB-vitL14", "manifest_swinB_vitL14.json", "ovseg_swinB_vitL_bs32_120k"),
    ("ovseg-R101c-vitB16", "manifest_R101c_vitB16.json", "ovseg_R101c_vitB_bs32_120k"),
]
DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


def manifest_state_dict(path) -> dict[str, torch.Tensor]:
    entries = json.loads(path.read_text())["state_dict"]
    return {
        k: torch.empty(v["shape"], dtype=DTYPES[v["dtype"]], device="meta")
        for k, v in entries.items()
    }


@pytest.mark.parametrize("name,manifest,config", CASES)
def test_manifest_loads_exactly(name, manifest, config):
    sd = manifest_state_dict(require(FIXTURES / manifest))
    with torch.device("meta"):
        model = build_ovseg(MODELS[name]())
    extra = load_official_state_dict(model, sd)
    assert set(extra) == {"criterion.empty_weight"}
    assert set(model.state_dict()) == set(sd) - set(extra)  # zero missing, zero unexpected


@pytest.mark.parametrize("name,manifest,config", CASES)
def test_official_config_translates_to_variant(name, manifest, config):
    sd = manifest_state_dict(require(FIXTURES / manifest))
    cfg = read_official_yaml(FIXTURES / "configs" / f"{config}.resolved.yaml")
    translated = config_from_official(cfg, ClipArch.from_state_dict(sd, CLIP_PREFIX))
    assert translated == MODELS[name]()


def test_mismatched_checkpoint_lists_every_problem():
    sd = manifest_state_dict(require(FIXTURES / "manifest_R101c_vitB16.json"))
    with torch.device("meta"):
        model = build_ovseg(MODELS["ovseg-R101c-vitB16"]())
    del sd["backbone.stem.conv1.weight"]
    sd["backbone.extra.weight"] = torch.empty(3, device="meta")
    sd["clip_adapter.non_object_embedding"] = torch.empty(1, 768, device="meta")
    with pytest.raises(ValueError) as info:
        check_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("criterion.")})
    text = str(info.value)
    assert "missing (1)" in text and "backbone.stem.conv1.weight" in text
    assert "unexpected (1)" in text and "backbone.extra.weight" in text
    assert "shape mismatch (1)" in text and "(1, 768)" in text and "(1, 512)" in text


def test_list_models_names_the_variants():
    assert set(ovseg.list_models()) == {
        "ovseg-swinB-vitL14",
        "ovseg-R101c-vitB16",
        "ovseg-test-tiny",
    }
