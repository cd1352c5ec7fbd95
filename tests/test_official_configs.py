"""The published official configs load as published: raw file == its resolved dump.

The resolved dumps were written by the official code (``cfg.dump()`` after ``get_cfg``,
``add_deeplab_config``, ``add_ovseg_config`` and ``merge_from_file``), so they are an
independent record of every official default.
"""

from __future__ import annotations

import pytest

from ovseg.modeling.clip_branch import ClipArch
from ovseg.weights.official_config import config_from_official
from ovseg.weights.official_yaml import OFFICIAL_DEFAULTS, evaluate_size_list, read_official_yaml
from tests.conftest import FIXTURES, require

CONFIGS = FIXTURES / "configs"
NAMES = ["ovseg_R101c_vitB_bs32_120k", "ovseg_swinB_vitL_bs32_120k", "ovseg_swinB_vitL_demo"]
EVAL_LINE = '!!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]'


def leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def lookup(tree: dict, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            raise KeyError(path)
        tree = tree[key]
    return tree


@pytest.mark.parametrize("name", NAMES)
def test_raw_file_gives_the_resolved_config(name):
    raw = read_official_yaml(require(CONFIGS / "raw" / f"{name}.yaml"))
    resolved = read_official_yaml(CONFIGS / f"{name}.resolved.yaml")
    arch = ClipArch()
    assert config_from_official(raw, arch) == config_from_official(resolved, arch)
    assert raw["INPUT"].get("MIN_SIZE_TRAIN") in (None, resolved["INPUT"]["MIN_SIZE_TRAIN"])


@pytest.mark.parametrize("name", NAMES)
def test_official_defaults_equal_the_official_dump(name):
    """Every default we assume, for each key the raw file omits, is what the official code
    put in the resolved dump."""
    raw = read_official_yaml(require(CONFIGS / "raw" / f"{name}.yaml"))
    resolved = read_official_yaml(CONFIGS / f"{name}.resolved.yaml")
    checked = 0
    for path, default in leaves(OFFICIAL_DEFAULTS):
        try:
            lookup(raw, path)
        except KeyError:
            assert lookup(resolved, path) == default, path
            checked += 1
    assert checked >= 30


def test_published_values_and_official_defaults():
    swin = config_from_official(
        read_official_yaml(require(CONFIGS / "raw" / "ovseg_swinB_vitL_bs32_120k.yaml")), ClipArch()
    )
    # each value as the official code resolved it (the dump), read from the raw file
    dump = read_official_yaml(CONFIGS / "ovseg_swinB_vitL_bs32_120k.resolved.yaml")
    clip, test_input, test = dump["MODEL"]["CLIP_ADAPTER"], dump["INPUT"], dump["TEST"]
    assert swin.mask_prompt_fwd is clip["MASK_PROMPT_FWD"] is True
    assert swin.mask_threshold == clip["MASK_THR"]
    assert (swin.min_size_test, swin.max_size_test) == (
        test_input["MIN_SIZE_TEST"],
        test_input["MAX_SIZE_TEST"],
    )
    assert swin.test_aug is test["AUG"]["ENABLED"] is False
    assert swin.test_aug_min_sizes == tuple(test["AUG"]["MIN_SIZES"])
    assert (swin.test_aug_max_size, swin.test_aug_flip) == (
        test["AUG"]["MAX_SIZE"],
        test["AUG"]["FLIP"],
    )
    assert swin.sliding_window is test["SLIDING_WINDOW"] is False
    assert swin.sliding_tile_size == test["SLIDING_TILE_SIZE"]
    # a minimal file: every omitted key takes the official default, not ours
    minimal = {
        "MODEL": {
            "BACKBONE": {"NAME": "D2SwinTransformer"},
            "SEM_SEG_HEAD": {"IN_FEATURES": ["res2", "res3", "res4", "res5"]},
        },
        "INPUT": {"FORMAT": "RGB"},
    }
    cfg = config_from_official(minimal, ClipArch())
    assert cfg.mask_prompt_fwd is False  # add_ovseg_config default
    assert (cfg.min_size_test, cfg.max_size_test) == (800, 1333)  # detectron2 defaults
    assert cfg.pixel_mean == (103.53, 116.28, 123.675) and cfg.pixel_std == (1.0, 1.0, 1.0)
    assert cfg.conv_dim == 128  # detectron2 SEM_SEG_HEAD.CONVS_DIM
    assert cfg.test_aug_min_sizes == (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    assert cfg.test_aug_max_size == 4000 and cfg.sliding_overlap == 2 / 3
    with pytest.raises(ValueError, match="IN_FEATURES=\\['p2'"):  # detectron2's default
        config_from_official(
            {**minimal, "MODEL": {"BACKBONE": {"NAME": "D2SwinTransformer"}}}, ClipArch()
        )
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        config_from_official(
            {"MODEL": {"BACKBONE": {"NAME": "build_resnet_deeplab_backbone"}}}, ClipArch()
        )


def test_min_size_train_expression_is_computed_not_evaluated(tmp_path):
    assert evaluate_size_list("[int(x * 0.1 * 640) for x in range(5, 21)]") == [
        320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1088, 1152, 1216, 1280
    ]  # fmt: skip
    # float products round as Python's left-to-right multiplication does
    assert evaluate_size_list("[int(x * 0.1 * 3) for x in range(0, 11, 5)]") == [0, 1, 3]
    path = tmp_path / "c.yaml"
    path.write_text(f"INPUT:\n  MIN_SIZE_TRAIN: {EVAL_LINE}\n")
    assert read_official_yaml(path)["INPUT"]["MIN_SIZE_TRAIN"][:2] == [320, 384]


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "[int(x * 0.1 * 640) for x in range(5, 21) if x]",
        "[int(x * y) for x in range(5, 21)]",
        "[int(x + 1) for x in range(5, 21)]",
        "[x for x in range(5, 21)]",
        "[int(x * 2) for x in open('f')]",
        "[int(x * 2) for x in range(5, n)]",
        "[int(x * '2') for x in range(5, 21)]",
        "[float(x * 2) for x in range(5, 21)]",
        "[int(x * 2) for x in range(1.5, 21)]",
        "[int(x * 2) for x in range(5, 21)",
    ],
)
def test_other_expressions_are_refused(tmp_path, expression):
    with pytest.raises(ValueError, match="refused|cannot parse"):
        evaluate_size_list(expression)
    path = tmp_path / "c.yaml"
    path.write_text(f"INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval [{expression!r}]\n")
    with pytest.raises(
        ValueError, match=r"c.yaml: INPUT.MIN_SIZE_TRAIN \(line 2\): (refused|cannot)"
    ):
        read_official_yaml(path)


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/object/apply:eval ['1', '2']\n",
        "a: !!python/name:os.system\n",
    ],
)
def test_other_python_tags_are_refused(tmp_path, text):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="not valid YAML"):
        read_official_yaml(path)


def test_base_chain_of_a_raw_file(tmp_path):
    raw = require(CONFIGS / "raw" / "ovseg_R101c_vitB_bs32_120k.yaml")
    (tmp_path / "base.yaml").write_text(raw.read_text())
    (tmp_path / "child.yaml").write_text(
        "_BASE_: base.yaml\nTEST:\n  AUG:\n    ENABLED: True\n    MIN_SIZES: [320, 640]\n"
    )
    cfg = config_from_official(read_official_yaml(tmp_path / "child.yaml"), ClipArch())
    assert cfg.test_aug and cfg.test_aug_min_sizes == (320, 640) and cfg.test_aug_max_size == 3584
    assert cfg.backbone["type"] == "resnet" and cfg.mask_threshold == 0.5


def test_load_official_reads_a_raw_file_with_the_eval_tag(tmp_path, official_tiny):
    """official-tiny was built from the raw published Swin file (which has the Python eval
    tag) plus tiny overrides (its README); the same as a ``_BASE_`` chain on the raw file
    loads with ``ovseg.load_official`` to the fixture's model."""
    import ovseg
    from tests.conftest import OFFICIAL_TINY

    model, _, _, _ = official_tiny
    raw = require(CONFIGS / "raw" / "ovseg_swinB_vitL_bs32_120k.yaml")
    (tmp_path / "tiny.yaml").write_text(
        f"_BASE_: {raw}\n"
        "MODEL:\n"
        "  SWIN: {EMBED_DIM: 16, DEPTHS: [2, 2, 2, 2], NUM_HEADS: [2, 2, 4, 8], WINDOW_SIZE: 7}\n"
        "  SEM_SEG_HEAD: {CONVS_DIM: 64, MASK_DIM: 64, EMBEDDING_DIM: 32, EMBED_HIDDEN_DIM: 64}\n"
        "  MASK_FORMER: {HIDDEN_DIM: 64, NHEADS: 4, DIM_FEEDFORWARD: 128, DEC_LAYERS: 3,\n"
        "                NUM_OBJECT_QUERIES: 10}\n"
    )
    with pytest.raises(ValueError, match="outside the config's folder"):
        ovseg.load_official(tmp_path / "tiny.yaml", OFFICIAL_TINY / "model_state.safetensors")
    loaded = ovseg.load_official(
        tmp_path / "tiny.yaml",
        OFFICIAL_TINY / "model_state.safetensors",
        allow_base_outside=True,
    )
    assert loaded.config == model.config


# ---- hostile and malformed files: a ValueError naming the file (and key), quickly -------------


def _eval_config(tmp_path, expression: str):
    path = tmp_path / "c.yaml"
    path.write_text(
        "MODEL:\n  META_ARCHITECTURE: OVSeg\n"
        f"INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval [{expression!r}]\n"
    )
    return path


@pytest.mark.parametrize(
    "expression, words",
    [
        ("[int(x * 0.1 * 640) for x in range(5, 100000000000)]", "99999999995 elements"),
        ("[int(x * 1) for x in range(0, 10001)]", "10001 elements"),
        ("[int(x * 1) for x in range(0, 10**2)]", "range"),
        ("[int(x * 1) for x in range(0, 99999999999999999999999999999)]", "elements"),
        ("[int(x * 1e308 * 1e308) for x in range(1, 3)]", "OverflowError"),
        ("[int(x * -1) for x in range(1, 3)]", "product of the loop variable"),
        ("[int(x * 1e10) for x in range(1, 3)]", "not a size"),
        ("[int(x * 1) for x in range(1, 3, 0)]", "must not be zero"),
        ("[int(x" + " * 1" * 400 + ") for x in range(1, 3)]", "characters"),
        ("[" * 300 + "]" * 300, "cannot parse|characters"),
    ],
)
def test_eval_form_is_bounded(tmp_path, expression, words):
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ValueError, match=words) as info:
        read_official_yaml(_eval_config(tmp_path, expression))
    assert time.perf_counter() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert "c.yaml: INPUT.MIN_SIZE_TRAIN (line 4)" in str(info.value)


def test_the_published_form_still_reads_at_the_bound(tmp_path):
    cfg = read_official_yaml(_eval_config(tmp_path, "[int(x * 1) for x in range(0, 10000)]"))
    assert len(cfg["INPUT"]["MIN_SIZE_TRAIN"]) == 10000


def test_base_chains_loop_nest_or_leave_the_folder(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match="chain loops"):
        read_official_yaml(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\n")
    with pytest.raises(ValueError, match="chain loops"):
        read_official_yaml(tmp_path / "self.yaml")
    for i in range(40):
        (tmp_path / f"n{i}.yaml").write_text(f"_BASE_: n{i + 1}.yaml\nK{i}: {i}\n")
    (tmp_path / "n40.yaml").write_text("END: 1\n")
    with pytest.raises(ValueError, match="chain longer than 16"):
        read_official_yaml(tmp_path / "n0.yaml")
    assert read_official_yaml(tmp_path / "n30.yaml") == {"END": 1} | {
        f"K{i}": i for i in range(30, 40)
    }

    outside = tmp_path / "elsewhere"
    inside = tmp_path / "configs"
    outside.mkdir()
    inside.mkdir()
    (outside / "secret.yaml").write_text("MODEL: {WEIGHTS: x}\n")
    (inside / "c.yaml").write_text(f"_BASE_: {outside / 'secret.yaml'}\n")
    (inside / "rel.yaml").write_text("_BASE_: ../elsewhere/secret.yaml\n")
    for name in ("c.yaml", "rel.yaml"):
        with pytest.raises(ValueError, match=r"outside the config's folder .*--allow-base-outside"):
            read_official_yaml(inside / name)
        assert read_official_yaml(inside / name, allow_base_outside=True)["MODEL"] == {
            "WEIGHTS": "x"
        }
    (inside / "sub").mkdir()
    (inside / "sub" / "base.yaml").write_text("A: 1\n")
    (inside / "nested.yaml").write_text("_BASE_: sub/base.yaml\nB: 2\n")
    assert read_official_yaml(inside / "nested.yaml") == {"A": 1, "B": 2}


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                   for p, c in zip("abcdefgh", "bcdefghi"))
         + "top: *i\n", "more than 100000 values"),
        ("- a\n- b\n", "mapping at the top level"),
        ("_BASE_: [a, b]\n", "_BASE_ must be a file name"),
        ("a: !!python/object/apply:eval [1]\n", "not valid YAML"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
    ids=["deep", "billion-laughs", "list", "base-list", "eval-int", "syntax"],
)  # fmt: skip
def test_malformed_configs_are_value_errors(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words) as info:
        read_official_yaml(path)
    assert "bad.yaml" in str(info.value)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00a: 1")
    with pytest.raises(ValueError, match="bin.yaml"):
        read_official_yaml(tmp_path / "bin.yaml")
