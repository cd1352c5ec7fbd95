"""The training loop shared by proposal training and CLIP adaptation.

``Trainer`` runs a ``TrainTask``'s module under DDP (when launched by ``torchrun``) with a
``ResumableDistributedSampler``, AdamW, a warmup + cosine/poly schedule, gradient
accumulation, autocast (bf16 on CPU, fp16 AMP with a grad scaler on CUDA), tqdm and CSV /
TensorBoard logs, and atomic checkpoints that resume exactly (model, optimizer, scheduler,
grad scaler, RNG of every rank, data position).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ovseg.train import distributed
from ovseg.train.checkpointing import (
    latest_checkpoint,
    load_training_state,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
)
from ovseg.train.logs import CSVLog, TensorBoardLog
from ovseg.train.schedule import WarmupSchedule
from ovseg.weights.checkpoints import read_state_dict, save_checkpoint

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# settings a resumed run must share with the run it resumes
RESUME_KEYS = (
    "batch_size", "accum_steps", "max_steps", "epochs", "lr", "weight_decay", "schedule",
    "warmup_steps", "warmup_factor", "warmup_mode", "adam_betas", "adam_eps", "seed", "precision",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is per process and per micro-step; the global batch is
    ``batch_size * accum_steps * world_size``. Training lasts ``max_steps`` optimizer steps,
    or ``epochs`` epochs when ``max_steps`` is None."""

    out_dir: str
    batch_size: int = 8
    accum_steps: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_factor: float = 1e-3
    warmup_mode: str = "linear"  # or "open_clip": (step + 1) / warmup_steps (ovseg.train.schedule)
    poly_power: float = 0.9
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = None
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("batch_size", "accum_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers, got {self.adam_betas}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class TrainTask:
    """What to train.

    Attributes:
        model: the ``OVSeg`` model whose weights are checkpointed and written at the end.
        module: an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, terms)``, a scalar
            loss and a dict of detached scalar tensors to log; DDP wraps it.
        param_groups: AdamW parameter groups (only trainable parameters).
        dataset: map-style dataset; ``set_epoch(epoch)`` is called on it when it has one.
        collate: the DataLoader's ``collate_fn``.
        metadata: extra checkpoint metadata (e.g. what was trained).
        evaluate: optional ``evaluate(model) -> dict`` run on rank 0 every ``eval_every``
            steps and at the end, logged to ``eval_log.csv``.
        finalize: optional ``finalize(model)`` applied before the final model is written.
    """

    model: nn.Module
    module: nn.Module
    param_groups: list[dict]
    dataset: Dataset
    collate: Callable
    metadata: dict = field(default_factory=dict)
    evaluate: Callable[[nn.Module], dict] | None = None
    finalize: Callable[[nn.Module], None] | None = None


def to_device(batch, device: torch.device):
    """Move every tensor in a nested dict/list/tuple to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "bf16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 AMP needs CUDA; use bf16 or fp32 on the CPU")
    return precision


class Trainer:
    """Run a ``TrainTask`` with a ``TrainConfig``; see the module docstring.

    Args:
        hooks: callables ``hook(step, row)`` after every optimizer step (tests use one to
            simulate a kill).
    """

    def __init__(self, task: TrainTask, config: TrainConfig, info: distributed.DistInfo, hooks=()):
        self.task, self.config, self.info, self.hooks = task, config, info, list(hooks)
        self.out = Path(config.out_dir)
        self.precision = resolve_precision(config.precision, info.device)
        self.sampler = distributed.ResumableDistributedSampler(task.dataset, info, seed=config.seed)
        micro_per_epoch = self.sampler.num_samples // config.batch_size
        self.steps_per_epoch = micro_per_epoch // config.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the dataset ({len(task.dataset)} samples) is smaller than one global batch "
                f"({config.batch_size} x {config.accum_steps} accumulation x {info.world_size} "
                "processes); lower --batch-size or --accum-steps"
            )
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        task.model.to(info.device)
        task.module.to(info.device)
        self.module = task.module
        trainable = [p for g in task.param_groups for p in g["params"]]
        if not trainable or not all(p.requires_grad for p in trainable):
            raise ValueError("param_groups must list only (and at least one) trainable parameter")
        if info.world_size > 1:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.module = DistributedDataParallel(task.module, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            task.param_groups,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=tuple(config.adam_betas),
            eps=config.adam_eps,
        )
        self.schedule = WarmupSchedule(
            config.schedule,
            self.total_steps,
            config.warmup_steps,
            warmup_factor=config.warmup_factor,
            warmup_mode=config.warmup_mode,
            power=config.poly_power,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0

    # ---- state --------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {k: getattr(self.config, k) for k in RESUME_KEYS} | {
            "world_size": self.info.world_size
        }

    def _resume(self) -> bool:
        folder = latest_checkpoint(self.out)
        if folder is None:
            return False
        state = load_training_state(folder)
        saved, now = state["settings"], self._settings()
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                f"{self.out} holds a run with other settings; resume it with the same ones or "
                f"use a new --out. Differences (saved, now): {diff}"
            )
        self.task.model.load_state_dict(read_state_dict(folder / "model.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.info.rank])
        self.step = int(state["step"])
        return True

    def _checkpoint(self) -> None:
        rng = rng_state()
        if distributed.is_distributed():
            gathered = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.info.is_main:
            state = {
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "position": (self.step % self.steps_per_epoch)
                * self.config.accum_steps
                * self.config.batch_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": gathered,
                "settings": self._settings(),
            }
            meta = self.task.metadata | {"step": self.step}
            save_training_checkpoint(
                self.out, self.step, self.task.model, state, meta, self.config.keep_checkpoints
            )
        distributed.barrier()

    # ---- loop ---------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _loader(self, epoch: int, start_micro: int) -> DataLoader:
        self.sampler.set_position(epoch, start_micro * self.config.batch_size)
        if hasattr(self.task.dataset, "set_epoch"):
            self.task.dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        return DataLoader(
            self.task.dataset,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            collate_fn=self.task.collate,
            num_workers=self.config.num_workers,
            drop_last=True,
            generator=generator,
            persistent_workers=False,
        )

    def _train_step(self, batches) -> dict[str, float]:
        cfg = self.config
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            batch = to_device(batch, self.info.device)
            last = micro == len(batches) - 1
            sync = contextlib.nullcontext()
            if isinstance(self.module, DistributedDataParallel) and not last:
                sync = self.module.no_sync()
            with sync:
                with self._autocast():
                    loss, terms = self.module(batch)
                self.scaler.scale(loss / len(batches)).backward()
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.float() / len(batches)
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        names = sorted(sums)
        values = distributed.all_reduce_mean(torch.stack([sums[k] for k in names]))
        return dict(zip(names, values.tolist()))

    def _evaluate(self, eval_log: CSVLog, tb: TensorBoardLog) -> None:
        if self.task.evaluate is None:
            return
        if self.info.is_main:
            self.task.model.eval()
            with torch.no_grad():
                row = {"step": self.step, **self.task.evaluate(self.task.model)}
            eval_log.write(row)
            tb.write(row, prefix="eval")
            print(f"eval step {self.step}: {json.dumps(row)}", flush=True)
        distributed.barrier()

    def fit(self) -> Path:
        """Train (resuming from ``out_dir`` when it holds a checkpoint); returns the final
        model's path, ``out_dir/model.safetensors``."""
        from tqdm import tqdm

        cfg, info = self.config, self.info
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed + info.rank)
        resumed = self._resume()
        main = info.is_main
        final = self.out / "model.safetensors"
        if resumed and self.step >= self.total_steps and final.is_file():
            return final  # the run had finished
        log = CSVLog(self.out / "train_log.csv", self.step if resumed else None) if main else None
        eval_log = (
            CSVLog(self.out / "eval_log.csv", self.step if resumed else None)
            if main and self.task.evaluate is not None
            else None
        )
        tb = TensorBoardLog(self.out / "tensorboard") if main else None
        if main:
            (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
        if not resumed and cfg.eval_every:
            self._evaluate(eval_log, tb)
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (main and cfg.progress),
            desc="train", dynamic_ncols=True,
        )  # fmt: skip
        window: dict[str, float] = {}
        window_steps, t0 = 0, time.perf_counter()
        samples_per_step = cfg.batch_size * cfg.accum_steps * info.world_size
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            iterator = iter(self._loader(epoch, in_epoch * cfg.accum_steps))
            for _ in range(in_epoch, self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                lr = cfg.lr * self.schedule(self.step)  # base lr (groups may scale it)
                row = self._train_step([next(iterator) for _ in range(cfg.accum_steps)])
                self.step += 1
                window_steps += 1
                for k, v in row.items():
                    window[k] = window.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    out = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                           "lr": lr}  # fmt: skip
                    out |= {k: v / window_steps for k, v in window.items()}
                    out["samples_per_s"] = round(samples_per_step * window_steps / elapsed, 3)
                    if main:
                        log.write(out)
                        tb.write(out)
                    window, window_steps, t0 = {}, 0, time.perf_counter()
                for hook in self.hooks:
                    hook(self.step, row)
                if self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                    self._checkpoint()
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate(eval_log, tb)
        bar.close()
        if cfg.eval_every and self.step % cfg.eval_every != 0:
            self._evaluate(eval_log, tb)
        if main:
            if self.task.finalize is not None:
                self.task.finalize(self.task.model)
            save_checkpoint(self.task.model, final, extra_metadata=self.task.metadata)
            tb.close()
        self._checkpoint()
        return final
