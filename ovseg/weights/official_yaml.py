"""Official detectron2 YAML files: a safe reader, and the official defaults of the keys we read.

The published OVSeg configs are read with ``yaml.safe_load`` semantics: no Python object is
ever built. Two of them set ``INPUT.MIN_SIZE_TRAIN`` with a Python tag,
``!!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]``, which
detectron2 evaluates with ``yaml.unsafe_load``. This reader recognises exactly that form, a
list comprehension ``[int(x * A * B ...) for x in range(C, D[, S])]`` over numbers, parses it
with ``ast`` and computes it without evaluating code; every other Python tag is refused.

A key a file omits takes the value the official code gives it: detectron2's ``get_cfg()``,
then ``add_deeplab_config`` and ov-seg's ``add_ovseg_config`` (``OFFICIAL_DEFAULTS``, only the
keys ``config_from_official`` reads).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import yaml

EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"

# Official defaults (detectron2 config/defaults.py, projects/DeepLab/deeplab/config.py,
# ov-seg open_vocab_seg/config.py) of every key config_from_official reads.
OFFICIAL_DEFAULTS: dict = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone"},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES4_DILATION": 1,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            "RES5_MULTI_GRID": [1, 2, 4],
            "STEM_TYPE": "deeplab",
        },
        "SWIN": {
            "PATCH_SIZE": 4,
            "EMBED_DIM": 96,
            "DEPTHS": [2, 2, 6, 2],
            "NUM_HEADS": [3, 6, 12, 24],
            "WINDOW_SIZE": 7,
            "MLP_RATIO": 4.0,
            "QKV_BIAS": True,
            "QK_SCALE": None,
            "NORM_INDICES": None,
            "PROJECTION": False,
            "APE": False,
            "PATCH_NORM": True,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        },
        "SEM_SEG_HEAD": {
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "CONVS_DIM": 128,
            "MASK_DIM": 256,
            "NORM": "GN",
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
            "TRANSFORMER_ENC_LAYERS": 0,
            "EMBEDDING_DIM": 512,
            "EMBED_HIDDEN_DIM": 1024,
            "EMBED_LAYERS": 2,
        },
        "MASK_FORMER": {
            "NHEADS": 8,
            "DROPOUT": 0.1,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 6,
            "PRE_NORM": False,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "TRANSFORMER_IN_FEATURE": "res5",
            "ENFORCE_INPUT_PROJ": False,
            "SIZE_DIVISIBILITY": 32,
            "TEST": {"SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False, "PANOPTIC_ON": False},
        },
        "CLIP_ADAPTER": {
            "TEXT_TEMPLATES": "vild",
            "PREDEFINED_PROMPT_TEMPLATES": ["a photo of a {}."],
            "MASK_FILL": "mean",
            "MASK_EXPAND_RATIO": 1.0,
            "MASK_THR": 0.4,
            "MASK_MATTING": False,
            "REGION_RESIZED": True,
            "CLIP_ENSEMBLE": True,
            "CLIP_ENSEMBLE_WEIGHT": 0.7,
            "MASK_PROMPT_DEPTH": 3,
            "MASK_PROMPT_FWD": False,
        },
    },
    "INPUT": {"MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR"},
    "TEST": {
        "AUG": {
            "ENABLED": False,
            "MIN_SIZES": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200],
            "MAX_SIZE": 4000,
            "FLIP": True,
        },
        "SLIDING_WINDOW": False,
        "SLIDING_TILE_SIZE": 224,
        "SLIDING_OVERLAP": 2 / 3.0,
        "DENSE_CRF": False,
    },
}


def with_official_defaults(cfg: dict) -> dict:
    """A copy of ``OFFICIAL_DEFAULTS`` with ``cfg`` merged over it (what the official code sees)."""
    merged = copy.deepcopy(OFFICIAL_DEFAULTS)
    merge_config(merged, copy.deepcopy(cfg))
    return merged


def merge_config(dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst`` in place, recursively for mappings (detectron2's rule)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge_config(dst[k], v)
        else:
            dst[k] = v


def read_official_yaml(path: str | Path) -> dict:
    """Read a detectron2-style YAML safely, resolving ``_BASE_`` chains (relative to the file).

    Raises ``ValueError`` for invalid YAML and for Python tags other than the published
    ``MIN_SIZE_TRAIN`` list comprehension (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        cfg = yaml.load(path.read_text(), Loader=_OfficialLoader) or {}
    except yaml.YAMLError as error:
        hint = (
            "; Python tags are refused except the published MIN_SIZE_TRAIN list comprehension"
            if "python/" in str(error)
            else ""
        )
        raise ValueError(f"{path}: not valid YAML ({error}){hint}") from error
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = cfg.pop("_BASE_", None)
    if base:
        merged = read_official_yaml(path.parent / Path(base).expanduser())
        merge_config(merged, cfg)
        cfg = merged
    return cfg


def evaluate_size_list(expression: str) -> list[int]:
    """Compute ``[int(x * A * B ...) for x in range(C, D[, S])]`` without evaluating code.

    The element is ``int()`` of a product of the loop variable and int/float literals,
    multiplied left to right as Python does (so ``int(x * 0.1 * 640)`` rounds exactly as the
    official ``eval``). Anything else raises ``ValueError``.
    """
    accepted = "[int(x * A * B) for x in range(C, D)] with numbers A, B, C, D"
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"cannot parse {expression!r}: {error}; accepted: {accepted}") from None

    def refuse(why: str):
        return ValueError(f"refused Python expression {expression!r} ({why}); accepted: {accepted}")

    if not isinstance(tree, ast.ListComp) or len(tree.generators) != 1:
        raise refuse("not a list comprehension with one loop")
    loop = tree.generators[0]
    if not isinstance(loop.target, ast.Name) or loop.ifs or loop.is_async:
        raise refuse("the loop must be 'for NAME in range(...)' without conditions")
    var = loop.target.id
    it = loop.iter
    if not (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "range"
        and not it.keywords
        and 1 <= len(it.args) <= 3
        and all(_is_number(a, int) for a in it.args)
    ):
        raise refuse("the loop must run over range() of integer literals")
    elt = tree.elt
    if not (
        isinstance(elt, ast.Call)
        and isinstance(elt.func, ast.Name)
        and elt.func.id == "int"
        and len(elt.args) == 1
        and not elt.keywords
    ):
        raise refuse("the element must be int(...)")

    def product(node, x):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return product(node.left, x) * product(node.right, x)
        if isinstance(node, ast.Name) and node.id == var:
            return x
        if _is_number(node, (int, float)):
            return node.value
        raise refuse("int() must hold a product of the loop variable and numbers")

    bounds = [a.value for a in it.args]
    return [int(product(elt.args[0], x)) for x in range(*bounds)]


def _is_number(node, types) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, types)
        and not isinstance(node.value, bool)
    )


class _OfficialLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the one published ``eval`` form (computed, never evaluated)."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> list[int]:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None
    if not args or len(args) != 1 or not isinstance(args[0], str):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"!!python/object/apply:eval needs one string argument, got {args!r}",
            node.start_mark,
        )
    try:
        return evaluate_size_list(args[0])
    except ValueError as error:
        raise yaml.constructor.ConstructorError(None, None, str(error), node.start_mark) from None


_OfficialLoader.add_constructor(EVAL_TAG, _construct_eval)
