"""Atomic writes: readers never see a partial file, and the process umask is left alone."""

from __future__ import annotations

import os
import stat

import pytest

from ovseg.fileio import atomic_path, write_atomic


def test_atomic_write_never_touches_the_umask(tmp_path, monkeypatch):
    """Setting the umask to 0, even for a moment, races with threads creating files (they
    would get world-writable files)."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    write_atomic(tmp_path / "a.bin", b"data")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"more")
    assert calls == []
    assert (tmp_path / "a.bin").read_bytes() == b"data"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_result_gets_the_usual_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_atomic(tmp_path / "x", b"1")
        (tmp_path / "y").write_bytes(b"1")  # what a plain open() gives
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "x").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE((tmp_path / "y").stat().st_mode)


def test_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "keep").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
