"""The service under hostile and awkward input: /health stays fast, uploads in progress count,
slow clients time out, every input error is a 4xx, the text cache stays bounded."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from ovseg.serve import create_app  # noqa: E402
from tests.serve_helpers import FakePredictor, free_port, running_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


GRADIENT = _png(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3)))


def _post(client, classes, image=GRADIENT, **data):
    return client.post(
        "/segment",
        files={"image": ("x.png", image, "image/png")},
        data={"classes": classes, **data},
    )


class _HealthProbe:
    """Measures ``GET /health`` latency in a thread while other requests run."""

    def __init__(self, url: str):
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                assert client.get("/health").status_code == 200
                self.latencies.append(time.perf_counter() - start)
                time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def _slow_upload(url: str, seconds: float, sent: threading.Event | None = None):
    """A client that announces a 1 MB multipart body and trickles it; returns the status
    line it gets (or what happened)."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="classes"\r\n\r\nsky\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: {1_000_000}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
            ).encode()
            + head
        )
        if sent is not None:
            sent.set()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                sock.sendall(b"\0" * 10)
                time.sleep(0.1)
            return sock.recv(200).decode(errors="replace").split("\r\n")[0]
        except OSError as error:  # the server answered and closed while we were sending
            try:
                return sock.recv(200).decode(errors="replace").split("\r\n")[0]
            except OSError:
                return f"closed: {error}"


@pytest.fixture
def fake_server():
    predictor = FakePredictor(delay_s=0.05)
    app = create_app(predictor, max_pending=3, upload_timeout_s=1.5, send_timeout_s=2)
    with running_server(app, header_timeout_s=1.0) as url:
        yield url, predictor


def test_a_1mb_vocabulary_is_refused_at_once_and_health_stays_fast(fake_server):
    url, _ = fake_server
    names = ", ".join(f"c{i}" for i in range(150_000))  # about 1 MB
    assert len(names) > 1_000_000
    with _HealthProbe(url) as probe, httpx.Client(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        response = _post(client, names)
        took = time.perf_counter() - start
    assert response.status_code == 413, response.text
    assert "'classes'" in response.json()["error"] and "65536" in response.json()["error"]
    assert took < 5.0  # the quadratic parser took 69.5 s for 0.9 MB
    assert probe.latencies and max(probe.latencies) < 1.0


def test_a_vocabulary_within_the_field_limit_is_parsed_in_linear_time():
    """110k names admitted by a generous field limit: counted and refused in well under a
    second of parsing, off the event loop."""
    app = create_app(FakePredictor(), max_classes_bytes=2_000_000, max_classes=1000)
    names = ", ".join(f"n{i}" for i in range(110_000))
    with (
        running_server(app) as url,
        _HealthProbe(url) as probe,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        start = time.perf_counter()
        response = _post(client, names)
        took = time.perf_counter() - start
    assert response.status_code == 400 and "110000 classes given" in response.json()["error"]
    assert took < 5.0 and max(probe.latencies) < 1.0


def test_slow_uploads_count_as_pending_time_out_and_leave_health_fast(fake_server):
    url, predictor = fake_server
    results: list[str] = []
    started = [threading.Event() for _ in range(3)]
    with _HealthProbe(url) as probe, httpx.Client(base_url=url, timeout=30) as client:
        threads = [
            threading.Thread(target=lambda e=e: results.append(_slow_upload(url, 4.0, e)))
            for e in started
        ]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(10)
        time.sleep(0.3)
        health = client.get("/health").json()
        assert health["pending"] == 3  # counted from acceptance, while uploading
        busy = _post(client, "sky")
        assert busy.status_code == 429  # refused at once, not queued behind the uploads
        assert "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        for t in threads:
            t.join(30)
        assert _post(client, "sky").status_code == 200  # slots freed by the timeouts
    assert len(results) == 3 and all(" 408 " in r for r in results), results
    assert max(probe.latencies) < 1.0
    assert predictor.calls == 1


def test_a_client_trickling_its_headers_is_disconnected(fake_server):
    url, _ = fake_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - start < 8:
                sock.sendall(b"X-Slow: 1\r\n")  # never ends the headers
                time.sleep(0.2)
            closed = False
        except OSError:
            closed = True
        if not closed:
            closed = sock.recv(100) == b""
    assert closed and time.monotonic() - start < 5


def test_a_client_that_does_not_read_its_response_is_let_go():
    import asyncio

    from ovseg.serve.limits import SendTimeout

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 10})

    async def never_taken(message):
        await asyncio.sleep(3600)  # the transport's buffer never drains

    async def run():
        start = time.monotonic()
        await SendTimeout(app, timeout_s=0.2)({"type": "http"}, None, never_taken)
        return time.monotonic() - start

    assert asyncio.run(run()) < 2


@pytest.fixture(scope="module")
def tiny_server(tiny_model, tmp_path_factory):
    """The tiny model behind the service, its text cache in a fresh folder with a 64 KiB
    bound."""
    import ovseg
    from ovseg.inference.options import InferenceOptions

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("OVSEG_HOME")
    os.environ["OVSEG_HOME"] = str(home)
    try:
        options = InferenceOptions(text_cache_max_mb=0.0625)
        predictor = ovseg.Predictor(tiny_model, options=options)
        app = create_app(predictor, predict_options={"mode": "demo"})
        with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield client, predictor
    finally:
        if old is None:
            del os.environ["OVSEG_HOME"]
        else:
            os.environ["OVSEG_HOME"] = old


def _image(shape) -> bytes:
    return _png(np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8))


def _raw(client, body: bytes, content_type: str):
    return client.post("/segment", content=body, headers={"content-type": content_type})


def _multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        file = f'; filename="{filename}"' if filename else ""
        out += f'--B\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode()
        out += data + b"\r\n"
    return out + b"--B--\r\n"


AWKWARD = [
    ("case repeats", {"classes": "sky, Sky"}, 200, "merged 1 repeated"),
    ("spacing repeats", {"classes": "big dog, big  dog, Big Dog"}, 200, "merged 2"),
    ("others alone, demo", {"classes": "others"}, 400, "'others' alone cannot be segmented"),
    ("others alone, OTHERS", {"classes": "OTHERS"}, 400, "'others' alone"),
    ("others alone, eval", {"classes": "others", "mode": "eval"}, 200, ""),
    ("others beside a name", {"classes": "sky, others"}, 200, ""),
    ("1x3000", {"classes": "sky, tree", "image": (1, 3000)}, 200, ""),
    ("3000x1", {"classes": "sky", "image": (3000, 1)}, 200, ""),
    ("1x1", {"classes": "sky", "image": (1, 1)}, 200, ""),
    ("2x5000 eval", {"classes": "sky, road", "image": (2, 5000), "mode": "eval"}, 200, ""),
    ("one long name", {"classes": "x" * 201}, 400, "longer than 200"),
    ("unicode", {"classes": "ciel, 木, 🌲"}, 200, ""),
    ("bad mode", {"classes": "sky", "mode": "eval; drop"}, 400, "'mode'"),
    ("huge mode", {"classes": "sky", "mode": "e" * 5000}, 413, "'mode'"),
]


@pytest.mark.parametrize("name, form, status, words", AWKWARD, ids=[a[0] for a in AWKWARD])
def test_awkward_inputs_get_4xx_or_200_never_5xx(tiny_server, name, form, status, words):
    client, _ = tiny_server
    form = dict(form)
    shape = form.pop("image", (40, 56))
    response = _post(client, image=_image(shape), **form)
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:
        assert (body["height"], body["width"]) == tuple(shape)
        assert words in " ".join(body.get("notices", []))
    else:
        assert words in body["error"]


MALFORMED = [
    ("json body", b"{}", "application/json", 400, "multipart/form-data"),
    ("no boundary", b"x", "multipart/form-data", 400, "boundary"),
    ("empty body", b"", "multipart/form-data; boundary=B", 400, "'image'"),
    ("garbage", b"\0\xff" * 500, "multipart/form-data; boundary=B", 400, ""),
    (
        "repeated field",
        _multipart(("classes", None, b"a"), ("classes", None, b"b")),
        "multipart/form-data; boundary=B",
        400,
        "twice",
    ),
    (
        "unknown field",
        _multipart(("classes", None, b"a"), ("evil", None, b"b")),
        "multipart/form-data; boundary=B",
        400,
        "unknown form field",
    ),
    (
        "image as text",
        _multipart(("classes", None, b"a"), ("image", None, b"b")),
        "multipart/form-data; boundary=B",
        400,
        "must be a file",
    ),
    (
        "classes not utf-8",
        _multipart(("classes", None, b"\xff\xfe"), ("image", "a.png", GRADIENT)),
        "multipart/form-data; boundary=B",
        400,
        "UTF-8",
    ),
    (
        "many parts",
        _multipart(*[(f"f{i}", None, b"1") for i in range(20)]),
        "multipart/form-data; boundary=B",
        400,
        "",
    ),
]


@pytest.mark.parametrize(
    "name, body, content_type, status, words", MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_bodies_get_4xx(tiny_server, name, body, content_type, status, words):
    client, _ = tiny_server
    response = _raw(client, body, content_type)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_many_new_vocabularies_keep_the_text_cache_bounded(tiny_server):
    from ovseg.modeling.text_cache import folder_bytes

    client, predictor = tiny_server
    clip = predictor.model.clip_adapter
    for i in range(30):
        names = ", ".join(f"w{i}x{k}" for k in range(12))
        assert _post(client, names, image=_image((24, 32))).status_code == 200
        assert folder_bytes(clip.text_cache_dir) <= 65536
        assert clip._text_cache.nbytes <= 65536
    assert len(list(clip.text_cache_dir.iterdir())) < 30


def test_a_bug_is_a_500_and_only_a_bug():
    class Broken(FakePredictor):
        def predict(self, class_names, **options):
            raise RuntimeError("boom")

    with (
        running_server(create_app(Broken())) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        response = _post(client, "sky")
    assert response.status_code == 500 and "bug" in response.json()["error"]
    assert "boom" not in response.text  # details stay in the log


def test_ovseg_serve_command_end_to_end(tmp_path):
    """`ovseg serve` itself: flags reach the service; awkward inputs, a 1 MB vocabulary and a
    text-cache bound, with /health fast throughout."""
    port = free_port()
    env = {**os.environ, "OVSEG_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ovseg", "serve", "--model", "ovseg-test-tiny"]
    cmd += ["--port", str(port), "--text-cache-max-mb", "0.0625", "--upload-timeout", "2"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 240
            while True:
                try:
                    health = client.get("/health").json()
                    break
                except httpx.TransportError:
                    assert server.poll() is None, server.stdout.read().decode()[-2000:]
                    assert time.monotonic() < deadline
                    time.sleep(0.5)
            assert health["upload_timeout_s"] == 2
            with _HealthProbe(url) as probe:
                big = ", ".join(f"c{i}" for i in range(150_000))
                assert _post(client, big).status_code == 413
                assert " 408 " in _slow_upload(url, 4.0)
                assert _post(client, "sky, Sky", image=_image((1, 3000))).status_code == 200
                assert _post(client, "others").status_code == 400
                for i in range(12):
                    names = ", ".join(f"v{i}y{k}" for k in range(12))
                    assert _post(client, names, image=_image((24, 32))).status_code == 200
            assert max(probe.latencies) < 1.0
        folder = tmp_path / "home" / "text-features"
        used = sum(p.stat().st_blocks * 512 for p in folder.iterdir())
        assert 0 < used <= 65536
    finally:
        server.terminate()
        server.wait(30)


def test_health_reports_the_limits(fake_server):
    url, _ = fake_server
    health = httpx.get(url + "/health").json()
    for key in ("max_classes_bytes", "upload_timeout_s", "send_timeout_s", "pending"):
        assert key in health
    assert json.dumps(health)
