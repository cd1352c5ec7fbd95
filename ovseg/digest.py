"""Content digests of tensors: cache keys and "these weights did not change" checks."""

from __future__ import annotations

import hashlib

import torch


def tensor_digest(named: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of tensors (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy
    return h.hexdigest()
