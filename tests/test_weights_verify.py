"""Every weights file a model is built from is checked against its pinned sha256, wherever it
was found (Hugging Face cache, mirror, $OVSEG_HOME), and the check is cached per file version."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from ovseg.weights import hub, verify
from ovseg.weights.hub import HubFile, ReleasedFile
from ovseg.weights.verify import ChecksumMismatch

DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
WRONG = b"planted: not the released file" * 100
WRONG_SHA = hashlib.sha256(WRONG).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _registry(sha256=SHA, md5_prefix=None) -> dict:
    sources = (HubFile("facebook/ov-seg", "w.pth", "space"), HubFile("someone/mirror", "w.pth"))
    return {"w": ReleasedFile("w.pth", sources, sha256, md5_prefix, "test", "MIT")}


def _plant(fake_hub, tmp_path, repo="facebook/ov-seg", repo_type="space", data=WRONG):
    """Fill the HF cache through the (stand-in) Hub with a file that is not the pinned one,
    as `hf download` would (the blob is named by the Hub's ETag, which we let match)."""
    from huggingface_hub import hf_hub_download

    fake_hub.add(repo, {"w.pth": data}, repo_type)
    return hf_hub_download(repo, "w.pth", repo_type=repo_type)


def test_wrong_file_in_the_hf_cache_is_refused_naming_the_sha256(fake_hub, tmp_path):
    path = _plant(fake_hub, tmp_path)
    with pytest.raises(ChecksumMismatch) as info:
        hub.find_cached("w", _registry())
    message = str(info.value)
    assert SHA in message and WRONG_SHA in message and str(path) in message
    assert "ovseg download w" in message
    assert hub.find_cached("w", _registry(), verify=False) is not None  # listing only


def test_wrong_file_in_ovseg_home_is_refused_and_a_good_mirror_copy_used(fake_hub, tmp_path, home):
    home.mkdir(parents=True)
    (home / "w.pth").write_bytes(WRONG)
    with pytest.raises(ChecksumMismatch, match=WRONG_SHA):
        hub.find_cached("w", _registry())
    good = _plant(fake_hub, tmp_path, "someone/mirror", "model", DATA)
    with pytest.warns(UserWarning, match=WRONG_SHA):
        assert str(hub.find_cached("w", _registry())) == good
    with pytest.raises(ChecksumMismatch, match="md5 mismatch"):
        hub.find_cached("w", _registry(sha256=None, md5_prefix="0" * 6))


def test_build_model_and_resolve_file_refuse_a_planted_released_file(fake_hub, tmp_path, capsys):
    """The registry's own names: a wrong file under the Swin-B checkpoint's name in the Hub
    cache, and under the CLIP's name in $OVSEG_HOME."""
    import ovseg
    from ovseg.weights.hub import REGISTRY, resolve_file

    entry = REGISTRY["ovseg-swinB-vitL14"]
    source = entry.sources[0]
    from huggingface_hub import hf_hub_download

    fake_hub.add(source.repo_id, {source.filename: WRONG}, source.repo_type)
    hf_hub_download(source.repo_id, source.filename, repo_type=source.repo_type)
    with pytest.raises(ChecksumMismatch) as info:
        ovseg.build_model("ovseg-swinB-vitL14")
    assert entry.sha256 in str(info.value) and WRONG_SHA in str(info.value)

    clip = REGISTRY["clip-vitB16"]
    home = hub.ovseg_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / clip.filename).write_bytes(WRONG)
    with pytest.raises(ChecksumMismatch, match=clip.sha256):
        resolve_file("clip-vitB16", "--clip")
    from PIL import Image

    from ovseg.cli import main

    Image.new("RGB", (32, 24)).save(tmp_path / "x.png")
    argv = ["segment", str(tmp_path / "x.png"), "--classes", "a", "--clip", "clip-vitB16"]
    assert main(argv + ["--proposals", "superpixels", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert clip.sha256 in err and WRONG_SHA in err


def test_the_check_is_cached_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "big.pth"
    path.write_bytes(DATA)
    reads = []
    real = verify._hash
    monkeypatch.setattr(verify, "_hash", lambda p, md5: reads.append(p) or real(p, md5))
    assert verify.verify_file(path, sha256=SHA) == SHA
    assert verify.verify_file(path, sha256=SHA) == SHA
    assert verify.file_sha256(path) == SHA
    assert len(reads) == 1  # hashed once
    verify.file_digests(path, md5=True)
    assert len(reads) == 2  # the md5 was not known yet
    assert verify.file_digests(path, md5=True)["md5"] == hashlib.md5(DATA).hexdigest()
    assert len(reads) == 2

    # the same bytes rewritten, the same size and mtime restored: still hashed again
    stat = path.stat()
    path.write_bytes(WRONG[: len(DATA)].ljust(len(DATA), b"x"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ChecksumMismatch):
        verify.verify_file(path, sha256=SHA)
    assert len(reads) == 3
    # a copy elsewhere is another file: hashed on its own
    shutil.copy(path, tmp_path / "copy.pth")
    verify.file_sha256(tmp_path / "copy.pth")
    assert len(reads) == 4
    assert len(list((verify.ovseg_home() / verify.FOLDER).iterdir())) == 2  # one per path


def test_hub_blob_is_checked_against_its_etag(fake_hub, tmp_path):
    path = _plant(fake_hub, tmp_path, data=DATA)
    assert verify.verify_hub_blob(path) == SHA
    blob = os.path.realpath(path)
    with open(blob, "r+b") as f:  # damaged in place after the download
        f.write(b"\0" * 16)
    with pytest.raises(ChecksumMismatch, match=SHA):
        verify.verify_hub_blob(path)
    small = tmp_path / "blobs" / verify.git_blob_sha1(_write(tmp_path / "c.json", b"{}"))
    small.parent.mkdir()
    small.write_bytes(b"{}")
    assert verify.verify_hub_blob(small) is None
    small.write_bytes(b"{1}")
    with pytest.raises(ChecksumMismatch, match="git blob sha1"):
        verify.verify_hub_blob(small)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
