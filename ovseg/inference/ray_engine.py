"""Running per-image work on Ray: a pool of actors that each hold a model, fed by Ray Data.

``ray_session(resources)`` starts a local Ray instance (``--workers N``) or joins a cluster
(``--ray-address`` / ``RAY_ADDRESS``). ``map_on_ray(items, read, worker_cls, ...)`` streams
the items through Ray Data: ``read`` runs in Ray tasks (reading and decoding, pipelined with
the model), then each item goes to one of ``resources.workers`` actors of ``worker_cls`` (a
``PoolWorker``), which builds its model once and handles one item per call.

Nothing lost, nothing twice:

- Ray Data restarts an actor whose process died and retries its unfinished calls
  (``max_restarts=-1``, ``max_task_retries=-1``), so a killed worker's items are redone.
- A ledger actor counts the attempts at each item and keeps the outcome of the items that
  finished in this run. An item already finished (by an attempt whose result was lost with
  its worker) is not done again when its work is on disk (``PoolWorker.durable``); an item
  whose worker died ``MAX_ATTEMPTS`` times while holding it is reported as failed instead of
  being retried forever.
- An exception in ``process`` fails that item only (its error is the item's result).

Ray is imported lazily; without it ``require_ray`` says how to install it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ovseg.inference.jobs import failure_record
from ovseg.timing import process_age_s

MAX_ATTEMPTS = 3  # starts of one item by workers that then died, before it counts as failed
INSTALL_HINT = "pip install 'ovseg[ray]'"


@dataclass(frozen=True)
class RayResources:
    """Where and with what the actors run.

    ``workers``: actors, each holding one model. ``threads_per_worker``: torch threads (and Ray
    CPUs) per actor; None means torch's default in this process, the thread count of a local
    run, so that the outputs are the same bytes. ``gpus_per_worker``: Ray GPUs per actor.
    ``address``: a Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None
    joins ``RAY_ADDRESS`` if set, else starts a local instance sized for the actors.
    """

    workers: int = 2
    threads_per_worker: int | None = None
    gpus_per_worker: float = 0.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ValueError(
                f"--threads-per-worker must be at least 1, got {self.threads_per_worker}"
            )
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")

    def threads(self) -> int:
        """The torch threads of each actor."""
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        import torch

        return torch.get_num_threads()

    def settings(self) -> dict:
        """The engine's settings, for messages and timing files."""
        return {
            "engine": "ray",
            "workers": self.workers,
            "threads_per_worker": self.threads(),
            "gpus_per_worker": self.gpus_per_worker,
            "address": self.address or os.environ.get("RAY_ADDRESS") or "local",
        }


def require_ray():
    """The ``ray`` module with Ray Data, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"--engine ray needs Ray (with Ray Data), which is not installed ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(resources: RayResources) -> Iterator[dict]:
    """Connect to Ray for one run: the session already open in this process, else the
    cluster at ``resources.address`` or ``RAY_ADDRESS``, else a new local instance with CPUs
    (and GPUs) for exactly ``workers`` actors. A Ray started here is shut down on exit.
    Yields ``{"address", "started", "cpus", "gpus"}``."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        address = resources.address or os.environ.get("RAY_ADDRESS")
        common = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **common)
        else:
            local: dict[str, Any] = {
                "num_cpus": resources.workers * resources.threads(),
                "num_gpus": int(-(-resources.workers * resources.gpus_per_worker // 1)),
            }
            ray.init(**local, **common)
        started = True
    _quiet_ray_data()
    total = ray.cluster_resources()
    try:
        yield {
            "address": ray.get_runtime_context().gcs_address,
            "started": started,
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
        }
    finally:
        if started:
            ray.shutdown()


def _quiet_ray_data() -> None:
    """Our progress bar instead of Ray Data's; its start-up lines only at warning level."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "disabled"


def _ledger_class() -> type:
    """The ledger's class, made here so that Ray ships it by value: its actor process then
    imports neither ovseg nor torch (seconds of start-up saved per run)."""

    class Ledger:
        """Per run: how often each item was started, and the outcome of those that finished
        (a Ray actor)."""

        def __init__(self) -> None:
            self.attempts: dict[str, int] = {}
            self.outcomes: dict[str, str] = {}

        def begin(self, key: str) -> tuple[str | None, int]:
            """(the outcome of an attempt that finished, as JSON text, or None; the number
            of this attempt, from 1)."""
            if key in self.outcomes:
                return self.outcomes[key], self.attempts.get(key, 0)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            return None, self.attempts[key]

        def finish(self, key: str, outcome: str) -> None:
            self.outcomes[key] = outcome

    return Ledger


class PoolWorker:
    """Base of the actors. A subclass builds its model in ``setup(**kwargs)`` (once per actor,
    and again if Ray restarts the actor) and handles one row in ``process(row)``, returning
    ``{"status": "done", ...}`` or ``{"status": "failed", "failure": {...}}``.

    Rows are dicts of plain values with a unique ``"key"``; results carry the key, the status,
    the actor's pid and host, its set-up seconds, and the item's seconds in the worker
    (``item_s``, of which ``ledger_s`` in the ledger's calls). ``stage`` names the work in failure
    records; ``durable`` says whether a finished item's effect survives its worker (files
    written), so that a retry may skip it, or lives only in the result (redone).
    """

    stage = "process"
    durable = True  # process() leaves its result on disk: a finished item is not redone

    def __init__(
        self, ledger, threads: int, setup_kwargs: dict, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.pid = os.getpid()
        self.host = socket.gethostname()
        start = time.perf_counter()
        self.setup(**setup_kwargs)
        self.setup_s = time.perf_counter() - start
        self.ready_s = process_age_s()  # process start -> ready: imports and the model
        age = "" if self.ready_s is None else f"{self.ready_s:.1f} s after its process started "
        print(
            f"ovseg: worker ready, pid {self.pid} on {self.host} ({threads} thread(s)), "
            f"{age}(model {self.setup_s:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    def setup(self, **kwargs) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def process(self, row: dict) -> dict:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        import ray

        keys = list(batch["key"])
        results = []
        for i, key in enumerate(keys):
            started = time.perf_counter()
            row = {name: _plain(column[i]) for name, column in batch.items()}
            outcome, attempt = ray.get(self.ledger.begin.remote(key))
            ledger_s = time.perf_counter() - started
            if outcome is not None and self.durable:  # finished by an attempt whose worker
                result = json.loads(outcome)  # then died before returning it
                result["detail"] = {"note": "finished by an earlier attempt"}
            elif attempt > self.max_attempts:
                error = RuntimeError(
                    f"the worker died {attempt - 1} times while working on this item; "
                    f"given up after {self.max_attempts} attempt(s)"
                )
                result = {"status": "failed", "failure": self.failure(row, "worker", error)}
            else:
                try:
                    result = self.process(row)
                except Exception as error:  # one item fails, never the job
                    result = {"status": "failed", "failure": self.failure(row, self.stage, error)}
                outcome = {"status": result["status"], "failure": result.get("failure")}
                before = time.perf_counter()
                ray.get(self.ledger.finish.remote(key, json.dumps(outcome)))
                ledger_s += time.perf_counter() - before
            results.append(
                {
                    "key": key,
                    "status": result["status"],
                    "attempt": attempt,
                    "pid": self.pid,
                    "host": self.host,
                    "setup_s": self.setup_s,
                    "ready_s": self.ready_s,
                    "failure": json.dumps(result.get("failure")),
                    "detail": json.dumps(result.get("detail")),
                    "item_s": time.perf_counter() - started,  # in this worker, ledger included
                    "ledger_s": ledger_s,
                }
            )
        return {name: [r[name] for r in results] for name in results[0]} if results else {}

    def failure(self, row: dict, stage: str, error: BaseException) -> dict:
        """The failure record of ``row`` (``jobs.failure_record``)."""
        return failure_record(row["key"], stage, error)


def _plain(value):
    """A numpy scalar or 0-d array as a Python value; arrays stay arrays."""
    if hasattr(value, "ndim") and value.ndim == 0:
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def map_on_ray(
    items: list[dict],
    read: Callable[[dict], dict] | None,
    worker_cls: type[PoolWorker],
    setup_kwargs: dict,
    resources: RayResources,
    max_attempts: int = MAX_ATTEMPTS,
) -> Iterator[dict]:
    """Stream ``items`` (dicts of plain values, each with a unique ``"key"``) through
    ``read`` (Ray tasks, e.g. reading and decoding an image; None: no such stage) and a pool
    of ``resources.workers`` ``worker_cls`` actors; yield one result per item as it finishes
    (``PoolWorker.__call__``: key, status, failure/detail as JSON text, pid, host, setup_s).
    An item whose worker died ``max_attempts`` times while on it fails (stage "worker").

    Call inside ``ray_session``.
    """
    ray = require_ray()  # with ray.data imported
    keys = [item["key"] for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("map_on_ray: item keys must be unique")
    if not items:
        return
    ledger = (
        ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_ledger_class())
        .options(name=f"ovseg-ledger-{uuid.uuid4().hex[:12]}")
        .remote()
    )
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if read is not None:
        # no CPU reserved: decoding is light beside the model, and must never wait for
        # CPUs that the actors hold; one reading task at a time per worker keeps up
        ds = ds.map(read, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=resources.workers))
    ds = ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={
            "ledger": ledger,
            "threads": resources.threads(),
            "setup_kwargs": setup_kwargs,
            "max_attempts": max_attempts,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.workers),
        num_cpus=resources.threads(),
        num_gpus=resources.gpus_per_worker or None,
    )
    try:
        for row in ds.iter_rows():
            yield {name: _plain(value) for name, value in row.items()}
    finally:
        ray.kill(ledger)
