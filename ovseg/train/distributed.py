"""torch.distributed helpers: the process group from ``torchrun``'s environment, reductions,
and a ``DistributedSampler`` that can resume in the middle of an epoch.

One code path serves one process (no process group), several CPU processes (gloo) and
GPUs on one or many machines (nccl): launch with ``torchrun --nproc_per_node N ...``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, under ``torchrun`` (``WORLD_SIZE`` > 1), join the process group.

    Args:
        device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    The backend is nccl for CUDA and gloo for the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but CUDA is not available")
        dev = torch.device("cuda", local_rank if device == "cuda" else torch.device(device).index)
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if world > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a tensor (a copy; the input is unchanged). No-op on one process."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, ``set_epoch``, rank sharding) that can skip
    the first ``start`` of this rank's samples of the current epoch, to resume mid-epoch.

    The sample order depends only on (seed, epoch, rank, world size), never on when the
    iteration starts, so a resumed run sees exactly the samples the interrupted run would.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, shuffle: bool = True, seed: int = 0):
        super().__init__(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from this rank's sample ``start`` on."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
