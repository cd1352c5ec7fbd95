"""``ovseg segment IMAGE_OR_DIR... --classes "a, b; c"``: label maps, overlays and JSON.

For each image it writes ``<stem>.png`` (label map: pixel value = class index, 255 (65535 past
255 classes) = unlabelled), ``<stem>_overlay.png`` (colours + legend) and ``<stem>.json``
(per-segment label, confidence score, area, COCO RLE, and under ``options`` the record of
everything that shaped it: ``PredictorSpec.record()``). The default ``--mode demo`` does what
the official demo does; ``--mode eval`` is the official evaluation's fusion. Folders are walked
recursively and mirrored under ``--out``. An image whose JSON already exists for the same
vocabulary and record is skipped unless ``--force``, so an interrupted run resumes where it
stopped; one made with another model, weights, proposals, TTA, dtype, ... is redone, and the
keys that differ are named.

A video (``.mp4``, ``.mov``, ``.webm``, ``.avi``, ``.mkv``, ``.m4v``) gives ``<stem>_overlay.mp4``,
``<stem>/000000.png ...`` (one label map per frame) and ``<stem>.jsonl`` (one line per frame);
see ``ovseg.inference.video``. A killed run resumes from the frame after the last one done.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from ovseg.cli._common import add_batch_size_arg, add_model_args, add_tta_args
from ovseg.cli._engine import add_engine_args, ray_resources, set_local_threads
from ovseg.cli._inference import add_prediction_args
from ovseg.cli._proposals import add_proposal_args, add_refine_args
from ovseg.cli._spec import predictor_spec
from ovseg.cli._video import add_video_args, segment_video_job, video_record
from ovseg.inference.jobs import (
    FailureLog,
    collect_images,
    failure_record,
    is_video,
    output_extra,
    read_job,
    redo_reasons,
    remove_partial_writes,
    segment_image,
    segment_images,
    write_outputs,
)
from ovseg.inference.storage import UrlPath, as_path, listed
from ovseg.inference.video import video_redo_reasons
from ovseg.timing import collect, process_age_s


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with any list of class names",
        description="Segment images (files or folders) with a vocabulary. Writes, per image, "
        "the label map PNG, a coloured overlay PNG with a legend, and a JSON file with COCO "
        "RLE masks.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, videos or folders of them"
    )
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--classes", help='class names separated by "," or ";", e.g. "sky, tree"')
    vocab.add_argument("--classes-file", help="text file with one class name per line")
    parser.add_argument("--out", default="ovseg-out", help="output folder (default ./ovseg-out)")
    parser.add_argument("--force", action="store_true", help="redo images already done")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight (0..1)")
    add_batch_size_arg(parser)
    parser.add_argument(
        "--save-proposals",
        action="store_true",
        help='add a "proposals" block to each JSON: the masks the fusion used (COCO RLE at '
        "the working size), each one's class probabilities and whether it was kept",
    )
    add_prediction_args(parser)
    add_tta_args(parser)
    parser.add_argument(
        "--timings",
        metavar="JSON",
        help="write start-up and per-image stage times here, including where the text "
        "features came from (computed / disk cache / memory)",
    )
    add_model_args(parser)
    add_proposal_args(parser)
    add_engine_args(parser)
    add_refine_args(parser)
    add_video_args(parser)
    parser.set_defaults(func=run)


def read_vocabulary(args) -> list[str]:
    """The class names of ``--classes`` / ``--classes-file``; merged repeats are reported."""
    from ovseg.vocabulary import parse_vocabulary, read_vocabulary_file

    if args.classes_file:
        vocabulary = read_vocabulary_file(args.classes_file)
    else:
        vocabulary = parse_vocabulary(args.classes)
    if vocabulary.notice:
        print(f"ovseg segment: {vocabulary.notice}", file=sys.stderr)
    return vocabulary.names


def run(args) -> int:
    from tqdm import tqdm

    class_names = read_vocabulary(args)
    resources = ray_resources(args)
    out = as_path(args.out)
    jobs = collect_images(args.inputs, out)
    spec = predictor_spec(args)
    record = spec.record()
    videos = [job for job in jobs if is_video(job[0])]
    if videos and resources is not None:
        raise ValueError(
            f"videos run on the local engine only ({videos[0][0]}): segment them without "
            "--engine ray"
        )

    def reasons_of(job) -> list[str]:
        if args.force:
            return ["--force"]
        if is_video(job[0]):
            return video_redo_reasons(job[1], job[2], class_names, video_record(record, args))
        return redo_reasons(job[1], job[2], class_names, record)

    with listed(out):  # at a URL: one listing, and the JSON files read 16 at a time
        if isinstance(out, UrlPath) and not args.force:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(16) as pool:
                all_reasons = list(pool.map(reasons_of, jobs))
        else:
            all_reasons = [reasons_of(job) for job in jobs]
    todo, changed = [], Counter()
    for job, reasons in zip(jobs, all_reasons):
        if reasons:
            todo.append(job)
            changed.update(r for r in reasons if r != "no outputs")
    skipped = len(jobs) - len(todo)
    if not todo:
        print(f"all {len(jobs)} image(s) already done in {out} (use --force to redo)")
        return 0
    if changed and not args.force:
        what = ", ".join(f"{key} ({n})" for key, n in sorted(changed.items()))
        print(f"ovseg segment: redoing images made with other settings: {what}", file=sys.stderr)
    remove_partial_writes(todo)  # left by a run that was killed while writing
    failures = FailureLog(out)

    def failed(record: dict) -> None:
        failures.add(record)
        tqdm.write(
            f"ovseg segment: skipping {record['source']}: {record['error']}", file=sys.stderr
        )

    if resources is None:
        timings = _run_local(args, todo, spec, class_names, failed)
    else:
        timings = _run_ray(args, todo, spec, class_names, failed, resources)
    failures.close()
    if args.timings:
        from ovseg.fileio import write_atomic

        write_atomic(Path(args.timings), json.dumps(timings, indent=1).encode())
    done = len(todo) - len(failures.records)
    where = f"; failures in {failures.path}" if failures.records else ""
    print(
        f"{done} segmented, {skipped} already done, {len(failures.records)} failed -> {out}{where}"
    )
    return 1 if failures.records else 0


def _run_video(predictor, args, job, class_names, predict_kwargs, record, timings, failed):
    """One video of the local engine; a bad video is a failure, never the run's end."""
    try:
        start = time.perf_counter()
        result = segment_video_job(predictor, args, job, class_names, predict_kwargs, record)
    except (ValueError, OSError) as error:
        failed(failure_record(job[0], "video", error))
        return
    _print_text_stats(result["text"], first=not timings["images"])
    seconds = time.perf_counter() - start
    timings["images"].append({"video": str(job[0]), "seconds": seconds, **result})


def _print_text_stats(text: dict, first: bool) -> None:
    from tqdm import tqdm

    if text and (first or text.get("source") != "memory"):
        tqdm.write(
            f"ovseg segment: text features for {text['classes']} classes x "
            f"{text['templates']} templates ({text['precision']}): {text['source']} "
            f"in {text['seconds']:.3f} s",
            file=sys.stderr,
        )


def _run_local(args, todo, spec, class_names, failed) -> dict:
    """This process: read-ahead and write-behind threads around the model."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    set_local_threads(args)
    predict_kwargs = spec.predict_kwargs()
    # process start -> here: Python, imports (torch, open_clip, ...) and argument parsing
    timings = {"import_s": process_age_s(), "start_to_model_s": None, "images": []}
    start = time.perf_counter()  # t_s of each image counts from here
    with collect() as stages:
        predictor = spec.build()
    timings["start_to_model_s"] = time.perf_counter() - start
    timings.update(getattr(predictor, "choice", None) or {})  # cpu_capabilities, chosen
    record = spec.record()  # again: building may have fetched a file the first one lacked
    timings["weights_read_s"] = stages.get("weights_read", 0.0)
    timings["prepare_s"] = stages.get("prepare", 0.0)  # dtype, int8 quantisation
    timings["model_build_s"] = (
        timings["start_to_model_s"] - timings["weights_read_s"] - timings["prepare_s"]
    )
    # Decoding the next images and writing finished ones overlap with the model; both queues
    # are short, so memory stays bounded however many images there are.
    with (
        ThreadPoolExecutor(1, "ovseg-read") as reader,
        ThreadPoolExecutor(1, "ovseg-write") as writer,
    ):
        size = args.batch_size
        reads = deque(reader.submit(read_job, job[0]) for job in todo[: 2 * size])
        submitted = len(reads)
        writes: deque = deque()
        bar = tqdm(total=len(todo), unit="img", disable=len(todo) < 2, file=sys.stderr)
        for first in range(0, len(todo), size):
            batch = []  # (job, image) of the images that could be read
            for job in todo[first : first + size]:
                image, failure = reads.popleft().result()
                if failure is not None:
                    failed(failure)
                    bar.update(1)
                elif is_video(job[0]):
                    _run_video(
                        predictor, args, job, class_names, predict_kwargs, record, timings, failed
                    )
                    bar.update(1)
                else:
                    batch.append((job, image))
            while submitted < len(todo) and len(reads) < 2 * size:  # read the next batches
                reads.append(reader.submit(read_job, todo[submitted][0]))
                submitted += 1
            if not batch:
                continue
            bar.set_postfix_str(batch[-1][0][0].name, refresh=False)
            done = _segment_batch(predictor, batch, class_names, predict_kwargs, failed)
            for (image_path, folder, stem), image, seg, stats in done:
                if "process_to_first_result_s" not in timings:
                    timings["process_to_first_result_s"] = process_age_s()
                _print_text_stats(stats["text"], first=not timings["images"])
                timings["images"].append(
                    {"image": str(image_path), **stats, "t_s": time.perf_counter() - start}
                )
                extra = output_extra(image_path, class_names, record)
                writes.append(
                    writer.submit(write_outputs, seg, folder, stem, image, args.alpha, extra)
                )
                while len(writes) > 2 * size:
                    writes.popleft().result()
            bar.update(len(batch))
        bar.close()
        for write in writes:
            write.result()
    return timings


def _segment_batch(predictor, batch, class_names, predict_kwargs, failed) -> list[tuple]:
    """``(job, image, Segmentation, stats)`` of each image of ``batch`` (``(job, image)``
    pairs) that could be segmented: all in one ``segment_images`` call, or, for one image or
    when that call fails, one image at a time, so that only an image at fault fails."""
    if len(batch) > 1:
        images = [image for _, image in batch]
        try:
            segs, stats = segment_images(predictor, images, class_names, predict_kwargs)
            return [(job, image, seg, st) for (job, image), seg, st in zip(batch, segs, stats)]
        except Exception:  # noqa: BLE001 - tried again image by image below
            pass
    out = []
    for job, image in batch:
        try:
            seg, stats = segment_image(predictor, image, class_names, predict_kwargs)
        except Exception as error:  # one image fails, never the run
            failed(failure_record(job[0], "segment", error))
            continue
        out.append((job, image, seg, {**stats, "batch": 1}))
    return out


def _run_ray(args, todo, spec, class_names, failed, resources) -> dict:
    """A pool of Ray actors (``ovseg.inference.ray_segment``); a progress bar counts the
    images as they finish."""
    from tqdm import tqdm

    from ovseg.inference.ray_engine import ray_session
    from ovseg.inference.ray_segment import segment_on_ray

    timings: dict = {"import_s": process_age_s(), "engine": resources.settings(), "images": []}
    workers: dict = {}
    start = time.perf_counter()  # t_s of each image counts from here
    with ray_session(resources) as session:
        timings["ray_start_s"] = time.perf_counter() - start
        print(
            f"ovseg segment: Ray {'started here' if session['started'] else 'at'} "
            f"{session['address']} ({session['cpus']:g} CPUs, {session['gpus']:g} GPUs): "
            f"{resources.workers} worker(s) x {resources.threads()} thread(s)",
            file=sys.stderr,
        )
        results = segment_on_ray(todo, spec, class_names, args.alpha, args.force, resources)
        with tqdm(total=len(todo), unit="img", file=sys.stderr) as bar:
            for result in results:
                workers.setdefault(
                    result["pid"],
                    {
                        "host": result["host"],
                        "setup_s": result["setup_s"],
                        "ready_s": result["ready_s"],
                    },
                )
                rate = (bar.n + 1) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:.3g} img/s, {len(workers)} worker(s) seen", False)
                bar.update(1)
                if result["status"] != "done":
                    failed(json.loads(result["failure"]))
                    continue
                detail = json.loads(result["detail"]) or {}
                if "text" in detail:
                    _print_text_stats(detail["text"], first=not timings["images"])
                # an image finished by an attempt whose worker died has a note, no times
                timings["images"].append(
                    {
                        "image": result["key"],
                        "pid": result["pid"],
                        **detail,
                        "item_s": result["item_s"],
                        "ledger_s": result["ledger_s"],
                        "t_s": time.perf_counter() - start,
                    }
                )
    remove_partial_writes(todo)  # a killed worker's temporary files
    timings["workers"] = {str(pid): info for pid, info in workers.items()}
    return timings
