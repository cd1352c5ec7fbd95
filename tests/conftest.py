"""Shared test helpers: paths to ../shared, and a session-wide tiny model."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"
OFFICIAL_TINY = FIXTURES / "official-tiny"

torch.set_num_threads(min(2, torch.get_num_threads()))


def require(path: Path) -> Path:
    """Skip the test with a clear reason when shared data is absent (fresh clones lack it)."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared fixtures/data folder beside the repo is absent)")
    return path


@pytest.fixture(scope="session")
def tiny_model():
    import ovseg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ovseg.build_model("ovseg-test-tiny")


@pytest.fixture(scope="session")
def official_tiny():
    """(model loaded with load_official, outputs dict, input image (3, H, W) uint8, names)."""
    import json

    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    import ovseg

    require(OFFICIAL_TINY)
    model = ovseg.load_official(
        OFFICIAL_TINY / "config.yaml", OFFICIAL_TINY / "model_state.safetensors"
    )
    outputs = load_file(str(OFFICIAL_TINY / "outputs.safetensors"))
    image = np.array(Image.open(OFFICIAL_TINY / "input.png").convert("RGB"))
    names = json.loads((OFFICIAL_TINY / "meta.json").read_text())["class_names"]
    return model, outputs, torch.from_numpy(image).permute(2, 0, 1), names


@pytest.fixture(scope="session")
def official_tiny_meta() -> dict:
    """official-tiny/meta.json: shapes, mask threshold, ensemble weight, class names..."""
    import json

    return json.loads((require(OFFICIAL_TINY) / "meta.json").read_text())


# Tests never read or write the user's cache folder (text features, eval caches): a fresh
# one per session unless OVSEG_HOME is set; tests that need their own monkeypatch it.
if "OVSEG_HOME" not in os.environ:
    os.environ["OVSEG_HOME"] = tempfile.mkdtemp(prefix="ovseg-test-home-")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A stand-in Hugging Face Hub on 127.0.0.1, with huggingface_hub pointed at it and its
    cache in ``tmp_path / "hf"`` (see ``tests/hub_server.py``)."""
    from tests.hub_server import FakeHub, patch_hub

    server = FakeHub().start()
    patch_hub(monkeypatch, server, tmp_path / "hf")
    yield server
    server.stop()
