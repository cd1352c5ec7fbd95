"""The image jobs of ``ovseg segment`` without Ray: URLs as inputs and outputs, failures.jsonl,
the temporary files a killed writer leaves, and the engine flags."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.cli import main
from ovseg.inference.jobs import FailureLog, remove_partial_writes
from ovseg.inference.spec import PredictorSpec
from ovseg.inference.storage import UrlPath, as_path
from tests.serve_helpers import FakePredictor

pytest.importorskip("pyarrow", reason="URLs need pyarrow (pip install 'ovseg[ray]')")


def _images(folder: Path) -> list[Path]:
    """Three small gradient images (one in a subfolder), different sizes."""
    (folder / "sub").mkdir(parents=True)
    paths = [folder / "a.png", folder / "b.jpg", folder / "sub" / "c.png"]
    for k, path in enumerate(paths):
        h, w = 24 + 8 * k, 32 + 4 * k
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        pixels = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    return paths


@pytest.fixture
def fake(monkeypatch) -> FakePredictor:
    predictor = FakePredictor()
    monkeypatch.setattr(PredictorSpec, "build", lambda spec: predictor)
    return predictor


def test_url_path_composes_like_a_path_and_reads_and_writes():
    base = UrlPath("memory://ovseg-test/out/")
    assert str(base) == "memory://ovseg-test/out"
    child = base / "in" / Path(".") / "x.y.png"
    assert str(child) == "memory://ovseg-test/out/in/x.y.png"
    assert (child.name, child.stem, child.suffix) == ("x.y.png", "x.y", ".png")
    assert child.parent == base / "in" and child.relative_to(base).as_posix() == "in/x.y.png"
    assert pickle.loads(pickle.dumps(child)) == child
    assert not child.exists()
    child.write_bytes(b"abc")
    fresh = UrlPath(str(child))  # nothing cached: asks the filesystem
    assert fresh.is_file() and not fresh.is_dir() and fresh.read_bytes() == b"abc"
    assert (base / "in").is_dir()
    assert [p.name for p in base.iterdir()] == ["in"]
    assert [str(p) for p in base.rglob("*") if p.is_file()] == [str(child)]
    assert isinstance(as_path("s3://bucket/key"), UrlPath)
    assert isinstance(as_path("C:/photos"), Path) and isinstance(as_path("photos"), Path)
    with pytest.raises(ValueError, match=r"'\.\.'"):
        base / "../escape"


def test_file_urls_in_and_out_give_the_files_of_local_paths(fake, tmp_path, capsys):
    _images(tmp_path / "photos")
    local = tmp_path / "local"
    assert (
        main(
            ["segment", "--model", "m", str(tmp_path / "photos"), "--classes", "dark, light"]
            + ["--out", str(local)]
        )
        == 0
    )
    url_out = f"file://{tmp_path}/url"
    argv = ["segment", "--model", "m", f"file://{tmp_path}/photos", "--classes", "dark, light"]
    assert main(argv + ["--out", url_out]) == 0
    assert "3 segmented" in capsys.readouterr().out
    expected = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    got = tmp_path / "url"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == expected
    sources = {"a": "photos/a.png", "b": "photos/b.jpg", "c": "photos/sub/c.png"}
    for name in expected:
        a, b = (local / name).read_bytes(), (got / name).read_bytes()
        if name.endswith(".json"):
            a, b = json.loads(a), json.loads(b)
            source = sources[Path(name).stem]
            assert (a.pop("source"), b.pop("source")) == (
                str(tmp_path / source),
                f"file://{tmp_path}/{source}",
            )
        assert a == b, name
    assert main(argv + ["--out", url_out]) == 0  # is_done reads the JSON back through the URL
    assert "all 3 image(s) already done" in capsys.readouterr().out
    assert fake.calls == 6


def test_failures_are_recorded_and_never_stop_the_run(fake, tmp_path, monkeypatch, capsys):
    a, b, c = _images(tmp_path / "photos")
    b.write_bytes(b"not an image")
    predict = FakePredictor.predict

    def fails_on_tall_images(self, names, **options):
        if self.image.shape[0] > 30:
            raise RuntimeError("model exploded")
        return predict(self, names, **options)

    monkeypatch.setattr(FakePredictor, "predict", fails_on_tall_images)
    out = tmp_path / "out"
    argv = ["segment", "--model", "m", str(tmp_path / "photos"), "--classes", "x, y"]
    assert main(argv + ["--out", str(out)]) == 1
    assert "1 segmented, 0 already done, 2 failed" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(r["source"], r["stage"], r["error_type"]) for r in records] == [
        (str(b), "read", "ValueError"),
        (str(c), "segment", "RuntimeError"),
    ]
    assert "not a readable image" in records[0]["error"]
    assert (
        "model exploded" in records[1]["error"]
        and "fails_on_tall_images" in (records[1]["traceback"])
    )
    assert (out / "photos" / "a.json").is_file()
    monkeypatch.setattr(FakePredictor, "predict", predict)
    b.unlink()
    assert main(argv + ["--out", str(out)]) == 0  # the failed ones again, now fine
    assert not (out / "failures.jsonl").exists()


def test_failure_log_is_sorted_by_image(tmp_path):
    log = FailureLog(tmp_path)
    for name in ("z.jpg", "a.jpg"):
        log.add({"source": name, "stage": "read", "error": "bad"})
    assert (tmp_path / "failures.jsonl").read_text().count("\n") == 2  # as they come
    log.close()
    lines = (tmp_path / "failures.jsonl").read_text().splitlines()
    assert [json.loads(x)["source"] for x in lines] == ["a.jpg", "z.jpg"]


def test_partial_writes_of_a_killed_writer_are_removed(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    planted = [".a.png.x1y2z3w4.tmp", ".a_overlay.png.abcdefgh.tmp", ".a.json.12345678.tmp"]
    kept = [
        ".ab.png.abcdefgh.tmp",  # another image, not among the jobs
        ".a.png.abc.tmp",  # not the temp-name shape
        "a.png.abcdefgh.tmp",  # not hidden
        "a.png",
    ]
    for name in planted + kept:
        (folder / name).write_bytes(b"")
    assert remove_partial_writes([(Path("a.jpg"), folder, "a"), (Path("b.jpg"), folder, "b")]) == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)


def test_engine_flags(fake, tmp_path, monkeypatch, capsys):
    image = _images(tmp_path / "photos")[0]
    argv = ["segment", "--model", "m", str(image), "--classes", "a", "--out", str(tmp_path / "o")]
    assert main(argv + ["--workers", "3"]) == 2
    assert "--workers apply to --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(argv + ["--engine", "ray"]) == 2
    assert "pip install 'ovseg[ray]'" in capsys.readouterr().err
    assert main(argv + ["--threads-per-worker", "1"]) == 0  # the local engine's threads
    assert fake.calls == 1


def test_ray_flags_are_checked_against_the_device(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["segment", "--model", "m", "x.jpg", "--classes", "a", "--engine", "ray"]
    assert main(argv + ["--device", "cuda"]) == 2
    assert "--gpus-per-worker 1" in capsys.readouterr().err
    assert main(argv + ["--gpus-per-worker", "1"]) == 2
    assert "needs --device cuda" in capsys.readouterr().err
    assert main(argv + ["--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(argv + ["--batch-size", "2"]) == 2
    assert "--batch-size applies to --engine local" in capsys.readouterr().err


def test_a_rerun_into_a_url_lists_the_outputs_once(fake, tmp_path, monkeypatch, capsys):
    """Which images are done is read from one listing of --out, not a request per file."""
    from ovseg.inference import storage

    _images(tmp_path / "photos")
    out = "memory://ovseg-rerun-test/out"
    argv = ["segment", "--model", "m", str(tmp_path / "photos"), "--classes", "x, y"]
    assert main(argv + ["--out", out]) == 0
    asked: list[str] = []
    real = storage._filesystem

    class Counting:  # the filesystem, counting single-path questions
        def __init__(self, fs):
            self.fs = fs

        def get_file_info(self, what):
            if isinstance(what, str):
                asked.append(what)
            return self.fs.get_file_info(what)

        def __getattr__(self, name):
            return getattr(self.fs, name)

    monkeypatch.setattr(storage, "_filesystem", lambda url: (Counting(real(url)[0]), real(url)[1]))
    assert main(argv + ["--out", out]) == 0
    assert "all 3 image(s) already done" in capsys.readouterr().out
    assert len(asked) <= 1  # the listing's root at most; 9 outputs were not asked one by one
    assert fake.calls == 3
