"""Named wall-clock stages, for reporting where start-up time goes.

Library code marks a stage with ``with stage("weights_read"): ...``; a caller that wants the
figures wraps its work in ``with collect() as stages:`` and reads ``stages`` (name -> total
seconds) afterwards. Outside ``collect`` a stage costs one clock read. ``process_age_s``
gives the time since the interpreter started (imports included).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_collectors: list[dict[str, float]] = []
_local = threading.local()  # .open: the stages this thread is timing now


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Totals of every ``stage`` entered inside this block, by name (nested blocks each
    see their own)."""
    stages: dict[str, float] = {}
    _collectors.append(stages)
    try:
        yield stages
    finally:
        _collectors.remove(stages)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add this block's wall time to ``name`` in every active ``collect``. A stage entered
    again inside itself (a function that calls itself) counts once, at the outer level."""
    open_now = _local.__dict__.setdefault("open", set())
    if name in open_now:
        yield
        return
    open_now.add(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        open_now.discard(name)
        seconds = time.perf_counter() - start
        for stages in _collectors:
            stages[name] = stages.get(name, 0.0) + seconds


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
