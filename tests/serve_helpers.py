"""Helpers for the service tests: a stand-in predictor and a real server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import torch

from ovseg.inference.segmentation import Segmentation


class FakePredictor:
    """Labels each pixel by brightness bands, one band per class; sleeps to look busy."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.image: np.ndarray | None = None
        self.calls = 0
        self.options: dict | None = None  # the keyword arguments of the last predict call

    def set_image(self, image: np.ndarray) -> None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.image = image

    def predict(self, class_names: list[str], **options) -> Segmentation:
        time.sleep(self.delay_s)
        self.calls += 1
        self.options = options
        gray = torch.from_numpy(self.image.astype(np.float32).mean(axis=2) / 256.0)
        centres = (torch.arange(len(class_names)) + 0.5) / len(class_names)
        scores = 1.0 - (gray[None] - centres[:, None, None]).abs()
        return Segmentation.from_scores(class_names, scores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, **server_options):
    """Serve ``app`` as ``ovseg serve`` does (``ovseg.serve.server.server_config``) on a free
    127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    from ovseg.serve.server import server_config

    port = free_port()
    config = server_config(app, port=port, log_level="warning", **server_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
