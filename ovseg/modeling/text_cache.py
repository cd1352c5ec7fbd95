"""On-disk cache of class text features, so a vocabulary's text tower runs once per machine.

One safetensors file per (text-tower weights digest, template set, precision, class names)
under ``ovseg_home()/text-features``: the file name is the sha256 of that key, the file holds
``features`` (K, C) float32 and the key itself in its metadata, which is checked on every
read (a mismatch, a truncated or otherwise unreadable file counts as a miss and is rewritten).
Writes are atomic (``ovseg.fileio``), so an interrupted run never leaves a partial entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FOLDER = "text-features"


def default_folder() -> Path:
    from ovseg.fileio import ovseg_home

    return ovseg_home() / FOLDER


def _key(fingerprint: str, templates, precision: str, names) -> dict[str, str]:
    return {
        "fingerprint": fingerprint,
        "templates": json.dumps(list(templates)),
        "precision": precision,
        "names": json.dumps(list(names)),
    }


def entry_path(folder: Path, fingerprint: str, templates, precision: str, names) -> Path:
    """The cache file of one key (its name is the sha256 of the key)."""
    key = _key(fingerprint, templates, precision, names)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(folder) / f"{digest[:40]}.safetensors"


def load(folder: Path, fingerprint: str, templates, precision: str, names) -> torch.Tensor | None:
    """(K, C) float32 features of the key, or None when absent, unreadable or not this key."""
    from safetensors import safe_open

    path = entry_path(folder, fingerprint, templates, precision, names)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != _key(fingerprint, templates, precision, names):
                return None
            features = f.get_tensor("features")
    except Exception:  # noqa: BLE001 - any unreadable entry is a miss, recomputed and rewritten
        return None
    if features.dim() != 2 or features.shape[0] != len(names) or not features.isfinite().all():
        return None
    return features.float()


def store(
    folder: Path, fingerprint: str, templates, precision: str, names, features: torch.Tensor
) -> Path:
    """Write the entry atomically; returns its path."""
    from safetensors.torch import save

    from ovseg.fileio import write_atomic

    path = entry_path(folder, fingerprint, templates, precision, names)
    data = save(
        {"features": features.detach().float().cpu().contiguous()},
        metadata=_key(fingerprint, templates, precision, names),
    )
    write_atomic(path, data)
    return path
