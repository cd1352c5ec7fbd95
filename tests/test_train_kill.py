"""A real SIGKILL of `ovseg train-proposals`, between steps and in the middle of writing a
checkpoint: a fresh process resumes, and losses and final weights equal an uninterrupted
run; the half-written checkpoint is never loaded."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ovseg
from ovseg.train.checkpointing import PAUSE_ENV, latest_checkpoint
from ovseg.train.logs import read_csv
from tests.train_fixtures import semseg_folder

ROOT = Path(__file__).resolve().parents[1]


def command(data, out):
    return [
        sys.executable, "-m", "ovseg", "train-proposals", "--data", str(data), "--out", str(out),
        "--dataset", "folder", "--model", "ovseg-test-tiny", "--set", "num_queries=5",
        "--max-steps", "6", "--batch-size", "2", "--crop", "64", "--min-size-train", "48", "64",
        "--pad-to", "64", "--lr", "1e-3", "--warmup-steps", "2", "--precision", "fp32",
        "--device", "cpu", "--log-every", "1", "--checkpoint-every", "2", "--no-progress",
    ]  # fmt: skip


def env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def start(data, out, **extra):
    return subprocess.Popen(
        command(data, out), env=env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_for(condition, proc, timeout=120):
    end = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def rows(out):
    log = out / "train_log.csv"
    return len(read_csv(log)) if log.is_file() else 0


@pytest.mark.slow  # four CLI runs of 6 steps: ~35 s of CPU
def test_sigkill_between_steps_and_mid_checkpoint(tmp_path):
    data = semseg_folder(tmp_path / "data", n_train=4)
    full, out = tmp_path / "full", tmp_path / "killed"
    subprocess.run(command(data, full), env=env(), check=True, capture_output=True, timeout=300)

    # (a) killed between steps: after step 3 is logged (the step-2 checkpoint is complete)
    proc = start(data, out)
    wait_for(lambda: rows(out) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(out).name == "step-0000002"

    # (b) the resumed process is killed while it writes the step-4 checkpoint
    flag = tmp_path / "paused"
    proc = start(data, out, **{PAUSE_ENV: f"4:{flag}"})
    wait_for(flag.is_file, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out / "checkpoints" / ".step-0000004.tmp"
    assert (partial / "model.safetensors").is_file() and not (partial / "state.pt").exists()
    assert latest_checkpoint(out).name == "step-0000002"  # the partial one is not "latest"

    # a fresh process finishes the run
    subprocess.run(command(data, out), env=env(), check=True, capture_output=True, timeout=300)
    a, b = read_csv(full / "train_log.csv"), read_csv(out / "train_log.csv")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_aux", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa = ovseg.load_checkpoint(full / "model.safetensors").state_dict()
    wb = ovseg.load_checkpoint(out / "model.safetensors").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not partial.exists()
