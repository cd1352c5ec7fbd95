"""Training checkpoints: model + optimizer + scheduler + RNG + data position, atomically.

Layout under a run's ``checkpoints/`` folder::

    step-000100/model.safetensors   the model (``ovseg.load_checkpoint`` reads it)
    step-000100/state.pt            optimizer, scheduler, grad scaler, step, RNG of every rank
    latest                          text: the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, then
``latest`` is replaced atomically, so a kill at any moment leaves the previous checkpoint
usable. ``state.pt`` holds only tensors and plain Python values and is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ovseg.fileio import write_atomic
from ovseg.weights.checkpoints import save_checkpoint


def rng_state() -> dict:
    """This process's RNG states (torch CPU, CUDA, numpy, Python) as plain Python values
    (bytes, ints, tuples), so they can be gathered across processes and saved safely."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "cuda": [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in state["cuda"]])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# Test hook: "STEP:FLAG" makes the checkpoint of STEP stop half-written (model written,
# state not yet), create FLAG and wait there until the process is killed.
PAUSE_ENV = "OVSEG_TEST_PAUSE_IN_CHECKPOINT"


def _test_pause(step: int) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    at, flag = spec.split(":", 1)
    if int(at) == step:
        Path(flag).write_text(f"paused writing checkpoint {step}\n")
        while True:
            time.sleep(0.05)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "state.pt").is_file() or not (folder / "model.safetensors").is_file():
        raise RuntimeError(
            f"{pointer} names {folder.name}, which is incomplete; delete it to restart"
        )
    return folder


def save_training_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict,
    metadata: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` (model + ``state``) and point ``latest`` at it.

    Keeps the newest ``keep`` checkpoints and deletes older ones.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_checkpoint(model, tmp / "model.safetensors", extra_metadata=metadata)
    _test_pause(step)
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(root / "latest", (name + "\n").encode())
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
