"""``ovseg segment --engine ray``: the image jobs on a pool of Ray actors.

Ray tasks read and decode the images (``read_row``: ``jobs.read_job``); each actor
(``SegmentWorker``) builds its ``Predictor`` from the ``PredictorSpec`` once, then segments
and writes one image per call with the same functions as the local engine
(``jobs.segment_image``, ``jobs.write_outputs``), so the files are the same bytes when the
torch thread count is the same. An image whose outputs appeared while its worker died (the
retry finds them done) is not written again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np

from ovseg.inference.jobs import (
    is_done,
    output_extra,
    read_job,
    segment_image,
    write_outputs,
)
from ovseg.inference.ray_engine import PoolWorker, RayResources, map_on_ray
from ovseg.inference.spec import PredictorSpec
from ovseg.inference.storage import as_path


def read_row(item: dict) -> dict:
    """Ray task: the job's image, decoded (``image``), or its read failure (``failure``, JSON
    text; ``image`` is then a 1x1 placeholder)."""
    image, failure = read_job(as_path(item["source"]))
    if image is None:
        image = np.zeros((1, 1, 3), np.uint8)
    return {**item, "image": image, "failure": json.dumps(failure) if failure else ""}


class SegmentWorker(PoolWorker):
    """A Ray actor holding one ``Predictor``: segments an image and writes its files."""

    stage = "segment"

    def setup(self, spec: PredictorSpec, class_names: list[str], alpha: float, force: bool):
        self.predictor = spec.build()
        self.predict_kwargs = spec.predict_kwargs()
        # what the JSON records, after building (as the local engine does: building may have
        # fetched a file that the driver's record found missing)
        self.record = spec.record()
        self.class_names = class_names
        self.alpha = alpha
        self.force = force

    def process(self, row: dict) -> dict:
        if row["failure"]:
            return {"status": "failed", "failure": json.loads(row["failure"])}
        source, folder, stem = as_path(row["source"]), as_path(row["folder"]), row["stem"]
        if not self.force and is_done(folder, stem, self.class_names, self.record):
            return {"status": "done", "detail": {"note": "written by an earlier attempt"}}
        image = np.asarray(row["image"])
        seg, stats = segment_image(self.predictor, image, self.class_names, self.predict_kwargs)
        extra = output_extra(source, self.class_names, self.record)
        started = time.perf_counter()
        write_outputs(seg, folder, stem, image, self.alpha, extra)
        return {"status": "done", "detail": {**stats, "write_s": time.perf_counter() - started}}


def segment_on_ray(
    todo: list[tuple],
    spec: PredictorSpec,
    class_names: list[str],
    alpha: float,
    force: bool,
    resources: RayResources,
) -> Iterator[dict]:
    """Segment the jobs ``(image, output folder, stem)`` of ``todo`` on Ray; yield one result
    per image as it finishes (``ray_engine.PoolWorker``: ``key`` = the image, ``status``
    "done" or "failed", ``failure`` and ``detail`` as JSON text, ``pid``, ``setup_s``).

    Call inside ``ray_engine.ray_session``."""
    items = [
        {"key": str(image), "source": str(image), "folder": str(folder), "stem": stem}
        for image, folder, stem in todo
    ]
    setup = {"spec": spec, "class_names": class_names, "alpha": alpha, "force": force}
    yield from map_on_ray(items, read_row, SegmentWorker, setup, resources)
