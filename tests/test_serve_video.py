"""The service's granularity field and its short-video endpoint (``POST /segment-video``)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
av = pytest.importorskip("av")

from ovseg.serve import create_app  # noqa: E402
from tests.serve_helpers import FakePredictor, running_server  # noqa: E402
from tests.test_video import moving_frames, write_video  # noqa: E402


@pytest.fixture(scope="module")
def client():
    predictor = FakePredictor()
    app = create_app(predictor, max_upload_bytes=2_000_000, max_video_seconds=2.0)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        c.predictor = predictor
        yield c


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_granularity_field_reaches_the_predictor(client):
    files = {"image": ("x.png", _png(), "image/png")}
    answer = client.post("/segment", files=files, data={"classes": "a, b", "granularity": "0.35"})
    assert answer.status_code == 200
    assert client.predictor.options["granularity"] == 0.35
    for bad in ("1.5", "-0.1", "many"):
        data = {"classes": "a, b", "granularity": bad}
        answer = client.post("/segment", files=files, data=data)
        assert (
            answer.status_code == 400
            and "granularity must be a number in [0, 1]" in (answer.json()["error"])
        )
    assert client.get("/health").json()["max_video_seconds"] == 2.0


def test_granularity_in_eval_mode_is_a_400(tiny_model):
    import ovseg

    app = create_app(ovseg.Predictor(tiny_model))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        files = {"image": ("x.png", _png(), "image/png")}
        data = {"classes": "a, b", "mode": "eval", "granularity": "0.5"}
        answer = c.post("/segment", files=files, data=data)
    assert answer.status_code == 400
    assert "granularity selects masks in demo mode" in answer.json()["error"]


def test_video_upload_returns_the_overlay_video(client, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", moving_frames(6, 64, 48), rate=6)
    files = {"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    answer = client.post("/segment-video", files=files, data={"classes": "dark, mid, bright"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4" and answer.headers["x-frames"] == "6"
    with av.open(io.BytesIO(answer.content)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == Fraction(6)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)


def test_video_limits_and_bad_videos(client, tmp_path):
    long = write_video(tmp_path / "long.mp4", moving_frames(15, 32, 24), rate=5)  # 3 s
    files = {"video": ("long.mp4", long.read_bytes(), "video/mp4")}
    answer = client.post("/segment-video", files=files, data={"classes": "a"})
    assert answer.status_code == 413 and "at most 2 s" in answer.json()["error"]
    files = {"video": ("holiday.mp4", b"not a video at all" * 50, "video/mp4")}
    answer = client.post("/segment-video", files=files, data={"classes": "a"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith("holiday.mp4: corrupt or truncated") and "ovseg-video-" not in error
    answer = client.post(
        "/segment-video", files={"image": ("x.png", _png())}, data={"classes": "a"}
    )
    assert answer.status_code == 400 and "'video'" in answer.json()["error"]


def test_page_has_the_granularity_slider_and_takes_videos(client):
    page = client.get("/").text
    assert 'id="granularity" type="range"' in page and 'accept="image/*,video/*"' in page
    assert "segment-video" in page
