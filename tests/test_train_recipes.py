"""Every config-sourced recipe value equals the official resolved config; --print-recipe."""

import subprocess
import sys

import pytest
import yaml

from ovseg.train.recipes import PROPOSAL_RECIPES, format_recipe, get_recipe
from tests.conftest import FIXTURES, ROOT, require

# keys whose config value needs a translation to our setting's form
TRANSLATE = {
    "INPUT.CROP.SIZE": lambda v: v[0] if v[0] == v[1] else v,
    "INPUT.MIN_SIZE_TRAIN": list,
    "INPUT.RANDOM_FLIP": str,
}


def resolved(config_file):
    # The raw Swin YAML needs !!python/object/apply:eval; the resolved dumps are plain YAML
    # (fixtures/configs/README.md: cfg.dump() after merge_from_file of the raw file).
    stem = config_file.removesuffix(".yaml")
    return yaml.safe_load((require(FIXTURES / "configs") / f"{stem}.resolved.yaml").read_text())


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", list(PROPOSAL_RECIPES))
def test_recipe_values_equal_the_official_config(name):
    recipe = PROPOSAL_RECIPES[name]
    cfg = resolved(recipe["config"][0])
    checked = 0
    for setting, (value, source) in recipe.items():
        key = source.split(" ")[0]
        if not key.isupper() or "." not in key:
            continue  # code-sourced values (and the config file name)
        want = lookup(cfg, key)
        if " = " in source:  # a name translated to ours: the official name is cited
            want = want[0] if isinstance(want, list) and len(want) == 1 else want
            assert str(want) == source.split(" = ")[1].split(",")[0], setting
        else:
            assert TRANSLATE.get(key, lambda v: v)(want) == value, (setting, key, want)
        checked += 1
    assert checked >= 25


def test_config_names_cited_by_recipes():
    swin = resolved("ovseg_swinB_vitL_bs32_120k.yaml")
    assert swin["MODEL"]["CLIP_ADAPTER"]["CLIP_MODEL_NAME"] == "ViT-L/14"
    r101 = resolved("ovseg_R101c_vitB_bs32_120k.yaml")
    assert r101["MODEL"]["CLIP_ADAPTER"]["CLIP_MODEL_NAME"] == "ViT-B/16"
    assert swin["SOLVER"]["CLIP_GRADIENTS"]["CLIP_TYPE"] == "full_model"
    assert swin["DATASETS"]["TRAIN"] == ["coco_2017_train_stuff_sem_seg"]


def test_format_recipe_lists_every_value_and_overrides():
    text = format_recipe(PROPOSAL_RECIPES["R101c-coco-stuff"], {"crop": 256})
    for key in get_recipe("R101c-coco-stuff"):
        assert any(line.startswith(key + " ") for line in text.splitlines()), key
    assert "256 (recipe: 512)" in text and "[SOLVER.BASE_LR]" in text
    with pytest.raises(ValueError, match="available"):
        get_recipe("nope")


def test_cli_print_recipe():
    cmd = [sys.executable, "-m", "ovseg", "train-proposals", "--recipe", "R101c-coco-stuff",
           "--print-recipe", "--lr", "1e-3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "freeze_at" in done.stdout and "0.001 (recipe: 0.0002)" in done.stdout


@pytest.mark.parametrize("name", list(PROPOSAL_RECIPES))
def test_recipe_values_equal_the_raw_published_config(name):
    """The same values read from the config file as published (its Python-eval
    ``MIN_SIZE_TRAIN`` included, read by ``ovseg.weights.official_yaml.read_official_yaml``); keys the file
    omits take detectron2 / ov-seg defaults and are covered by the resolved-config test."""
    from ovseg.weights.official_yaml import read_official_yaml

    recipe = PROPOSAL_RECIPES[name]
    raw = read_official_yaml(require(FIXTURES / "configs" / "raw") / recipe["config"][0])
    resolved_cfg = resolved(recipe["config"][0])
    checked = 0
    for _, (_, source) in recipe.items():
        key = source.split(" ")[0]
        if not key.isupper() or "." not in key:
            continue
        try:
            value = lookup(raw, key)
        except KeyError:
            continue  # omitted in the published file: an official default
        assert _decoded(value) == _decoded(lookup(resolved_cfg, key)), key
        checked += 1
    assert checked >= 10


def _decoded(value):
    """A value as yacs decodes it (a string holding a Python literal, e.g. ``("x",)`` or
    ``(640, 640)``, becomes that literal); sequences compared as lists."""
    import ast

    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return list(value) if isinstance(value, (list, tuple)) else value
