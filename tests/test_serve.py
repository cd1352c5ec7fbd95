"""The web service: answers, limits, the bounded queue and bad inputs."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from ovseg.serve import create_app  # noqa: E402
from tests.serve_helpers import FakePredictor, running_server  # noqa: E402


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    return np.stack([ramp, ramp, ramp], axis=-1).astype(np.uint8)


def _noise(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client():
    predictor = FakePredictor()
    app = create_app(
        predictor, max_upload_bytes=300_000, max_pixels=1_000_000, max_class_pixels=10_000_000
    )
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        c.predictor = predictor
        yield c


def _post(client, data: bytes | None, classes: str | None = "dark, mid, bright", **extra):
    files = {"image": ("x.png", data, "image/png")} if data is not None else None
    form = {"classes": classes} if classes is not None else {}
    return client.post("/segment", files=files, data=form, **extra)


def test_health_and_page(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="legend"' in page.text and 'id="classes"' in page.text


def test_segment_returns_json_masks_and_images(client):
    image = _gradient()
    response = _post(client, _png(image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["height"], body["width"]) == (48, 64)
    assert body["class_names"] == ["dark", "mid", "bright"]
    assert len(body["colors"]) == 3 and all(c.startswith("#") for c in body["colors"])
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_map_png"]))))
    assert labels.shape == (48, 64)
    assert sorted(s["id"] for s in body["segments"]) == [0, 1, 2]
    for segment in body["segments"]:
        rle = dict(segment["rle"], counts=segment["rle"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(mask, labels == segment["id"])
        assert (
            segment["area"] == mask.sum() and segment["label"] == body["class_names"][segment["id"]]
        )
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.height == 48 and overlay.width > 64  # legend to the right


@pytest.mark.parametrize("kind", ["fake", "tiny"])
def test_32_concurrent_requests_get_200_or_429_only(kind, request):
    if kind == "fake":
        predictor = FakePredictor(delay_s=0.1)
    else:
        import ovseg

        predictor = ovseg.Predictor(request.getfixturevalue("tiny_model"))
    app = create_app(predictor, max_pending=4)
    data = _png(_noise(96, 128))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: _post(c, data).status_code, range(32)))
        assert set(codes) <= {200, 429}, codes
        assert codes.count(200) >= 1, codes
        if kind == "fake":  # 0.1 s per request: 32 at once cannot all fit in a queue of 4
            assert codes.count(429) >= 1, codes
            assert predictor.calls == codes.count(200)
        again = _post(c, data)  # the queue drained: served again
        assert again.status_code == 200


@pytest.mark.parametrize(
    "data, classes, status, words",
    [
        (b"this is not an image at all", "a, b", 415, "not an image"),
        (b"", "a, b", 400, "empty"),
        (_png(_noise())[:3000], "a, b", 400, "corrupt or truncated"),
        (_png_header_only(30_000, 30_000), "a, b", 413, "pixels"),
        (_png(np.zeros((1100, 1000, 3), np.uint8)), "a", 413, "1100000 pixels"),
        (
            _png(np.zeros((500, 500, 3), np.uint8)),
            ", ".join(f"c{i}" for i in range(41)),
            413,
            "for 41 classes",
        ),
        (_png(_gradient()), "", 400, "empty vocabulary"),
        (_png(_gradient()), " , ;  ,", 400, "empty vocabulary"),
        (_png(_gradient()), None, 400, "empty vocabulary"),
        (None, "a, b", 400, "'image'"),
    ],
    ids=[
        "text-file",
        "empty-file",
        "truncated-png",
        "decompression-bomb",
        "too-many-pixels",
        "too-many-class-pixels",
        "empty-classes",
        "only-separators",
        "no-classes-field",
        "no-image-field",
    ],
)
def test_bad_inputs_get_clear_4xx(client, data, classes, status, words):
    response = _post(client, data, classes)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_too_large_body_gets_413(client):
    response = _post(client, b"\0" * 400_000)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_too_large_streamed_body_gets_413(client):
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():  # no Content-Length: the server must count the bytes itself
        yield head
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post(
        "/segment",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413


def test_not_multipart_gets_400(client):
    response = client.post("/segment", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_image_modes_are_converted(client):
    gray16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    rgba = np.dstack([_gradient(), np.full((48, 64), 128, np.uint8)])
    for array in (gray16, rgba, _gradient()[..., 0]):
        response = _post(client, _png(array), "a, b")
        assert response.status_code == 200, response.text
        assert (response.json()["height"], response.json()["width"]) == (48, 64)


def test_mode_field_reaches_the_predictor_and_bad_modes_get_400():
    predictor = FakePredictor()
    app = create_app(predictor, predict_options={"mode": "demo", "ensemble_weight": 0.2})
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert _post(c, _png(_gradient())).status_code == 200
        assert predictor.options == {"mode": "demo", "ensemble_weight": 0.2}
        response = c.post(
            "/segment",
            files={"image": ("x.png", _png(_gradient()), "image/png")},
            data={"classes": "a, b", "mode": "eval"},
        )
        assert response.status_code == 200
        assert predictor.options == {"mode": "eval", "ensemble_weight": 0.2}
        response = c.post(
            "/segment",
            files={"image": ("x.png", _png(_gradient()), "image/png")},
            data={"classes": "a, b", "mode": "fast"},
        )
        assert response.status_code == 400 and "'mode'" in response.json()["error"]
        health = c.get("/health").json()
        assert health["mode"] == "demo" and health["random_weights"] is False


def test_page_shows_model_mode_random_weights_and_unlabelled(tiny_model):
    """The tiny model in demo mode: the API reports the random weights and the unlabelled
    pixels; the page has the elements that show them (the browser test drives them)."""
    import ovseg

    assert tiny_model.random_weights  # built without a checkpoint
    app = create_app(
        ovseg.Predictor(tiny_model),
        model_name="ovseg-test-tiny",
        predict_options={"mode": "demo", "mask_threshold": 0.6},
        random_weights=tiny_model.random_weights,
    )
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        health = c.get("/health").json()
        assert health["model"] == "ovseg-test-tiny" and health["mode"] == "demo"
        assert health["random_weights"] is True
        page = c.get("/").text
        for element in ('id="model-name"', 'id="model-mode"', 'id="random-warning"'):
            assert element in page
        assert "random" in page and '"unlabelled"' in page and 'id="mode"' in page
        body = _post(c, _png(_noise()), "cat").json()
        assert body["mode"] == "demo" and body["class_names"] == ["cat", "others"]
        labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_map_png"]))))
        assert body["unlabelled"]["value"] == 255
        assert body["unlabelled"]["area"] == int((labels == 255).sum())
        assert all(0.0 <= s["score"] <= 1.0 for s in body["segments"])
