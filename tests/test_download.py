"""``ovseg.hub.download`` against an HTTP server on 127.0.0.1 that serves files the test made."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading

import pytest

from ovseg import hub
from ovseg.hub import DownloadError, ReleasedFile, download

DATA = os.urandom(300_000)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {"/weights.bin": DATA}
        self.cut_after: int | None = None  # the next GET sends only this many bytes, then drops
        self.ranges: list[str | None] = []  # Range header of every GET, in order
        self.honour_range = True


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server: _Server = self.server
        body = server.files.get(self.path)
        server.ranges.append(self.headers.get("Range"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range") if server.honour_range else None
        if path_is_html := self.path.endswith(".html"):
            body = b"<html>please sign in</html>"
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header(
            "Content-Type", "text/html" if path_is_html else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(payload[: server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _registry(server, path="/weights.bin", sha256=None, md5_prefix=None, known=True) -> dict:
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    if known and sha256 is None:
        sha256 = hashlib.sha256(DATA).hexdigest()
    return {"w": ReleasedFile("weights.bin", (url,), sha256, md5_prefix, "test file")}


def test_good_download_is_cached(server, home):
    path = download("w", progress=False, registry=_registry(server))
    assert path == home / "weights.bin"
    assert path.read_bytes() == DATA
    assert not (home / "weights.bin.part").exists()
    assert download("w", progress=False, registry=_registry(server)) == path
    assert server.ranges == [None]  # the second call did not touch the network


def test_bad_sha256_is_refused_and_removed(server, home):
    with pytest.raises(DownloadError, match="sha256 mismatch for http://127.0.0.1"):
        download("w", progress=False, registry=_registry(server, sha256="0" * 64))
    assert not (home / "weights.bin").exists()
    assert not (home / "weights.bin.part").exists()


def test_cut_off_transfer_resumes_on_next_call(server, home):
    server.cut_after = 100_000
    with pytest.raises(DownloadError, match="the next try resumes it"):
        download("w", progress=False, retries=0, registry=_registry(server))
    assert (home / "weights.bin.part").stat().st_size == 100_000
    assert not (home / "weights.bin").exists()

    path = download("w", progress=False, retries=0, registry=_registry(server))
    assert path.read_bytes() == DATA
    assert server.ranges == [None, "bytes=100000-"]


def test_cut_off_transfer_resumes_within_one_call(server):
    server.cut_after = 123_456
    path = download("w", progress=False, retries=2, registry=_registry(server))
    assert path.read_bytes() == DATA
    assert server.ranges == [None, "bytes=123456-"]


def test_complete_part_file_is_not_fetched_again(server, home):
    home.mkdir(parents=True)
    (home / "weights.bin.part").write_bytes(DATA)
    path = download("w", progress=False, registry=_registry(server))
    assert path.read_bytes() == DATA
    assert server.ranges == [f"bytes={len(DATA)}-"]  # answered 416 "bytes */N": already complete


def test_server_ignoring_range_restarts_cleanly(server, home):
    server.cut_after = 50_000
    server.honour_range = False
    path = download("w", progress=False, retries=1, registry=_registry(server))
    assert path.read_bytes() == DATA  # the 200 answer replaced the part instead of appending


def test_html_page_instead_of_the_file(server, home):
    server.files["/page.html"] = b""
    with pytest.raises(DownloadError, match="web page instead of the file"):
        download("w", progress=False, registry=_registry(server, path="/page.html"))
    assert server.ranges == [None]


def test_404_names_the_url_and_what_to_do(server, home):
    with pytest.raises(DownloadError) as info:
        download("w", progress=False, registry=_registry(server, path="/missing.bin"))
    message = str(info.value)
    assert "/missing.bin: HTTP 404" in message
    assert "offline" in message and "--checkpoint" in message
    assert server.ranges == [None]  # a 404 is not retried
    assert not (home / "weights.bin").exists()


def test_unreachable_server_says_what_to_do_offline():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    entry = ReleasedFile("x.bin", (f"http://127.0.0.1:{port}/x.bin",), None, None, "")
    with pytest.raises(DownloadError, match="If this machine is offline"):
        download("x", progress=False, retries=1, registry={"x": entry})


def test_unpublished_sha256_is_recorded_then_enforced(server, home):
    registry = _registry(server, known=False)
    download("w", progress=False, registry=registry)
    record = (home / "weights.bin.sha256").read_text().split()[0]
    assert record == hashlib.sha256(DATA).hexdigest()

    server.files["/weights.bin"] = DATA[::-1]  # the mirror now serves a different file
    with pytest.raises(DownloadError, match="recorded in"):
        download("w", progress=False, force=True, registry=registry)


def test_md5_prefix_is_checked(server):
    good = hashlib.md5(DATA).hexdigest()[:6]
    download("w", progress=False, registry=_registry(server, known=False, md5_prefix=good))
    bad = "zzzzzz"
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download("w", progress=False, force=True, registry=_registry(server, md5_prefix=bad))


def test_registry_is_well_formed():
    for name, entry in hub.REGISTRY.items():
        assert entry.urls and all(u.startswith("https://") for u in entry.urls), name
        if entry.sha256 is not None:
            assert len(entry.sha256) == 64 and entry.sha256 in entry.urls[0], name
        else:
            assert entry.md5_prefix, f"{name}: no checksum published at all"
    assert set(hub.RELEASED_FILES) <= set(hub.REGISTRY)


def test_find_cached(home):
    assert hub.find_cached("ovseg-swinB-vitL14") is None
    home.mkdir(parents=True)
    (home / "ovseg_swinbase_vitL14_ft_mpt.pth").write_bytes(b"x")
    assert hub.find_cached("ovseg-swinB-vitL14") == home / "ovseg_swinbase_vitL14_ft_mpt.pth"
    assert hub.find_cached("no-such-model") is None


def test_download_command(server, home, monkeypatch, capsys):
    from ovseg.cli import main

    monkeypatch.setattr(hub, "REGISTRY", _registry(server))
    assert main(["download", "w"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "weights.bin")
    assert main(["download", "--list"]) == 0
    assert "cached" in capsys.readouterr().out
    assert main(["download", "nope"]) == 2
    assert "unknown name" in capsys.readouterr().err
