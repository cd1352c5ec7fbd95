"""``--engine local|ray`` and its resources, shared by ``ovseg segment`` and ``ovseg eval``."""

from __future__ import annotations

import argparse


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine``, ``--workers``, ``--threads-per-worker``, ``--gpus-per-worker`` and
    ``--ray-address``."""
    group = parser.add_argument_group(
        "engine (see docs/scale-out.md; --engine ray needs pip install 'ovseg[ray]')"
    )
    group.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a pool of Ray actors, each holding the model, on a "
        "local Ray instance or a cluster (default: local)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Ray actors, each with its own model (--engine ray; default 2)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="torch threads per worker (Ray: and CPUs reserved per actor); default: torch's "
        "default here, as a local run uses, so the outputs are the same bytes (float sums "
        "depend on the thread count)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs per Ray actor (with --device cuda; default 0)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (auto, HOST:PORT or ray://HOST:PORT; default: "
        "$RAY_ADDRESS, else start a local Ray instance for --workers)",
    )


def ray_resources(args: argparse.Namespace):
    """The ``RayResources`` of ``--engine ray``, checked against ``--device`` (None for the
    local engine, whose Ray-only flags must then be left at their defaults)."""
    device = str(getattr(args, "device", "cpu") or "cpu")
    if args.engine != "ray":
        given = [
            flag
            for flag, value, default in (
                ("--workers", args.workers, 2),
                ("--gpus-per-worker", args.gpus_per_worker, 0.0),
                ("--ray-address", args.ray_address, None),
            )
            if value != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --engine ray; add --engine ray")
        return None
    if getattr(args, "batch_size", 1) > 1:
        raise ValueError(
            "--batch-size applies to --engine local; a Ray worker takes one image per call "
            "(scale with --workers instead)"
        )
    from ovseg.inference.ray_engine import RayResources, require_ray

    try:
        require_ray()
    except ImportError as error:
        raise RuntimeError(str(error)) from None
    resources = RayResources(
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        address=args.ray_address,
    )
    if device.startswith("cuda") and not resources.gpus_per_worker:
        raise ValueError(
            "--device cuda on Ray needs GPUs for the workers: add --gpus-per-worker 1 "
            "(or a fraction to share a GPU)"
        )
    if resources.gpus_per_worker and not device.startswith("cuda"):
        raise ValueError(f"--gpus-per-worker needs --device cuda (got --device {device})")
    return resources


def set_local_threads(args: argparse.Namespace) -> None:
    """``--threads-per-worker`` for the local engine: this process's torch threads."""
    if args.threads_per_worker is not None:
        if args.threads_per_worker < 1:
            raise ValueError(
                f"--threads-per-worker must be at least 1, got {args.threads_per_worker}"
            )
        import torch

        torch.set_num_threads(args.threads_per_worker)
