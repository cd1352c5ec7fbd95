"""Start-up paths: building without random init, and the safetensors copy of a ``.pth``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import ovseg
from ovseg.weights.checkpoints import converted_copy_path, read_state_dict


def _trained_like(tiny_model) -> dict[str, torch.Tensor]:
    """The tiny model's weights, perturbed so that nothing equals a fresh random init."""
    g = torch.Generator().manual_seed(3)
    return {
        # contiguous: the session's tiny model may have been put in channels_last by a
        # Predictor, and an assigned channels_last weight rounds convolutions differently
        k: (v + torch.randn(v.shape, generator=g).to(v.dtype)).contiguous()
        if v.is_floating_point()
        else v
        for k, v in tiny_model.state_dict().items()
    }


def _assert_same_model(a, b):
    sa, sb = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent ones too
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]) and pa[k].dtype == pb[k].dtype, k
        assert pa[k].requires_grad == pb[k].requires_grad


@torch.no_grad()
def test_build_without_init_then_load_equals_build_then_copy(tiny_model, tmp_path):
    sd = _trained_like(tiny_model)
    torch.save({"model": sd}, tmp_path / "w.pth")
    expected = ovseg.build_ovseg(tiny_model.config)  # random init, then an ordinary copy
    expected.load_state_dict(sd, strict=True)
    loaded = ovseg.build_model("ovseg-test-tiny", checkpoint=tmp_path / "w.pth")
    _assert_same_model(loaded, expected)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    assert torch.equal(loaded(image, ["a", "b"]), expected(image, ["a", "b"]))
    ovseg.save_checkpoint(expected, tmp_path / "w.safetensors")
    _assert_same_model(ovseg.load_checkpoint(tmp_path / "w.safetensors"), expected)
    # a state dict in another layout is loaded contiguous, as load_state_dict's copy would
    fresh = ovseg.build_ovseg(tiny_model.config, init=False)
    strided = {
        k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in sd.items()
    }
    ovseg.weights.checkpoints.load_official_state_dict(fresh, strided, assign=True)
    assert all(p.is_contiguous() for p in fresh.parameters())
    _assert_same_model(fresh, expected)


def test_converted_copy_is_written_used_and_invalidated(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    sd = _trained_like(tiny_model)
    source = tmp_path / "w.pth"
    torch.save({"model": sd}, source, _use_new_zipfile_serialization=False)  # legacy format
    copy, _ = converted_copy_path(source)
    assert not copy.exists()
    first = read_state_dict(source, cache=True)
    assert copy.is_file()
    second = read_state_dict(source, cache=True)
    for k in sd:
        assert torch.equal(first[k], sd[k]) and torch.equal(second[k], sd[k])

    # the copy is what the second read used: make it differ and read again
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(copy))
    key = next(iter(tensors))
    from safetensors import safe_open

    with safe_open(str(copy), framework="pt") as f:
        meta = f.metadata()
    save_file({**tensors, key: tensors[key] + 1}, str(copy), metadata=meta)
    assert torch.equal(read_state_dict(source, cache=True)[key], sd[key] + 1)

    # a changed source (new mtime) gets a new copy; the stale one is not used
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert converted_copy_path(source)[0] != copy
    assert torch.equal(read_state_dict(source, cache=True)[key], sd[key])

    # a damaged copy is ignored and rewritten
    fresh, _ = converted_copy_path(source)
    fresh.write_bytes(b"garbage")
    assert torch.equal(read_state_dict(source, cache=True)[key], sd[key])
    assert torch.equal(load_file(str(fresh))[key], sd[key])


def test_zip_format_pth_is_mapped_without_a_copy(tiny_model, tmp_path, monkeypatch):
    """torch.save's default (zip) format is memory-mapped: no second file is written, and the
    tensors are the file's (copy-on-write mapped pages, not a converted copy)."""
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    sd = _trained_like(tiny_model)
    source = tmp_path / "w.pth"
    torch.save({"model": sd}, source)
    got = read_state_dict(source, cache=True)
    assert not converted_copy_path(source)[0].exists()
    assert not (tmp_path / "home" / "converted").exists()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: every tensor's memory lies in a mapping of the file itself
        spans = [
            [int(a, 16) for a in line.split()[0].split("-")]
            for line in maps.read_text().splitlines()
            if line.endswith(str(source.resolve()))
        ]
        assert spans
        for tensor in got.values():
            if tensor.numel():
                ptr = tensor.data_ptr()
                assert any(lo <= ptr < hi for lo, hi in spans)


def test_cli_loader_keeps_the_copy_unless_told_not_to(tiny_model, tmp_path, monkeypatch):
    import argparse

    from ovseg.cli._common import add_model_args
    from ovseg.cli._spec import model_source

    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    legacy = {"_use_new_zipfile_serialization": False}
    torch.save({"model": tiny_model.state_dict()}, tmp_path / "w.pth", **legacy)
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    argv = ["--model", "ovseg-test-tiny", "--checkpoint", str(tmp_path / "w.pth")]
    model_source(parser.parse_args(argv + ["--no-weights-cache"])).load()
    assert not (tmp_path / "home" / "converted").exists()
    model_source(parser.parse_args(argv)).load()
    assert len(list((tmp_path / "home" / "converted").glob("*.safetensors"))) == 1


def test_timing_stages_add_up_by_name(monkeypatch):
    """``ovseg.timing``: each collect sees the stages entered inside it, summed by name."""
    from types import SimpleNamespace

    from ovseg import timing

    clock = iter(range(100))  # ovseg.timing's own clock only, not the time module's
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    with timing.collect() as outer:
        with timing.stage("read"):  # 0 -> 1
            pass
        with timing.collect() as inner:
            with timing.stage("read"):  # 2 -> 3
                pass
            with timing.stage("build"):  # 4 -> 5
                with timing.stage("read"):  # 5 -> 6 (nested: counted in both)
                    pass
        # build: 4 -> 7
    with timing.stage("read"):  # outside every collect: no effect
        pass
    assert outer == {"read": 3.0, "build": 3.0}
    assert inner == {"read": 2.0, "build": 3.0}


def test_a_stage_inside_itself_counts_once(monkeypatch):
    """read_state_dict calls itself for a legacy .pth's first cached read: one read, once."""
    from types import SimpleNamespace

    from ovseg import timing

    clock = iter(range(100))
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    with timing.collect() as stages:
        with timing.stage("read"):  # 0 -> 1 (the inner one reads no clock)
            with timing.stage("read"):
                pass
        with timing.stage("read"):  # 2 -> 3: counted again once the first has ended
            pass
    assert stages == {"read": 2.0}


def test_process_age_is_positive_and_grows():
    import time

    from ovseg.timing import process_age_s

    first = process_age_s()
    time.sleep(0.05)
    assert 0 < first < process_age_s()
