"""Local stand-ins on 127.0.0.1: a Hugging Face Hub and a plain file server (tests only).

``FakeHub`` answers the two requests ``hf_hub_download`` makes (huggingface_hub 2.x,
``file_download.py``): ``HEAD /{prefix}{repo}/resolve/{rev}/{file}`` with the headers it reads
(``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag`` = the sha256 as for an LFS file,
``X-Linked-Size``, ``Content-Length``), then ``GET`` of the same URL with HTTP Range support.
Unknown repositories and files get 404 with the Hub's ``X-Error-Code``. ``patch_hub`` points the
imported ``huggingface_hub.constants`` at it (``HF_ENDPOINT`` is read once, at import).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.cut_after: int | None = None  # the next GET sends only this many bytes, then drops
        self.honour_range = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> _Server:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def gets(self) -> list[tuple[str, str | None]]:
        """(path, Range) of each file GET."""
        return [
            (p, rng) for method, p, rng in self.requests if method == "GET" and "/api/" not in p
        ]

    def methods(self) -> list[str]:
        """HEAD/GET of each file request (the Hub's API calls left out)."""
        return [method for method, p, _ in self.requests if "/api/" not in p]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def lookup(self) -> tuple[bytes | None, dict[str, str]]:
        raise NotImplementedError

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body: bool) -> None:
        server: _Server = self.server
        rng = self.headers.get("Range")
        server.requests.append((self.command, self.path, rng))
        body, headers = self.lookup()
        if body is None:
            self.send_response(404)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if rng and server.honour_range and send_body:
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
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not send_body:
            return
        if server.cut_after is not None:
            self.wfile.write(payload[: server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


class _HubHandler(_Handler):
    def lookup(self):
        server: FakeHub = self.server
        repo, sep, rest = self.path.split("?")[0].lstrip("/").partition("/resolve/")
        if not sep or repo not in server.repos:
            return None, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        revision, _, filename = rest.partition("/")
        commit, files = server.revisions.get((repo, revision), (COMMIT, server.repos[repo]))
        if filename not in files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            return None, headers | {"X-Error-Message": "Entry not found"}
        body = files[filename]
        etag = server.etags.get((repo, filename), hashlib.sha256(body).hexdigest())
        return body, {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "X-Linked-Etag": f'"{etag}"',
            "X-Linked-Size": str(len(body)),
        }


class FakeHub(_Server):
    """A Hub on 127.0.0.1: ``add(repo_id, files, repo_type)`` makes a repository; with
    ``revision`` (a branch or tag name) the files are that revision's (its own commit), and
    any other revision serves the repository's default files."""

    def __init__(self):
        super().__init__(_HubHandler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.etags: dict[tuple[str, str], str] = {}
        self.revisions: dict[tuple[str, str], tuple[str, dict[str, bytes]]] = {}

    def add(
        self,
        repo_id: str,
        files: dict[str, bytes],
        repo_type: str = "model",
        revision: str | None = None,
    ) -> None:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if revision is None:
            self.repos[prefix + repo_id] = dict(files)
            return
        self.repos.setdefault(prefix + repo_id, {})
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        self.revisions[(prefix + repo_id, revision)] = (commit, dict(files))

    def add_folder(self, repo_id: str, folder: Path, revision: str | None = None) -> None:
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        self.add(repo_id, files, revision=revision)


class _FileHandler(_Handler):
    def lookup(self):
        body = self.server.files.get(self.path)
        return body, {}


class FileServer(_Server):
    """A plain HTTP server: ``files[path] = bytes``."""

    def __init__(self):
        super().__init__(_FileHandler)
        self.files: dict[str, bytes] = {}


def patch_hub(monkeypatch, hub: FakeHub, cache: Path, offline: bool = False) -> None:
    """Point huggingface_hub (already imported) at ``hub`` with ``cache`` as ``HF_HUB_CACHE``."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    # huggingface_hub also fetches /api/agent-harnesses once a day (user-agent detection) and
    # caches the answer under HF_HOME: keep that inside the test's folder too.
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(cache / ".agent_harnesses.json"))
