"""Full-size official checkpoint layouts load with zero missing and zero unexpected keys."""

from __future__ import annotations

import json

import pytest
import torch

import ovseg
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.variants import MODELS
from ovseg.weights.checkpoints import CLIP_PREFIX, check_state_dict, load_official_state_dict
from ovseg.weights.official_config import config_from_official
from ovseg.weights.official_yaml import read_official_yaml
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


def test_demo_config_means_clip_only_at_the_demo_threshold():
    sd = manifest_state_dict(require(FIXTURES / "manifest_swinB_vitL14.json"))
    cfg = read_official_yaml(FIXTURES / "configs" / "ovseg_swinB_vitL_demo.resolved.yaml")
    demo = config_from_official(cfg, ClipArch.from_state_dict(sd, CLIP_PREFIX))
    clip_adapter = cfg["MODEL"]["CLIP_ADAPTER"]
    assert demo.mask_threshold == clip_adapter["MASK_THR"] == 0.35  # the published demo file's
    assert demo.ensemble_weight == clip_adapter["CLIP_ENSEMBLE_WEIGHT"] == 0.0
    assert demo.clip_only_default  # the official code uses CLIP alone when lambda is 0


def test_base_chains_and_bad_values(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "INPUT:\n  FORMAT: RGB\nMODEL:\n  BACKBONE:\n    NAME: D2SwinTransformer\n"
        "  SEM_SEG_HEAD:\n    IN_FEATURES: [res2, res3, res4, res5]\n"
        "  MASK_FORMER:\n    NUM_OBJECT_QUERIES: 50\n"
    )
    (tmp_path / "child.yaml").write_text(
        "_BASE_: base.yaml\nMODEL:\n  CLIP_ADAPTER:\n    MASK_THR: 0.45\n"
    )
    cfg = read_official_yaml(tmp_path / "child.yaml")
    translated = config_from_official(cfg, ClipArch())
    assert translated.num_queries == 50 and translated.mask_threshold == 0.45
    (tmp_path / "bad.yaml").write_text("MODEL:\n  BACKBONE:\n    NAME: build_vit\n")
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME='build_vit'"):
        config_from_official(read_official_yaml(tmp_path / "bad.yaml"), ClipArch())
    (tmp_path / "evil.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_official_yaml(tmp_path / "evil.yaml")
