"""``ovseg eval --engine ray``: the prediction pass on a pool of Ray actors.

Each actor builds its prediction function once (``make_predict()``, e.g. the command line's
model mode: weights once per actor, text features once per vocabulary and actor) and returns,
per image, the sparse confusion entries of every setting (``loop.image_entries``, the local
loop's own function). The driver adds them up, writes them to the confusion cache as they
come (so an interrupted run resumes), and reads cached images without predicting them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

import numpy as np

from ovseg.data.datasets.base import SemSegDataset
from ovseg.evaluation.loop import ConfusionCache, PredictFn, image_entries
from ovseg.evaluation.sem_seg import SemSegEvaluator
from ovseg.inference.ray_engine import PoolWorker, RayResources, map_on_ray, ray_session


class EvalWorker(PoolWorker):
    """A Ray actor holding one prediction function: one image's confusion entries per call."""

    stage = "predict"
    durable = False  # the entries live in the result only: a lost result is predicted again

    def setup(
        self,
        dataset: SemSegDataset,
        make_predict: Callable[[], PredictFn],
        settings: list[str],
        num_classes: int,
    ) -> None:
        self.dataset = dataset
        self.predict = make_predict()
        self.settings = settings
        self.num_classes = num_classes

    def process(self, row: dict) -> dict:
        entries = image_entries(
            self.dataset, int(row["index"]), self.predict, self.settings, self.num_classes
        )
        detail = {s: [index.tolist(), counts.tolist()] for s, (index, counts) in entries.items()}
        return {"status": "done", "detail": detail}


def evaluate_on_ray(
    dataset: SemSegDataset,
    make_predict: Callable[[], PredictFn],
    settings: Sequence[str],
    resources: RayResources,
    class_names: Sequence[str] | None = None,
    seen_classes: Sequence[str] | None = None,
    cache: ConfusionCache | None = None,
    progress: bool = True,
) -> dict[str, SemSegEvaluator]:
    """``loop.evaluate_dataset`` with the predictions made by ``resources.workers`` Ray
    actors. ``make_predict`` must pickle (a module-level function or a ``functools.partial``
    of one): each actor calls it once.

    Raises RuntimeError naming the images that failed, after every other image was scored
    (and cached).
    """
    names = list(class_names if class_names is not None else dataset.class_names)
    settings = list(settings)
    evaluators = {s: SemSegEvaluator(names, seen_classes=seen_classes) for s in settings}
    todo = []
    for index in range(len(dataset)):
        cached = cache.load(dataset[index].stem) if cache is not None else None
        if cached is not None and all(s in cached for s in settings):
            for s in settings:
                evaluators[s].add_sparse(*cached[s])
        else:
            todo.append(index)
    if not todo:
        return evaluators
    items = [{"key": str(dataset[i].image), "index": i} for i in todo]
    index_of = {item["key"]: item["index"] for item in items}
    setup = {
        "dataset": dataset,
        "make_predict": make_predict,
        "settings": settings,
        "num_classes": len(names),
    }
    failures = []
    from tqdm.auto import tqdm

    with (
        ray_session(resources),
        tqdm(
            total=len(dataset),
            initial=len(dataset) - len(todo),
            desc=f"eval {dataset.name} on Ray",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        for result in map_on_ray(items, None, EvalWorker, setup, resources):
            bar.update(1)
            if result["status"] != "done":
                failures.append(json.loads(result["failure"]))
                tqdm.write(
                    f"ovseg eval: {failures[-1]['source']}: {failures[-1]['error']}",
                    file=sys.stderr,
                )
                continue
            detail = json.loads(result["detail"])
            entries = {
                s: (np.asarray(index, np.int64), np.asarray(counts, np.int64))
                for s, (index, counts) in detail.items()
            }
            for s in settings:
                evaluators[s].add_sparse(*entries[s])
            if cache is not None:
                cache.save(dataset[index_of[result["key"]]].stem, entries)
    if failures:
        listed = "; ".join(f"{f['source']}: {f['error']}" for f in failures[:5])
        raise RuntimeError(
            f"{len(failures)} image(s) could not be scored ({listed}); the others are "
            f"{'cached: rerun to score the rest' if cache is not None else 'not kept'}"
        )
    return evaluators
