"""On-disk cache of class text features, so a vocabulary's text tower runs once per machine.

One safetensors file per (text-tower weights digest, template set, precision, class names)
under ``ovseg_home()/text-features``: the file name is the sha256 of that key, the file holds
``features`` (K, C) float32 and the key itself in its metadata, which is checked on every
read (a mismatch, a truncated or otherwise unreadable file counts as a miss and is rewritten).
Writes are atomic (``ovseg.fileio``), so an interrupted run never leaves a partial entry.

Both this folder and a model's memory cache are bounded by one rule: at most ``max_bytes``
(``max_bytes_from``: ``--text-cache-max-mb``, else ``$OVSEG_TEXT_CACHE_MAX_MB``, else
``DEFAULT_MAX_MB``), least recently used entries evicted first. On disk, "used" is the file's
modification time (a read touches it) and an entry counts the blocks it takes; when a store
takes the folder past the bound, the oldest entries are removed until it is at
``EVICT_TO`` of it, so any client sending new vocabularies cannot fill the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

FOLDER = "text-features"
DEFAULT_MAX_MB = 256.0
ENV_MAX_MB = "OVSEG_TEXT_CACHE_MAX_MB"
EVICT_TO = 0.8  # eviction brings the folder down to this share of the bound
RESCAN_EVERY = 256  # stores between re-reading the folder (other processes write there too)
STALE_TEMP_S = 3600  # temp files of writers killed mid-write older than this are removed


def max_bytes_from(max_mb: float | None = None) -> int:
    """The bound in bytes: ``max_mb``, else ``$OVSEG_TEXT_CACHE_MAX_MB``, else
    ``DEFAULT_MAX_MB``. 0 keeps nothing."""
    source = "text_cache_max_mb"
    if max_mb is None:
        env = os.environ.get(ENV_MAX_MB, "").strip()
        source = f"${ENV_MAX_MB}"
        try:
            max_mb = float(env) if env else DEFAULT_MAX_MB
        except ValueError:
            raise ValueError(f"{source} must be a number of MiB, got {env!r}") from None
    if not max_mb >= 0:  # also refuses NaN
        raise ValueError(f"{source} must be >= 0 MiB, got {max_mb}")
    return int(max_mb * 2**20)


class MemoryLRU:
    """A thread-safe in-memory LRU of tensors bounded by their total bytes. A deep copy or a
    pickle of it is a new, empty cache (a copied model starts with its own)."""

    def __init__(self) -> None:
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self.lock = threading.RLock()

    def __deepcopy__(self, memo) -> MemoryLRU:
        return MemoryLRU()

    def __reduce__(self):
        return (MemoryLRU, ())

    def get(self, key):
        with self.lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: torch.Tensor, max_bytes: int) -> None:
        size = value.numel() * value.element_size()
        with self.lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            if size <= max_bytes:
                self._items[key] = value
                self._bytes += size
            while self._bytes > max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        with self.lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items


def _disk_bytes(stat: os.stat_result) -> int:
    """What a file takes on disk: its blocks, at least its size."""
    return max(stat.st_size, getattr(stat, "st_blocks", 0) * 512)


class _Usage:
    def __init__(self) -> None:
        self.total: int | None = None  # None: not scanned yet
        self.stores = 0


_USAGE: dict[str, _Usage] = {}
_USAGE_LOCK = threading.Lock()


def folder_bytes(folder: Path) -> int:
    """Bytes the entries (and temp files) in ``folder`` take on disk."""
    return sum(size for _, size, _ in _scan(folder))


def _scan(folder: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, path) of every entry; stale temp files are removed on the way."""
    out = []
    now = time.time()
    try:
        items = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for item in items:
        try:
            stat = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(item.path)
        if item.name.endswith(".tmp"):
            if now - stat.st_mtime > STALE_TEMP_S:
                path.unlink(missing_ok=True)
                continue
        elif not item.name.endswith(".safetensors"):
            continue
        out.append((stat.st_mtime, _disk_bytes(stat), path))
    return out


def enforce_limit(folder: Path, max_bytes: int) -> int:
    """Remove the least recently used entries until ``folder`` takes at most ``EVICT_TO`` of
    ``max_bytes`` (when it is past ``max_bytes``); returns the bytes it then takes."""
    entries = _scan(folder)
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return total
    target = int(max_bytes * EVICT_TO)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= target:
            break
        if path.name.endswith(".tmp"):
            continue  # a write in progress
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        total -= size
    return total


def _account(folder: Path, added: int, max_bytes: int) -> None:
    """Count a store; scan and evict when the folder may be past the bound."""
    with _USAGE_LOCK:
        usage = _USAGE.setdefault(str(folder), _Usage())
        usage.stores += 1
        if usage.total is not None and usage.stores % RESCAN_EVERY:
            usage.total += added
            if usage.total <= max_bytes:
                return
        usage.total = enforce_limit(folder, max_bytes)


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
    try:
        os.utime(path)  # used now: the last to be evicted
    except OSError:
        pass
    return features.float()


def store(
    folder: Path,
    fingerprint: str,
    templates,
    precision: str,
    names,
    features: torch.Tensor,
    max_bytes: int | None = None,
) -> Path | None:
    """Write the entry atomically, then keep the folder within ``max_bytes`` (default
    ``max_bytes_from()``) by evicting the least recently used entries; returns its path, or
    None when the entry alone is larger than the bound (it is not written)."""
    from safetensors.torch import save

    from ovseg.fileio import write_atomic

    max_bytes = max_bytes_from() if max_bytes is None else max_bytes
    path = entry_path(folder, fingerprint, templates, precision, names)
    data = save(
        {"features": features.detach().float().cpu().contiguous()},
        metadata=_key(fingerprint, templates, precision, names),
    )
    blocks = -(-len(data) // 4096) * 4096
    if blocks > max_bytes:
        return None
    write_atomic(path, data)
    _account(Path(folder), blocks, max_bytes)
    return path
