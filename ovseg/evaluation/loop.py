"""The evaluation loop over a dataset shard, with a resumable per-image confusion cache."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ovseg.data.datasets.base import IGNORE_LABEL, SemSegDataset
from ovseg.evaluation.sem_seg import SemSegEvaluator, image_confusion, to_sparse
from ovseg.fileio import write_atomic

# predict(index, gt) -> {setting name: (H, W) int prediction}
PredictFn = Callable[[int, np.ndarray], Mapping[str, np.ndarray]]
# predict_batch(indices, gts) -> one {setting name: prediction} per index
BatchPredictFn = Callable[[list[int], list[np.ndarray]], list[Mapping[str, np.ndarray]]]


class ConfusionCache:
    """Per-image confusion counts on disk, so an interrupted evaluation resumes.

    One ``<stem>.npz`` per image holds, for every setting, the non-zero entries of that image's
    confusion matrix. ``cache.json`` records what the counts were made with (``key``); opening
    the folder with a different key is an error rather than a silent mix of two runs.

    Args:
        folder: the cache folder (created when missing).
        key: JSON-serialisable description of the run (dataset, split, model, settings...).
    """

    def __init__(self, folder: str | os.PathLike, key: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "cache.json"
        key = json.loads(json.dumps(key))
        if meta.is_file():
            try:
                stored = json.loads(meta.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"{meta}: unreadable evaluation cache metadata ({error})"
                ) from None
            if stored != key:
                differ = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
                raise ValueError(
                    f"the evaluation cache {self.folder} was written by a different run "
                    f"(differs in {differ}); use another cache folder or delete this one"
                )
        else:
            write_atomic(meta, (json.dumps(key, indent=2) + "\n").encode())

    def _path(self, stem: str) -> Path:
        return self.folder / f"{stem}.npz"

    def load(self, stem: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """The cached {setting: (flat index, counts)} of image ``stem``, or None."""
        path = self._path(stem)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                settings = {
                    name[: -len("/index")] for name in data.files if name.endswith("/index")
                }
                return {s: (data[f"{s}/index"], data[f"{s}/counts"]) for s in settings}
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed

    def save(self, stem: str, entries: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        arrays = {}
        for setting, (index, counts) in entries.items():
            arrays[f"{setting}/index"], arrays[f"{setting}/counts"] = index, counts
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(self._path(stem), buffer.getvalue())

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.npz"))


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """The items of one rank: every ``world_size``-th item starting at ``rank``."""
    return range(rank, num_items, world_size)


def prediction_entries(
    dataset: SemSegDataset,
    index: int,
    gt: np.ndarray,
    preds: Mapping[str, np.ndarray],
    settings: Sequence[str],
    num_classes: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One image's confusion matrix per setting, sparse (``to_sparse``: flat indices,
    counts), from its (H, W) ground truth and its predictions ``{setting: (H, W)}``."""
    missing = [s for s in settings if s not in preds]
    if missing:
        raise RuntimeError(f"the predictor returned no prediction for {missing}")
    entries = {}
    for s in settings:
        pred = np.asarray(preds[s])
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction for {dataset[index].image} is {pred.shape} but its "
                f"ground truth {dataset[index].label} is {gt.shape}"
            )
        entries[s] = to_sparse(image_confusion(pred, gt, num_classes, IGNORE_LABEL))
    return entries


def image_entries(
    dataset: SemSegDataset,
    index: int,
    predict: PredictFn,
    settings: Sequence[str],
    num_classes: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``prediction_entries`` of image ``index``: its ground truth read, ``predict`` called
    (not when the ground truth is entirely ignore: empty entries then)."""
    gt = dataset.read_label(index)
    if (gt == IGNORE_LABEL).all():
        return {s: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for s in settings}
    return prediction_entries(dataset, index, gt, predict(index, gt), settings, num_classes)


def evaluate_dataset(
    dataset: SemSegDataset,
    predict: PredictFn,
    settings: Sequence[str] = ("default",),
    class_names: Sequence[str] | None = None,
    seen_classes: Sequence[str] | None = None,
    cache: ConfusionCache | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    predict_batch: BatchPredictFn | None = None,
    batch_size: int = 1,
) -> dict[str, SemSegEvaluator]:
    """Run ``predict`` on this rank's shard of ``dataset`` and score every setting.

    Images whose ground truth is entirely ignore add nothing and are not predicted. Images
    already in ``cache`` (for all ``settings``) are not predicted again. With
    ``predict_batch``, the images still to predict go to it ``batch_size`` at a time (of
    each run of ``batch_size`` consecutive images, those not cached) instead of ``predict``.

    Returns:
        {setting: evaluator holding this rank's counts}; call ``compute()`` on every rank to
        get the metrics summed over ranks.
    """
    names = list(class_names if class_names is not None else dataset.class_names)
    evaluators = {s: SemSegEvaluator(names, seen_classes=seen_classes) for s in settings}
    indices = shard_indices(len(dataset), rank, world_size)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=f"eval {dataset.name}", unit="img", dynamic_ncols=True)
    step = batch_size if predict_batch is not None else 1
    for first in range(0, len(indices), step):
        pending: list[tuple[int, np.ndarray]] = []  # (index, ground truth) to predict
        for index in indices[first : first + step]:
            stem = dataset[index].stem
            cached = cache.load(stem) if cache is not None else None
            if cached is not None and all(s in cached for s in settings):
                for s in settings:
                    evaluators[s].add_sparse(*cached[s])
                if bar is not None:
                    bar.update(1)
                continue
            gt = dataset.read_label(index)
            if (gt == IGNORE_LABEL).all():
                empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
                if cache is not None:
                    cache.save(stem, {s: empty for s in settings})
                if bar is not None:
                    bar.update(1)
                continue
            pending.append((index, gt))
        if not pending:
            continue
        if predict_batch is not None:
            predictions = list(predict_batch([i for i, _ in pending], [gt for _, gt in pending]))
        else:
            predictions = [predict(index, gt) for index, gt in pending]
        for (index, gt), preds in zip(pending, predictions, strict=True):
            entries = prediction_entries(dataset, index, gt, preds, settings, len(names))
            for s in settings:
                evaluators[s].add_sparse(*entries[s])
            if cache is not None:
                cache.save(dataset[index].stem, entries)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return evaluators
