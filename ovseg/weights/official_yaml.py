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
from typing import NamedTuple

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


MAX_EVAL_ELEMENTS = 10_000  # the eval form builds at most this many sizes (published: 16)
MAX_EXPRESSION_CHARS = 500  # and is at most this long (published: 45)
MAX_SIZE_VALUE = 2**31  # each size it gives is in [0, this)
MAX_BASE_DEPTH = 16  # _BASE_ chains longer than this are refused
MAX_CONFIG_NODES = 100_000  # values in a config, aliases counted as often as they are used
MAX_CONFIG_BYTES = 16 * 2**20


def read_official_yaml(path: str | Path, allow_base_outside: bool = False) -> dict:
    """Read a detectron2-style YAML safely, resolving ``_BASE_`` chains (relative to the file).

    ``_BASE_`` files must lie under the folder of ``path`` (the config the user gave) unless
    ``allow_base_outside``; chains are at most ``MAX_BASE_DEPTH`` long and may not loop.

    Raises:
        FileNotFoundError: ``path`` or a ``_BASE_`` file does not exist.
        ValueError: naming the file (and key, where there is one) for every malformed input:
            invalid YAML, Python tags other than the published ``MIN_SIZE_TRAIN`` list
            comprehension (see the module docstring) or such a comprehension over more than
            ``MAX_EVAL_ELEMENTS`` elements, nesting too deep, more than ``MAX_CONFIG_NODES``
            values, a ``_BASE_`` outside the folder, looping or too long a chain.
    """
    path = Path(path)
    root = path.resolve().parent
    return _read(path, root, allow_base_outside, ())


def _read(path: Path, root: Path, allow_outside: bool, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_OfficialLoader) or {}
    except yaml.YAMLError as error:
        hint = (
            "; Python tags are refused except the published MIN_SIZE_TRAIN list comprehension"
            if "python/" in str(error)
            else ""
        )
        raise ValueError(f"{path}: not valid YAML ({error}){hint}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    _resolve_eval_forms(cfg, path)
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{path}: _BASE_ must be a file name, got {base!r}")
    here = path.resolve()
    base_path = (here.parent / Path(base).expanduser()).resolve()
    if not allow_outside and not base_path.is_relative_to(root):
        raise ValueError(
            f"{path}: _BASE_ {base!r} is {base_path}, outside the config's folder {root}; "
            "pass allow_base_outside=True (command line: --allow-base-outside) to follow it"
        )
    chain = (*chain, here)
    if base_path in chain:
        loop = " -> ".join(str(p) for p in (*chain, base_path))
        raise ValueError(f"{path}: the _BASE_ chain loops: {loop}")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ValueError(f"{path}: _BASE_ chain longer than {MAX_BASE_DEPTH} files")
    merged = _read(base_path, root, allow_outside, chain)
    try:
        merge_config(merged, cfg)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config") from None
    return merged


class _EvalForm(NamedTuple):
    """A ``!!python/object/apply:eval`` value, computed after loading (to name its key)."""

    expression: str
    line: int


def _resolve_eval_forms(cfg: dict, path: Path) -> None:
    """Replace each ``_EvalForm`` by its computed list, and bound the config's size (aliases
    counted at each use, so a "billion laughs" file stops early)."""
    count = 0
    stack: list[tuple[object, tuple[str, ...]]] = [(cfg, ())]
    while stack:
        node, keys = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            count += 1
            if count > MAX_CONFIG_NODES:
                raise ValueError(f"{path}: more than {MAX_CONFIG_NODES} values; not a config")
            where = (*keys, str(key))
            if isinstance(value, _EvalForm):
                try:
                    node[key] = evaluate_size_list(value.expression)
                except ValueError as error:
                    raise ValueError(
                        f"{path}: {'.'.join(where)} (line {value.line}): {error}"
                    ) from None
            elif isinstance(value, (dict, list)):
                if len(where) > 64:
                    raise ValueError(f"{path}: {'.'.join(where[:8])}...: nested too deeply")
                stack.append((value, where))


def evaluate_size_list(expression: str) -> list[int]:
    """Compute ``[int(x * A * B ...) for x in range(C, D[, S])]`` without evaluating code.

    The element is ``int()`` of a product of the loop variable and int/float literals,
    multiplied left to right as Python does (so ``int(x * 0.1 * 640)`` rounds exactly as the
    official ``eval``). Anything else raises ``ValueError``.
    """
    accepted = (
        "[int(x * A * B) for x in range(C, D)] with numbers A, B, C, D, at most "
        f"{MAX_EVAL_ELEMENTS} elements"
    )
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(
            f"refused Python expression of {len(str(expression))} characters (at most "
            f"{MAX_EXPRESSION_CHARS}); accepted: {accepted}"
        )
    try:
        tree = ast.parse(expression, mode="eval").body
    except (SyntaxError, RecursionError, MemoryError) as error:
        raise ValueError(f"cannot parse {expression!r}: {error}; accepted: {accepted}") from None

    def refuse(why: str):
        return _Refused(f"refused Python expression {expression!r} ({why}); accepted: {accepted}")

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
    try:
        steps = range(*bounds)
        count = len(steps)
    except (ValueError, OverflowError) as error:
        raise refuse(f"range{tuple(bounds)}: {error}") from None
    if count > MAX_EVAL_ELEMENTS:
        raise refuse(f"range{tuple(bounds)} has {count} elements, more than {MAX_EVAL_ELEMENTS}")
    out = []
    for x in steps:
        try:
            value = int(product(elt.args[0], x))
        except _Refused:
            raise
        except (OverflowError, ValueError, RecursionError) as error:
            raise refuse(f"for x = {x}: {type(error).__name__}: {error}") from None
        if not 0 <= value < MAX_SIZE_VALUE:
            raise refuse(f"for x = {x} it gives {value}, not a size in [0, {MAX_SIZE_VALUE})")
        out.append(value)
    return out


class _Refused(ValueError):
    pass


def _is_number(node, types) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, types)
        and not isinstance(node.value, bool)
    )


class _OfficialLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the one published ``eval`` form (computed, never evaluated)."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> _EvalForm:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None
    if not args or len(args) != 1 or not isinstance(args[0], str):
        shown = repr(args)[:200]
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"!!python/object/apply:eval needs one string argument, got {shown}",
            node.start_mark,
        )
    return _EvalForm(args[0], node.start_mark.line + 1)


_OfficialLoader.add_constructor(EVAL_TAG, _construct_eval)
