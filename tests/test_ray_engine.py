"""``--engine ray`` on a real local Ray. ``ovseg segment``: the same files as the local engine,
a worker killed by its pid, a corrupt image, a killed driver and its rerun. ``ovseg eval``: the
same scores as the local loop, and the confusion cache.

One Ray instance serves the module (started once: it costs seconds); the runs join it. The
photos are real (coco-mini), the model is ovseg-test-tiny, torch threads are the same in both
engines (the default), so the label PNGs must be the same bytes and the JSON files equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ovseg.cli import main

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ovseg[ray]')")

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"
CLASSES = "person, dog, sky, grass"
ROOT = Path(__file__).resolve().parents[1]


def _photos(n: int) -> list[Path]:
    if not COCO.is_dir():
        pytest.skip(f"real photos not found at {COCO} (the shared data folder is absent)")
    return sorted(COCO.glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the module: CPUs for 2 workers with this process's torch threads (the
    default of --threads-per-worker), a small object store."""
    ray.init(
        num_cpus=2 * torch.get_num_threads(),
        object_store_memory=150 * 1024**2,
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """8 photos in a folder with a subfolder, and a corrupt file among them."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    (folder / "sub").mkdir(parents=True)
    images = _photos(8)
    for image in images[:5]:
        os.symlink(image, folder / image.name)
    for image in images[5:]:
        os.symlink(image, folder / "sub" / image.name)
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _segment(photos: Path, out: Path | str, *extra: str) -> int:
    argv = ["segment", str(photos), "--classes", CLASSES, "--model", "ovseg-test-tiny"]
    return main(argv + ["--out", str(out), *extra])


@pytest.fixture(scope="module")
def local_out(photos) -> Path:
    """The single-process run: what every Ray run must equal."""
    out = photos.parent / "local"
    assert _segment(photos, out) == 1  # 1: the corrupt image failed
    return out


def _files(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file()}


def _assert_same_outputs(out: Path, reference: Path) -> None:
    """Same file names; label and overlay PNGs byte-identical; JSON equal."""
    files, expected = _files(out), _files(reference)
    assert sorted(files) == sorted(expected)
    assert not [name for name in files if name.endswith(".tmp")]
    for name, path in expected.items():
        if name.endswith(".png"):
            assert files[name].read_bytes() == path.read_bytes(), name
        elif name.endswith(".json"):
            assert json.loads(files[name].read_text()) == json.loads(path.read_text()), name
    lines = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reference_lines = (reference / "failures.jsonl").read_text().splitlines()
    assert lines == [json.loads(line) for line in reference_lines]


def _worker_pids() -> list[int]:
    """The processes of the Ray actors that segment (their title names the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"SegmentWorker" in cmdline and b"ray::" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _count_done(out: Path) -> int:
    return sum(1 for _ in out.rglob("*.json"))


def test_two_workers_write_what_the_local_engine_writes(ray_cluster, photos, local_out, capsys):
    out = photos.parent / "two-workers"
    assert _segment(photos, out, "--engine", "ray", "--workers", "2") == 1
    captured = capsys.readouterr()
    assert "8 segmented, 0 already done, 1 failed" in captured.out
    assert "corrupt.jpg" in captured.err and "img/s" in captured.err  # the progress bar
    _assert_same_outputs(out, local_out)
    # the corrupt image is in failures.jsonl with its error; the other 8 are done
    (failure,) = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["source"] == str(photos / "sub" / "corrupt.jpg")
    assert failure["stage"] == "read" and "not a readable image" in failure["error"]
    assert _count_done(out) == 8


def test_a_worker_killed_by_its_pid_loses_nothing(ray_cluster, photos, local_out, tmp_path):
    out = tmp_path / "killed"
    killed: dict = {}

    def kill_a_worker_while_it_works():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            pids = _worker_pids()
            done = _count_done(out) if out.exists() else 0
            if pids and 1 <= done < 8:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], done=done)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_while_it_works, daemon=True)
    killer.start()
    timings = tmp_path / "timings.json"
    # the output at a file:// URL: the workers write through pyarrow's filesystem
    argv = ["--engine", "ray", "--workers", "2", "--timings", str(timings)]
    rc = _segment(photos, f"file://{out}", *argv)
    killer.join(5)
    assert rc == 1
    assert killed and killed["done"] < 8, "the worker was not killed part-way"
    _assert_same_outputs(out, local_out)
    record = json.loads(timings.read_text())
    assert sorted(Path(r["image"]).name for r in record["images"]) == sorted(
        p.name for p in photos.rglob("*.jpg") if p.name != "corrupt.jpg"
    )  # each image reported once
    assert killed["pid"] not in _worker_pids()


def test_a_killed_driver_is_resumed_by_a_rerun(ray_cluster, photos, local_out, tmp_path, capsys):
    out = tmp_path / "resumed"
    argv = [sys.executable, "-m", "ovseg", "segment", str(photos), "--classes", CLASSES]
    argv += ["--model", "ovseg-test-tiny", "--out", str(out), "--engine", "ray", "--workers", "1"]
    argv += ["--ray-address", ray_cluster, "--threads-per-worker", str(torch.get_num_threads())]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    driver = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while _count_done(out) < 2 if out.exists() else True:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        driver.kill()  # SIGKILL: no clean-up of any kind
        driver.wait()
    deadline = time.monotonic() + 60  # Ray ends the dead driver's workers
    while _worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _worker_pids()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert 2 <= len(finished) < 8

    assert _segment(photos, out, "--engine", "ray", "--workers", "1") == 1
    summary = f"{8 - len(finished)} segmented, {len(finished)} already done, 1 failed"
    assert summary in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not redone
    _assert_same_outputs(out, local_out)


def test_eval_on_ray_scores_what_the_local_loop_scores(ray_cluster, tmp_path, monkeypatch):
    from tests.conftest import DATA, require

    root = require(DATA / "camvid")
    argv = ["eval", "--dataset", "camvid", "--root", str(root), "--model", "ovseg-test-tiny"]
    argv += ["--limit", "4", "--quiet", "--sweep", "--lambdas", "0.6,0.7", "--thresholds", "0.4"]
    assert main(argv + ["--no-cache", "--json", str(tmp_path / "local.json")]) == 0
    cache = tmp_path / "cache"
    ray_argv = argv + ["--engine", "ray", "--workers", "1", "--cache", str(cache)]
    assert main(ray_argv + ["--json", str(tmp_path / "ray.json")]) == 0
    local, on_ray = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "ray"))
    assert 0 < local["mIoU"] < 100 and len(local["sweep"]) == 2
    assert on_ray == local
    assert len(list(cache.glob("*.npz"))) == 4
    from ovseg.evaluation import ray_eval

    def no_workers(*args, **kwargs):
        raise AssertionError("every image is cached: no worker should start")

    monkeypatch.setattr(ray_eval, "map_on_ray", no_workers)
    assert main(ray_argv + ["--json", str(tmp_path / "again.json")]) == 0  # from the cache
    assert json.loads((tmp_path / "again.json").read_text()) == local


def _dying_worker_class():
    """A worker whose process exits (as if killed, or out of memory) on the item "poison";
    made in a function so that Ray ships it by value."""
    from ovseg.inference.ray_engine import PoolWorker

    class DyingWorker(PoolWorker):
        def setup(self) -> None:
            pass

        def process(self, row: dict) -> dict:
            if row["key"] == "poison":
                os._exit(1)
            return {"status": "done", "detail": {"pid": os.getpid()}}

    return DyingWorker


def test_an_item_that_kills_its_worker_is_not_retried_forever(ray_cluster):
    from ovseg.inference.ray_engine import RayResources, map_on_ray

    items = [{"key": key} for key in ("a", "poison", "b")]
    resources = RayResources(workers=1, threads_per_worker=1)
    worker = _dying_worker_class()
    # 2 attempts (3 in real runs: MAX_ATTEMPTS) keep the test to two worker restarts
    results = {r["key"]: r for r in map_on_ray(items, None, worker, {}, resources, 2)}
    assert sorted(results) == ["a", "b", "poison"]  # every item once
    assert results["a"]["status"] == results["b"]["status"] == "done"
    poison = results["poison"]
    assert poison["status"] == "failed" and poison["attempt"] == 3
    failure = json.loads(poison["failure"])
    assert failure["stage"] == "worker" and "died 2 times" in failure["error"]
