"""Video input: videos made here with PyAV (shapes moving on a real photo) through
``ovseg segment``; outputs decoded and checked (frame count, size, frame rate), every frame's
labels equal to segmenting that frame as an image; resume after a kill; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.cli import main
from ovseg.inference.video import VideoSettings
from tests.conftest import DATA, require

av = pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
PHOTO = DATA / "coco-mini" / "train2017" / "000000000790.jpg"
NAMES = "person, bed, wall"


def moving_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """A real photo at (height, width) with a white square and a red disc moving across."""
    photo = Image.open(require(PHOTO)).convert("RGB").resize((width, height), Image.BILINEAR)
    base = np.array(photo)
    yy, xx = np.mgrid[:height, :width]
    frames = []
    for i in range(n):
        frame = base.copy()
        x = (i * 7) % max(width - 12, 1)
        frame[4:16, x : x + 12] = 255
        cx, cy = width - 1 - (i * 5) % width, height // 2
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 36] = (220, 30, 30)
        frames.append(frame)
    return frames


def write_video(path: Path, frames, rate=10, codec="libx264", pix_fmt="yuv420p") -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames[0].shape[:2] if frames else (48, 64)
    stream.pix_fmt = pix_fmt
    if not frames:
        container.start_encoding()
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def decode(path: Path) -> tuple[list[np.ndarray], Fraction, tuple[int, int]]:
    """Every frame of ``path`` (RGB), its frame rate and (width, height), read back."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return (
            frames,
            stream.average_rate,
            (stream.codec_context.width, stream.codec_context.height),
        )


def segment(*argv) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tiny weights
        return main(["segment", *map(str, argv), "--model", "ovseg-test-tiny"])


def labels(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def signed(path: Path) -> np.ndarray:
    """A label PNG with 255 (unlabelled) as -1."""
    out = labels(path).astype(np.int64)
    out[out == 255] = -1
    return out


def test_video_outputs_and_labels_equal_the_frames_as_images(tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", moving_frames(4, 96, 64), rate=10)
    out = tmp_path / "out"
    assert segment(clip, "--classes", NAMES, "--out", out) == 0
    overlay, rate, size = decode(out / "clip_overlay.mp4")
    assert (len(overlay), rate, size) == (4, Fraction(10), (96, 64))
    lines = [json.loads(x) for x in (out / "clip.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == [0, 1, 2, 3]
    assert [x["time"] for x in lines] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    # the same fields as an image's JSON
    frames, _, _ = decode(clip)
    still = tmp_path / "stills"
    still.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(still / f"{i:06d}.png")
    assert segment(still, "--classes", NAMES, "--out", tmp_path / "images") == 0
    for i, line in enumerate(lines):
        image_json = json.loads((tmp_path / "images" / "stills" / f"{i:06d}.json").read_text())
        assert set(image_json) - {"source"} <= set(line) - {"frame", "time"}
        assert line["segments"] == image_json["segments"]
        expected = labels(tmp_path / "images" / "stills" / f"{i:06d}.png")
        assert np.array_equal(labels(out / "clip" / f"{i:06d}.png"), expected), i
    # a rerun skips the finished video
    capsys.readouterr()
    assert segment(clip, "--classes", NAMES, "--out", out) == 0
    assert "already done" in capsys.readouterr().out


def test_stride_max_frames_and_an_odd_size(tmp_path):
    frames = moving_frames(7, 75, 49)
    clip = write_video(tmp_path / "odd.mkv", frames, rate=Fraction(30000, 1001), pix_fmt="yuv444p")
    out = tmp_path / "out"
    assert (
        segment(clip, "--classes", NAMES, "--out", out, "--frame-stride", "2", "--max-frames", "3")
        == 0
    )
    assert sorted(p.name for p in (out / "odd").iterdir()) == [
        "000000.png",
        "000002.png",
        "000004.png",
    ]
    overlay, rate, size = decode(out / "odd_overlay.mp4")
    # frames 0..5: each segmented frame's labels shown for two frames
    assert (len(overlay), rate, size) == (6, Fraction(30000, 1001), (75, 49))
    lines = [json.loads(x) for x in (out / "odd.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == [0, 2, 4]
    assert lines[0]["options"]["video"] == {
        "frame_stride": 2, "max_frames": 3, "temporal_smoothing": 1
    }  # fmt: skip


class FakePredictor:
    """A cheap deterministic stand-in for the model (what the video bookkeeping needs):
    labels by brightness, three classes, some pixels unlabelled."""

    class model:  # noqa: N801  (attribute access as on a Predictor)
        class clip_adapter:  # noqa: N801
            last_text_stats = {"source": "memory"}

    def set_image(self, image):
        self.image = np.asarray(image)

    def predict(self, names, **kwargs):
        import torch

        from ovseg.inference.segmentation import Segmentation

        grey = self.image.mean(axis=2)
        label = np.minimum(grey // 70, 3).astype(np.int64) - 1  # -1, 0, 1, 2
        scores = torch.zeros(3, *label.shape)
        for k in range(3):
            scores[k][torch.from_numpy(label == k)] = 1.0
        return Segmentation(list(names), scores, label, "demo")


class Interrupting:
    """A predictor wrapper that counts its frames and raises after ``stop`` of them."""

    def __init__(self, predictor, stop=None):
        self.inner, self.stop, self.calls, self.sources = predictor, stop, 0, []
        self.model = predictor.model

    def set_image(self, image):
        if self.stop is not None and self.calls == self.stop:
            raise KeyboardInterrupt  # killed while on this frame
        self.calls += 1
        self.inner.set_image(image)

    def predict(self, names, **kwargs):
        seg = self.inner.predict(names, **kwargs)
        self.sources.append(self.model.clip_adapter.last_text_stats["source"])
        return seg


def test_text_features_once_per_video(tmp_path, tiny_model):
    import ovseg
    from ovseg.inference.video import segment_video

    clip = write_video(tmp_path / "clip.webm", moving_frames(3, 64, 48), codec="libvpx-vp9")
    predictor = Interrupting(ovseg.Predictor(tiny_model))
    segment_video(predictor, clip, tmp_path / "out", "clip", ["cat", "window", "rug"], {}, {})
    assert predictor.calls == 3
    assert predictor.sources[0] in ("computed", "disk") and predictor.sources[1:] == ["memory"] * 2


def test_a_killed_run_resumes_from_the_next_frame(tmp_path):
    from ovseg.inference.video import segment_video

    clip = write_video(tmp_path / "clip.avi", moving_frames(5, 64, 48), rate=8, codec="mpeg4")
    names = ["person", "bed", "wall"]
    reference = tmp_path / "reference"
    first = Interrupting(FakePredictor())
    segment_video(first, clip, reference, "clip", names, {}, {"run": 1})
    assert first.calls == 5
    out = tmp_path / "out"
    killed = Interrupting(FakePredictor(), stop=3)
    with pytest.raises(KeyboardInterrupt):
        segment_video(killed, clip, out, "clip", names, {}, {"run": 1})
    assert not (out / "clip_overlay.mp4").exists()
    assert len((out / "clip.jsonl").read_text().splitlines()) == 3
    # what a SIGKILL leaves besides: a partial line, a temporary file
    with (out / "clip.jsonl").open("a") as handle:
        handle.write('{"frame": 3, "vocab')
    (out / ".clip_overlay.mp4.0123456789ab.tmp").write_bytes(b"partial")
    rerun = Interrupting(FakePredictor())
    result = segment_video(rerun, clip, out, "clip", names, {}, {"run": 1})
    assert rerun.calls == 2 and result["frames"] == 2 and result["reused"] == 3
    assert not list(out.glob(".*.tmp"))
    for i in range(5):
        assert np.array_equal(
            labels(out / "clip" / f"{i:06d}.png"), labels(reference / "clip" / f"{i:06d}.png")
        )
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == [0, 1, 2, 3, 4]
    assert lines == (reference / "clip.jsonl").read_text().splitlines()
    frames, rate, size = decode(out / "clip_overlay.mp4")
    assert (len(frames), rate, size) == (5, Fraction(8), (64, 48))
    reference_frames, _, _ = decode(reference / "clip_overlay.mp4")
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference_frames))
    # other options: every frame again, and the stale outputs go
    again = Interrupting(FakePredictor())
    segment_video(again, clip, out, "clip", names, {}, {"run": 2}, VideoSettings(max_frames=2))
    assert again.calls == 2
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["000000.png", "000001.png"]


def _running(tmp_path, clip, out):
    cmd = [sys.executable, "-m", "ovseg", "segment", str(clip), "--classes", NAMES]
    cmd += ["--model", "ovseg-test-tiny", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow  # a subprocess with the tiny model, killed, and a rerun: ~10 frames
def test_sigkill_part_way_then_rerun(tmp_path, tiny_model):
    """A real SIGKILL while frames are being segmented; the rerun completes the video, and
    every frame's labels equal the frame segmented as an image."""
    import ovseg

    clip = write_video(tmp_path / "clip.mp4", moving_frames(6, 64, 48), rate=12)
    out = tmp_path / "out"
    proc = _running(tmp_path, clip, out)
    jsonl = out / "clip.jsonl"
    end = time.time() + 240
    while not (jsonl.is_file() and len(jsonl.read_bytes().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < end, "timed out waiting for frames"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(jsonl.read_bytes().splitlines())
    assert done < 6 and not (out / "clip_overlay.mp4").exists()
    assert segment(clip, "--classes", NAMES, "--out", out) == 0
    frames, rate, size = decode(out / "clip_overlay.mp4")
    assert (len(frames), rate, size) == (6, Fraction(12), (64, 48))
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(6))
    predictor = ovseg.Predictor(tiny_model)
    for i, frame in enumerate(decode(clip)[0]):
        predictor.set_image(frame)
        names = [n.strip() for n in NAMES.split(",")]
        expected = predictor.predict(names, mode="demo").label_image()  # the CLI default
        assert np.array_equal(labels(out / "clip" / f"{i:06d}.png"), np.array(expected)), i


def _bad_videos(folder: Path) -> dict[str, str]:
    """name -> the words its error must contain."""
    good = write_video(folder / "good.mp4", moving_frames(3, 64, 48))
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    long = write_video(folder / "long.avi", moving_frames(30, 96, 64), codec="mpeg4")
    data = long.read_bytes()
    (folder / "truncated.avi").write_bytes(data[: int(len(data) * 0.8)])
    long.unlink()
    long = write_video(folder / "long.mkv", moving_frames(30, 96, 64))
    data = long.read_bytes()
    (folder / "cut.mkv").write_bytes(data[: int(len(data) * 0.8)])
    long.unlink()
    write_video(folder / "zero.avi", [])
    (folder / "codec.mp4").write_bytes(good.read_bytes().replace(b"avc1", b"qqqq"))
    container = av.open(str(folder / "audio.mp4"), "w")
    stream = container.add_stream("aac", rate=8000)
    samples = av.AudioFrame.from_ndarray(
        np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
    )
    samples.sample_rate = 8000
    for packet in [*stream.encode(samples), *stream.encode()]:
        container.mux(packet)
    container.close()
    good.unlink()
    return {
        "corrupt.mp4": "corrupt or truncated",
        "truncated.avi": "truncated video: its header declares 30 frames",
        "cut.mkv": "truncated video: its header declares 3.00 s",
        "zero.avi": "no frames",
        "codec.mp4": "unknown video codec",
        "audio.mp4": "no video stream (the file holds only audio)",
    }


def test_bad_videos_are_clear_errors_naming_the_file(tmp_path):
    from ovseg.inference.video import VideoError, probe_video

    videos = tmp_path / "videos"
    videos.mkdir()
    expected = _bad_videos(videos)
    for name, words in expected.items():
        with pytest.raises(VideoError) as info:
            probe_video(videos / name)
        assert str(videos / name) in str(info.value) and words in str(info.value), name
    out = tmp_path / "out"
    assert segment(videos, "--classes", NAMES, "--out", out) == 1
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["source"]).name for f in failures) == sorted(expected)
    for failure in failures:
        assert expected[Path(failure["source"]).name] in failure["error"]
    assert not list((out / "videos").glob("*_overlay.mp4"))


def test_majority_vote_by_hand():
    from ovseg.inference.video import majority_vote

    a = np.array([[0, 1, 2, -1]])
    b = np.array([[0, 2, 2, 3]])
    c = np.array([[1, 2, 0, 4]])
    # 0,0,1 -> 0; 1,2,2 -> 2; 2,2,0 -> 2; -1,3,4 all once -> the latest (4)
    assert majority_vote([a, b, c]).tolist() == [[0, 2, 2, 4]]

    def vote(*values):
        return majority_vote([np.array([[v]]) for v in values]).item()

    assert vote(5, 3, 3, 5) == 5  # a tie the latest frame is in: the latest
    assert vote(5, 3, 7) == 7
    assert vote(3, 5, 5, 3, 7) == 3  # a tie without the latest: the smallest
    assert majority_vote([a]).tolist() == a.tolist()


def test_temporal_smoothing_resumes_like_a_straight_run(tmp_path):
    from ovseg.inference.video import majority_vote, segment_video

    clip = write_video(tmp_path / "clip.mp4", moving_frames(5, 64, 48), rate=5)
    names = ["person", "bed", "wall"]
    settings = VideoSettings(temporal_smoothing=3)
    predictor = FakePredictor()
    raw = tmp_path / "raw"
    segment_video(predictor, clip, raw, "clip", names, {}, {}, VideoSettings())
    straight = tmp_path / "straight"
    segment_video(predictor, clip, straight, "clip", names, {}, {}, settings)
    raws = [signed(raw / "clip" / f"{i:06d}.png") for i in range(5)]
    for i in range(5):
        expected = majority_vote(raws[max(0, i - 2) : i + 1])
        assert np.array_equal(signed(straight / "clip" / f"{i:06d}.png"), expected), i
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        segment_video(Interrupting(predictor, stop=3), clip, out, "clip", names, {}, {}, settings)
    rerun = Interrupting(predictor)
    segment_video(rerun, clip, out, "clip", names, {}, {}, settings)
    assert rerun.calls == 2 + 2  # the two new frames and the two before them (the window)
    for i in range(5):
        a, b = out / "clip" / f"{i:06d}.png", straight / "clip" / f"{i:06d}.png"
        assert np.array_equal(labels(a), labels(b)), i
