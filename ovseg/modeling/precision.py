"""Float32 arithmetic as the official computation does it: no TF32 inside ovseg's calls.

PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later GPUs (10-bit
mantissa products); CUDA matmuls default to IEEE fp32. Measured on an H200 with the official
tiny fixture (``../shared/fixtures/official-tiny``): fp32 with TF32 convolutions agreed with
the official label map on 99.96% of the pixels (max abs difference 0.028 on ``sem_seg``);
with TF32 off on 100% (max abs 2e-4). So the exact path turns TF32 off for the duration of
its own calls and restores the caller's settings afterwards (``ieee_fp32``).

The switches are process-wide: another thread running CUDA work at the same moment sees
them too (ovseg's service runs the model on one thread).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Inside: cuDNN convolutions and CUDA matmuls in IEEE fp32 (no TF32); the previous
    settings are restored on exit. No effect on CPU arithmetic."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:  # the legacy switches, unless the caller set the precision with the newer API
        saved = (cudnn.allow_tf32, matmul.allow_tf32)
    except RuntimeError:  # "a mix of the legacy and new APIs": keep to the new one
        saved = None
    if saved is not None:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved
        return
    backends = (cudnn.conv, cudnn.rnn, matmul)
    previous = [b.fp32_precision for b in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, previous):
            backend.fp32_precision = value


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions may use TF32 now (what ``ieee_fp32`` switches off)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return torch.backends.cudnn.conv.fp32_precision == "tf32"


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device``'s type (fp32 inside an autocast
    region); nothing on device types without autocast (the meta device)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
