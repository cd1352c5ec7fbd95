"""One thread at a time: the guard of objects that keep per-call state (``Predictor``).

A ``Predictor`` holds one image's state between ``set_image`` and ``predict``, so two
threads using one predictor would mix their images. ``one_thread_at_a_time`` makes such a
call fail at once with a ``RuntimeError`` that says what to do (one predictor per thread;
they share the model), instead of returning another request's result. Calls from the same
thread may nest (``predict`` runs views through ``predict``), and one thread may hand the
predictor to another between calls.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

MESSAGE = (
    "this Predictor is in use by another thread: a Predictor keeps one image's state between "
    "set_image and predict, so it is not thread-safe. Give each thread its own Predictor; "
    "they can share one model (Predictor(model) does not change the model, and predictors "
    "with the same options share one prepared copy of it)"
)


class ThreadGuard:
    """Which thread is inside the guarded object's methods, and how deep."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0

    def enter(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._owner is not None and self._owner != me:
                raise RuntimeError(MESSAGE)
            self._owner = me
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None


def one_thread_at_a_time(method: Callable) -> Callable:
    """Decorate a method of an object with a ``_thread_guard`` (``ThreadGuard``)."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        guard = self._thread_guard
        guard.enter()
        try:
            return method(self, *args, **kwargs)
        finally:
            guard.exit()

    return guarded
