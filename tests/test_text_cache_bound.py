"""The text-feature caches are bounded: least recently used entries go first, on disk and in
memory, by ``--text-cache-max-mb`` / ``$OVSEG_TEXT_CACHE_MAX_MB``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import ovseg
from ovseg.inference.options import InferenceOptions
from ovseg.modeling import text_cache


def _store(folder, i: int, max_bytes: int, classes: int = 20):
    names = [f"class {i} {k}" for k in range(classes)]
    feats = torch.randn(classes, 512)
    return text_cache.store(folder, "w", ("{}",), "fp32", names, feats, max_bytes), names


def test_the_folder_stays_under_the_bound(tmp_path):
    folder = tmp_path / "tf"
    bound = 400_000  # an entry of 20 x 512 floats takes 45056 bytes (11 blocks)
    for i in range(60):
        _store(folder, i, bound)
        assert text_cache.folder_bytes(folder) <= bound, i
    assert 0 < len(list(folder.iterdir())) <= bound // 45056
    # du's own count agrees (blocks, not sizes)
    assert sum(p.stat().st_blocks * 512 for p in folder.iterdir()) <= bound


def test_least_recently_used_entries_go_first(tmp_path):
    folder = tmp_path / "tf"
    bound = 300_000
    paths = []
    for i in range(5):
        path, names = _store(folder, i, bound)
        os.utime(path, (1000 + i, 1000 + i))  # written long ago, in this order
        paths.append((path, names))
    first_path, first_names = paths[0]
    assert text_cache.load(folder, "w", ("{}",), "fp32", first_names) is not None  # read now
    for i in range(5, 8):  # past the bound: the oldest unread entries are evicted
        _store(folder, i, bound)
    assert first_path.exists()
    assert not paths[1][0].exists()


def test_an_entry_larger_than_the_bound_is_not_written(tmp_path):
    assert _store(tmp_path / "tf", 0, 10_000)[0] is None
    assert text_cache.folder_bytes(tmp_path / "tf") == 0


def test_the_bound_comes_from_the_option_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(text_cache.ENV_MAX_MB, raising=False)
    assert text_cache.max_bytes_from() == 256 * 2**20
    monkeypatch.setenv(text_cache.ENV_MAX_MB, "1.5")
    assert text_cache.max_bytes_from() == int(1.5 * 2**20)
    assert text_cache.max_bytes_from(3) == 3 * 2**20
    monkeypatch.setenv(text_cache.ENV_MAX_MB, "lots")
    with pytest.raises(ValueError, match="OVSEG_TEXT_CACHE_MAX_MB must be a number"):
        text_cache.max_bytes_from()
    with pytest.raises(ValueError, match=">= 0"):
        InferenceOptions(text_cache_max_mb=-1)


def test_many_new_vocabularies_keep_both_caches_bounded(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    bound_mb = 0.005  # 5 KiB: one block-rounded entry on disk, 13 tiny vocabularies in memory
    predictor = ovseg.Predictor(tiny_model, options=InferenceOptions(text_cache_max_mb=bound_mb))
    predictor.set_image(np.zeros((24, 32, 3), np.uint8))
    clip = predictor.model.clip_adapter
    folder = clip.text_cache_dir
    for i in range(40):
        predictor.predict([f"thing {i}", f"other {i}", "sky"])
        assert text_cache.folder_bytes(folder) <= bound_mb * 2**20
        assert clip._text_cache.nbytes <= bound_mb * 2**20
    assert len(clip._text_cache) < 40


def test_the_flag_reaches_the_options():
    from ovseg.cli import build_parser
    from ovseg.cli._spec import predictor_spec

    for command in ("segment", "serve", "eval"):
        argv = [command, "--model", "m", "--text-cache-max-mb", "12"]
        argv += {
            "segment": ["x.jpg", "--classes", "a"],
            "eval": ["--dataset", "camvid", "--root", "r"],
        }.get(command, [])
        args = build_parser().parse_args(argv)
        assert predictor_spec(args).options.text_cache_max_mb == 12
