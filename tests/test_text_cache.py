"""On-disk text-feature cache and text-tower precisions (ovseg.modeling.text_cache)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ovseg.modeling import text_cache
from ovseg.modeling.prompts import VILD_TEMPLATES

NAMES = ["cat", "dog", "traffic light", "chest of drawers"]


def open_clip_text_features(clip, names, templates=VILD_TEMPLATES):
    """The official recipe written out on open_clip's own encode_text (77 tokens, no
    batching by length): per template normalise, average over templates, normalise."""
    from open_clip.tokenizer import tokenize

    per_template = [
        F.normalize(clip.clip_model.encode_text(tokenize([t.format(n) for n in names])), dim=-1)
        for t in templates
    ]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def fresh(tiny_model, folder, precision="fp32"):
    """A copy of the tiny model's CLIP branch with an empty memory cache (a 'new process')
    using ``folder`` as its disk cache, counting text-tower calls."""
    clip = copy.deepcopy(tiny_model.clip_adapter)
    clip._text_cache.clear()
    clip.text_cache_dir = folder
    clip.text_precision = precision
    clip.calls = 0
    encode = clip._encode_vocabulary

    def counting(*args, **kwargs):
        clip.calls += 1
        return encode(*args, **kwargs)

    clip._encode_vocabulary = counting
    return clip


@torch.no_grad()
def test_disk_hit_skips_the_text_tower_and_equals_open_clip(tiny_model, tmp_path):
    first = fresh(tiny_model, tmp_path)
    computed = first.text_features(NAMES)
    assert first.calls > 0 and first.last_text_stats["source"] == "computed"
    expected = open_clip_text_features(first, NAMES)
    assert (computed - expected).abs().max() < 1e-5
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    second = fresh(tiny_model, tmp_path)
    cached = second.text_features(NAMES)
    assert second.calls == 0 and second.last_text_stats["source"] == "disk"
    assert (cached - expected).abs().max() < 1e-5
    second.text_features(NAMES)
    assert second.calls == 0 and second.last_text_stats["source"] == "memory"


@torch.no_grad()
def test_key_changes_with_weights_templates_names_precision(tiny_model, tmp_path):
    clip = fresh(tiny_model, tmp_path)
    clip.text_features(NAMES)
    calls = clip.calls
    clip.text_features(NAMES, VILD_TEMPLATES[:3])  # another template set
    assert clip.calls > calls
    calls = clip.calls
    clip.text_features(NAMES[::-1])  # another order is another vocabulary
    assert clip.calls > calls
    with torch.no_grad():
        clip.clip_model.ln_final.weight.mul_(1.1)
    calls = clip.calls
    changed = clip.text_features(NAMES)
    assert clip.calls > calls
    assert (changed - open_clip_text_features(clip, NAMES)).abs().max() < 1e-5
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    fp = clip.weights_fingerprint()
    paths = {
        text_cache.entry_path(tmp_path, fp, VILD_TEMPLATES, p, NAMES)
        for p in ("fp32", "bf16", "int8")
    }
    assert len(paths) == 3


@torch.no_grad()
def test_corrupt_entry_is_recomputed(tiny_model, tmp_path):
    clip = fresh(tiny_model, tmp_path)
    good = clip.text_features(NAMES)
    (entry,) = tmp_path.glob("*.safetensors")
    for damage in (entry.read_bytes()[:100], b"not a safetensors file"):
        entry.write_bytes(damage)
        again = fresh(tiny_model, tmp_path)
        assert (again.text_features(NAMES) - good).abs().max() < 1e-6
        assert again.calls > 0 and again.last_text_stats["source"] == "computed"
        assert (
            text_cache.load(tmp_path, again.weights_fingerprint(), VILD_TEMPLATES, "fp32", NAMES)
            is not None
        )


def test_memory_only_without_folder(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path))
    clip = fresh(tiny_model, None)
    clip.text_features(NAMES)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@torch.no_grad()
def test_low_precision_text_close_to_fp32(tiny_model, tmp_path, precision):
    clip = fresh(tiny_model, None, precision)
    low = clip.text_features(NAMES)
    expected = open_clip_text_features(clip, NAMES)
    cosine = (low * expected).sum(-1)
    assert cosine.min() > 0.99
    # and the precision is part of the key: fp32 is computed afresh, exactly
    clip.text_precision = "fp32"
    assert (clip.text_features(NAMES) - expected).abs().max() < 1e-5


@torch.no_grad()
def test_loaded_weights_keyed_by_file_without_hashing(tiny_model, tmp_path, monkeypatch):
    """Weights read from a file are keyed by the file's identity (no sha256 of the tower);
    touching the file, or changing a weight after loading, gives another key."""
    import os

    import ovseg
    from ovseg.modeling import clip_branch

    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    path = ovseg.save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    model = ovseg.load_checkpoint(path)

    def no_hashing(named):
        raise AssertionError("the text tower was hashed")

    monkeypatch.setattr(clip_branch, "tensor_digest", no_hashing)
    from_file = model.clip_adapter.weights_fingerprint()
    assert model.clip_adapter.weights_fingerprint() == from_file
    assert ovseg.load_checkpoint(path).clip_adapter.weights_fingerprint() == from_file
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ovseg.load_checkpoint(path).clip_adapter.weights_fingerprint() != from_file
    monkeypatch.undo()

    # a weight changed after loading: hashed again, so no stale disk entry is ever read
    clip = model.clip_adapter
    clip.text_cache_dir = tmp_path / "cache"
    before = clip.text_features(NAMES)
    clip.clip_model.ln_final.bias.add_(0.5)
    assert clip.weights_fingerprint() != from_file
    after = clip.text_features(NAMES)
    assert clip.last_text_stats["source"] == "computed"
    assert (after - before).abs().max() > 1e-4
    assert (after - open_clip_text_features(clip, NAMES)).abs().max() < 1e-5
