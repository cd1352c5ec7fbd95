"""``ovseg.weights.hub.download`` against local stand-ins on 127.0.0.1: a Hugging Face Hub (files fetched
with huggingface_hub) and a plain HTTP server (URLs fetched with gdown)."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from ovseg.weights import hub
from ovseg.weights.hub import DownloadError, HubFile, ReleasedFile, download
from tests.hub_server import COMMIT, FileServer, patch_hub

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
SPACE = HubFile("facebook/ov-seg", "weights.pth", "space")
MIRROR = HubFile("someone/mirror", "weights.pth")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def files(monkeypatch):
    # gdown writes in 512 KiB chunks; bytes of a chunk cut short are not kept. Smaller chunks
    # make the resume points of these 300 kB transfers visible.
    import importlib

    monkeypatch.setattr(importlib.import_module("gdown.download"), "CHUNK_SIZE", 50_000)
    server = FileServer().start()
    server.files["/weights.pth"] = DATA
    yield server
    server.stop()


def _hub_registry(sha256=SHA, md5_prefix=None) -> dict:
    entry = ReleasedFile("weights.pth", (SPACE, MIRROR), sha256, md5_prefix, "test", "MIT")
    return {"w": entry}


def _url_registry(server, path="/weights.pth", sha256=SHA, md5_prefix=None) -> dict:
    entry = ReleasedFile("weights.pth", (server.url + path,), sha256, md5_prefix, "test", "MIT")
    return {"w": entry}


# ---- Hub files: huggingface_hub into the Hugging Face cache -----------------------------------


def test_hub_download_lands_in_the_hf_cache(fake_hub, tmp_path):
    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA}, "space")
    path = download("w", progress=False, registry=_hub_registry())
    expected = tmp_path / "hf" / "spaces--facebook--ov-seg" / "snapshots" / COMMIT / "weights.pth"
    assert path == expected and path.read_bytes() == DATA
    assert os.path.basename(os.path.realpath(path)) == SHA  # the blob is named by its etag
    assert hub.find_cached("w", _hub_registry()) == path
    assert fake_hub.methods() == ["HEAD", "GET"]

    fake_hub.requests.clear()
    assert download("w", progress=False, registry=_hub_registry()) == path
    assert fake_hub.methods() == ["HEAD"]  # cached: no transfer


def test_hub_file_with_wrong_sha256_is_refused_and_deleted(fake_hub, tmp_path):
    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA[::-1]}, "space")
    with pytest.raises(DownloadError) as info:
        download("w", progress=False, registry=_hub_registry())
    message = str(info.value)
    line = next(ln for ln in message.splitlines() if "hf://spaces/facebook/ov-seg" in ln)
    assert "sha256 mismatch" in line and SHA in line
    assert hashlib.sha256(DATA[::-1]).hexdigest() in line
    assert "hf://someone/mirror/weights.pth@main: HTTP 404" in message
    assert "HF_HUB_OFFLINE=1" in message and "--checkpoint" in message
    blobs = list((tmp_path / "hf" / "spaces--facebook--ov-seg" / "blobs").iterdir())
    assert blobs == []  # the bad blob was removed
    assert hub.find_cached("w", _hub_registry()) is None


def test_mirror_is_used_when_the_first_source_fails(fake_hub):
    fake_hub.add("someone/mirror", {"weights.pth": DATA})  # no space at all: 404
    path = download("w", progress=False, registry=_hub_registry())
    assert "models--someone--mirror" in str(path) and path.read_bytes() == DATA

    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA[:-1]}, "space")  # corrupt first source
    path = download("w", progress=False, force=True, registry=_hub_registry())
    assert "models--someone--mirror" in str(path) and path.read_bytes() == DATA


def test_interrupted_hub_transfer_resumes_with_a_range_request(fake_hub, monkeypatch):
    # huggingface_hub writes in 10 MiB chunks and resumes after the last whole chunk; smaller
    # chunks make that visible on a 300 kB file.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 50_000)
    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA}, "space")
    fake_hub.cut_after = 100_000
    path = download("w", progress=False, registry=_hub_registry())
    assert path.read_bytes() == DATA
    ranges = [rng for _, rng in fake_hub.gets()]
    assert ranges == [None, "bytes=100000-"]


def test_offline_mode_uses_the_cache_and_says_so_when_it_cannot(fake_hub, tmp_path, monkeypatch):
    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA}, "space")
    path = download("w", progress=False, registry=_hub_registry())
    patch_hub(monkeypatch, fake_hub, tmp_path / "hf", offline=True)
    fake_hub.requests.clear()
    assert download("w", progress=False, registry=_hub_registry()) == path
    assert fake_hub.methods() == []

    url = "http://127.0.0.1:9/x.pth"  # never asked: offline mode covers URL sources too
    other = {"x": ReleasedFile("x.pth", (HubFile("a/b", "x.pth"), url), SHA, None, "", "MIT")}
    with pytest.raises(
        DownloadError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE"
    ) as info:
        download("x", progress=False, registry=other)
    assert "http://127.0.0.1:9/x.pth: skipped: HF_HUB_OFFLINE is set" in str(info.value)
    assert fake_hub.methods() == []


def test_hand_copied_file_in_ovseg_home_is_used(fake_hub, home):
    home.mkdir(parents=True)
    (home / "weights.pth").write_bytes(DATA)
    assert download("w", progress=False, registry=_hub_registry()) == home / "weights.pth"
    assert hub.find_cached("w", _hub_registry()) == home / "weights.pth"
    assert fake_hub.methods() == []


# ---- URL files: gdown into OVSEG_HOME ---------------------------------------------------------


def test_url_download(files, home):
    path = download("w", progress=False, registry=_url_registry(files))
    assert path == home / "weights.pth" and path.read_bytes() == DATA
    assert sorted(p.name for p in home.iterdir() if p.name != "verified") == ["weights.pth"]
    assert download("w", progress=False, registry=_url_registry(files)) == path
    assert len(files.gets()) == 1  # the second call did not touch the network


def test_cut_off_url_transfer_resumes_on_the_next_call(files, home):
    files.cut_after = 100_000
    with pytest.raises(DownloadError, match="the next try resumes it"):
        download("w", progress=False, retries=0, registry=_url_registry(files))
    parts = list(home.glob("weights.pth.download*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == 100_000

    path = download("w", progress=False, retries=0, registry=_url_registry(files))
    assert path.read_bytes() == DATA
    # gdown opens with a plain GET (Google Drive's confirmation step), then asks for the rest
    assert [rng for _, rng in files.gets()][-1] == "bytes=100000-"
    assert not list(home.glob("*.part"))


def test_cut_off_url_transfer_resumes_within_one_call(files):
    files.cut_after = 123_456
    path = download("w", progress=False, retries=2, registry=_url_registry(files))
    assert path.read_bytes() == DATA
    assert [rng for _, rng in files.gets()] == [None, "bytes=100000-"]  # after 2 whole chunks


def test_url_file_with_wrong_sha256_is_removed(files, home):
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download("w", progress=False, registry=_url_registry(files, sha256="0" * 64))
    assert [p for p in home.iterdir() if p.name != "verified"] == []


def test_unpublished_sha256_is_recorded_then_enforced(files, home):
    md5 = hashlib.md5(DATA).hexdigest()[:6]
    registry = _url_registry(files, sha256=None, md5_prefix=md5)
    download("w", progress=False, registry=registry)
    assert (home / "weights.pth.sha256").read_text().split()[0] == SHA

    files.files["/weights.pth"] = DATA[::-1]  # the source now serves a different file
    with pytest.raises(DownloadError, match="recorded in"):
        download("w", progress=False, force=True, registry=registry)


def test_md5_prefix_is_checked(files):
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download("w", progress=False, registry=_url_registry(files, sha256=None, md5_prefix="zz"))


def test_unreachable_server_says_what_to_do_offline(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    entry = ReleasedFile("x.bin", (f"http://127.0.0.1:{port}/x.bin",), SHA, None, "", "MIT")
    with pytest.raises(DownloadError, match="If this machine is offline") as info:
        download("x", progress=False, retries=0, registry={"x": entry})
    assert str(home / "x.bin") in str(info.value)


def _unresolvable_hub(monkeypatch, cache=None):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    template = "http://hub.invalid/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if cache is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_unresolvable_hosts_give_the_offline_advice_within_seconds(home, tmp_path, monkeypatch):
    """No source's host resolves (a machine without network): no retries, the advice at
    once (huggingface_hub alone retried for about a minute)."""
    import time

    _unresolvable_hub(monkeypatch, tmp_path / "hf")
    sources = (HubFile("a/b", "x.bin"), "https://files.invalid/x.bin")
    entry = ReleasedFile("x.bin", sources, SHA, None, "", "MIT")
    start = time.monotonic()
    with pytest.raises(DownloadError, match="If this machine is offline") as info:
        download("x", progress=False, registry={"x": entry})
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "cannot resolve hub.invalid" in message and "cannot resolve files.invalid" in message


def test_unresolvable_hub_still_serves_a_checked_cached_file(fake_hub, tmp_path, monkeypatch):
    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA}, "space")
    path = download("w", progress=False, registry=_hub_registry())
    _unresolvable_hub(monkeypatch)
    assert download("w", progress=False, registry=_hub_registry()) == path
    path.unlink()  # the link; the blob stays, but the file is gone from the snapshot
    with pytest.raises(DownloadError, match="cannot resolve hub.invalid"):
        download("w", progress=False, registry=_hub_registry())


# ---- the registry and the command --------------------------------------------------------------


def test_registry_is_well_formed():
    for name, entry in hub.REGISTRY.items():
        assert entry.sources, name
        assert entry.sha256 or entry.md5_prefix, f"{name}: no checksum at all"
        assert entry.license in hub.LICENSE_URLS, name
        for source in entry.sources:
            if isinstance(source, HubFile):
                assert entry.sha256, f"{name}: Hub files have a pinned sha256 (LFS metadata)"
                assert source.filename == entry.filename
            else:
                assert source.startswith("https://"), name
        if entry.md5_prefix and "_" in entry.filename:
            stem = entry.filename.rsplit(".", 1)[0]
            if stem.startswith("sam_"):  # SAM's names end with the md5 prefix
                assert stem.endswith(entry.md5_prefix), name
    for name in hub.RELEASED_FILES:
        assert hub.REGISTRY[name].license == "CC BY-NC 4.0"
    assert hub.REGISTRY["ovseg-clip-vitL14"].license == "CC BY-NC 4.0"


def test_find_cached_without_anything(home, fake_hub):
    assert hub.find_cached("ovseg-swinB-vitL14") is None
    assert hub.find_cached("no-such-model") is None


def test_download_command(fake_hub, home, monkeypatch, capsys):
    from ovseg.cli import main

    fake_hub.add("facebook/ov-seg", {"weights.pth": DATA}, "space")
    monkeypatch.setattr(hub, "REGISTRY", _hub_registry())
    assert main(["download", "w"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"snapshots/{COMMIT}/weights.pth")
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "cached" in listing and "MIT" in listing
    assert main(["download", "nope"]) == 2
    assert "unknown name" in capsys.readouterr().err


def test_list_states_the_weights_licence(capsys, home, fake_hub):
    from ovseg.cli import main

    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "CC BY-NC 4.0" in out and "non-commercial" in out and "MIT" in out
