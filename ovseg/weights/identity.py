"""What identifies a model's weights, without building the model: the records that decide
whether an output made earlier is still valid (``PredictorSpec.record``).

Each function returns a small JSON-ready dict naming the model and the sha256 of every file
it is built from (cached per file version: ``ovseg.weights.verify``). A file that cannot be
found is recorded as None: such an output is never "the same", and building the model then
fails with its own message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ovseg.weights import hub
from ovseg.weights.verify import file_sha256

RANDOM_WEIGHTS = "seeded-random"  # the weights digest of a variant built on seeded random weights


def _sha(path: str | Path | None) -> str | None:
    return file_sha256(path) if path is not None and Path(path).is_file() else None


def weights_file_sha256(name_or_path: str | Path | None) -> str | None:
    """sha256 of a weights file given as a download name (its cached copy) or a path; None
    when there is no such file."""
    if name_or_path is None:
        return None
    if str(name_or_path) in hub.REGISTRY:
        return _sha(hub.find_cached(str(name_or_path), verify=False))
    return _sha(name_or_path)


def _hub_files(repo_id: str, revision: str | None) -> dict[str, str | None]:
    """sha256 of a Hub model's files as cached (None when not cached yet)."""
    from huggingface_hub import try_to_load_from_cache

    from ovseg.weights.pretrained import CONFIG_NAME, WEIGHTS_NAME

    out = {}
    for key, filename in (("config_sha256", CONFIG_NAME), ("weights_sha256", WEIGHTS_NAME)):
        found = try_to_load_from_cache(repo_id, filename, revision=revision or "main")
        out[key] = _sha(found) if isinstance(found, str) else None
    return out


def model_identity(name: str, checkpoint: str | Path | None = None) -> dict:
    """What ``build_model(name, checkpoint)`` builds: the name, and the sha256 of its weights
    (and of ``config.json`` for a Hub repository or folder). A named variant without a
    checkpoint reads its cached released file, or (``ovseg-test-tiny``) seeded random
    weights."""
    from ovseg.weights.pretrained import (
        CONFIG_NAME,
        WEIGHTS_NAME,
        is_pretrained_folder,
        parse_hf_ref,
    )
    from ovseg.weights.registry import RANDOM_OK

    name = str(name)
    ref = parse_hf_ref(name)
    if ref is not None:
        return {"name": name, **_hub_files(*ref)}
    if is_pretrained_folder(name):
        folder = Path(name)
        return {
            "name": str(folder.resolve()),
            "config_sha256": _sha(folder / CONFIG_NAME),
            "weights_sha256": _sha(folder / WEIGHTS_NAME),
        }
    if checkpoint is not None:
        return {"name": name, "weights_sha256": _sha(checkpoint)}
    digest = weights_file_sha256(name) if name in hub.REGISTRY else None
    if digest is None and name in RANDOM_OK:
        digest = RANDOM_WEIGHTS
    return {"name": name, "weights_sha256": digest}


def official_identity(
    config: str | Path, weights: str | Path, allow_base_outside: bool = False
) -> dict:
    """An official YAML + checkpoint: the sha256 of the effective config (``_BASE_`` chain
    resolved) and of the weights file."""
    from ovseg.weights.official_yaml import read_official_yaml

    config_sha = None
    if Path(config).is_file():
        cfg = read_official_yaml(config, allow_base_outside=allow_base_outside)
        text = json.dumps(cfg, sort_keys=True, default=str)
        config_sha = hashlib.sha256(text.encode()).hexdigest()
    return {"name": "official-config", "config_sha256": config_sha, "weights_sha256": _sha(weights)}


def clip_identity(clip: str | Path) -> dict:
    """A CLIP-branch-only model (``--clip``): the sha256 of its CLIP weights."""
    return {"name": "clip-only", "weights_sha256": weights_file_sha256(clip)}
