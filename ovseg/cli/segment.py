"""``ovseg segment IMAGE_OR_DIR... --classes "a, b; c"``: label maps, overlays and JSON.

For each image it writes ``<stem>.png`` (label map: pixel value = class index),
``<stem>_overlay.png`` (colours + legend) and ``<stem>.json`` (per-segment label, score, area,
COCO RLE). Folders are walked recursively and mirrored under ``--out``. An image whose JSON
already exists for the same vocabulary is skipped unless ``--force``, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ovseg.cli._common import add_model_args, load_model_from_args
from ovseg.cli._proposals import add_proposal_args, proposal_generator_from_args

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with any list of class names",
        description="Segment images (files or folders) with a vocabulary. Writes, per image, "
        "the label map PNG, a coloured overlay PNG with a legend, and a JSON file with COCO "
        "RLE masks.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images or folders")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--classes", help='class names separated by "," or ";", e.g. "sky, tree"')
    vocab.add_argument("--classes-file", help="text file with one class name per line")
    parser.add_argument("--out", default="ovseg-out", help="output folder (default ./ovseg-out)")
    parser.add_argument("--force", action="store_true", help="redo images already done")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight (0..1)")
    parser.add_argument("--ensemble-weight", type=float, help="lambda of the CLIP ensemble")
    parser.add_argument("--mask-threshold", type=float, help="binarisation threshold of masks")
    parser.add_argument("--clip-only", action="store_true", help="classify with CLIP alone")
    add_inference_args(parser)
    parser.add_argument(
        "--timings",
        metavar="JSON",
        help="write start-up and per-image stage times here, including where the text "
        "features came from (computed / disk cache / memory)",
    )
    add_model_args(parser)
    add_proposal_args(parser)
    parser.set_defaults(func=run)


def collect_images(inputs: list[str], out: Path) -> list[tuple[Path, Path, str]]:
    """(image, output folder, file stem) per image; folders are walked and mirrored."""
    jobs: list[tuple[Path, Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                if image.is_file():
                    rel = image.relative_to(path)
                    jobs.append((image, out / path.name / rel.parent, rel.stem))
        elif path.is_file():
            jobs.append((path, out, path.stem))
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    seen: dict[Path, Path] = {}
    for image, folder, stem in jobs:
        key = folder / stem
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {image} would both write {key}.png; "
                f"rename one or segment them in separate runs with different --out"
            )
        seen[key] = image
    if not jobs:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {inputs}")
    return jobs


def is_done(folder: Path, stem: str, class_names: list[str]) -> bool:
    """True when all three outputs exist and the JSON was made with ``class_names``."""
    record = folder / f"{stem}.json"
    if not all(
        p.is_file() for p in (record, folder / f"{stem}.png", folder / f"{stem}_overlay.png")
    ):
        return False
    try:
        return json.loads(record.read_text())["class_names"] == class_names
    except (ValueError, KeyError, OSError):
        return False


def read_vocabulary(args) -> list[str]:
    from ovseg.vocabulary import parse_class_names, read_class_file

    if args.classes_file:
        return read_class_file(args.classes_file)
    return parse_class_names(args.classes)


def make_predictor(args):
    """The ``ovseg.Predictor`` for the model and proposal options in ``args``."""
    from ovseg import InferenceOptions, Predictor

    model = load_model_from_args(args)
    options = InferenceOptions(
        dtype=getattr(args, "dtype", "fp32"), top_k=getattr(args, "top_k", None)
    )
    if options.dtype == "int8" and model.device.type != "cpu":
        raise ValueError(f"--dtype int8 runs on CPU only, not {model.device}; use bf16")
    generator = proposal_generator_from_args(args, model)
    return Predictor(model, proposal_generator=generator, options=options)


def add_inference_args(parser) -> None:
    """Opt-in speed knobs (they change outputs slightly): bf16 weights, top-k proposals."""
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="bf16 runs backbone and CLIP image tower on bf16 weights (fast only on CPUs "
        "with AVX512-BF16/AMX, and GPUs); int8 quantises the CLIP towers' linear layers "
        "(CPU); fp32 (default) is the official computation",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        help="classify only the K proposals with the highest proposal score (default: all)",
    )


def _read(path: Path):
    """(image, None) or (None, error) for one input file; runs in the read-ahead thread."""
    from ovseg.data.image import read_image

    try:
        return read_image(path), None
    except (ValueError, OSError) as error:
        return None, error


def run(args) -> int:
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    class_names = read_vocabulary(args)
    out = Path(args.out)
    jobs = collect_images(args.inputs, out)
    todo = [job for job in jobs if args.force or not is_done(job[1], job[2], class_names)]
    skipped = len(jobs) - len(todo)
    if not todo:
        print(f"all {len(jobs)} image(s) already done in {out} (use --force to redo)")
        return 0
    timings = {"start_to_model_s": None, "images": []}
    start = time.perf_counter()
    predictor = make_predictor(args)
    timings["start_to_model_s"] = time.perf_counter() - start
    options = {
        key: value
        for key, value in (
            ("ensemble_weight", args.ensemble_weight),
            ("mask_threshold", args.mask_threshold),
            ("clip_only", True if args.clip_only else None),
        )
        if value is not None
    }
    failed: list[str] = []
    # Decoding the next images and writing finished ones overlap with the model; both queues
    # are short, so memory stays bounded however many images there are.
    with (
        ThreadPoolExecutor(1, "ovseg-read") as reader,
        ThreadPoolExecutor(1, "ovseg-write") as writer,
    ):
        reads = deque(reader.submit(_read, job[0]) for job in todo[:2])
        writes: deque = deque()
        bar = tqdm(todo, unit="img", disable=len(todo) < 2, file=sys.stderr)
        for i, (image_path, folder, stem) in enumerate(bar):
            bar.set_postfix_str(image_path.name, refresh=False)
            image, error = reads.popleft().result()
            if i + 2 < len(todo):
                reads.append(reader.submit(_read, todo[i + 2][0]))
            if error is not None:
                failed.append(f"{image_path}: {error}")
                tqdm.write(f"ovseg segment: skipping {image_path}: {error}", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            predictor.set_image(image)
            t1 = time.perf_counter()
            seg = predictor.predict(class_names, **options)
            clip = getattr(getattr(predictor, "model", None), "clip_adapter", None)
            text = dict(getattr(clip, "last_text_stats", None) or {})
            if text and (i == 0 or text["source"] != "memory"):
                tqdm.write(
                    f"ovseg segment: text features for {text['classes']} classes x "
                    f"{text['templates']} templates ({text['precision']}): {text['source']} "
                    f"in {text['seconds']:.3f} s",
                    file=sys.stderr,
                )
            timings["images"].append(
                {
                    "image": str(image_path),
                    "set_image_s": t1 - t0,
                    "predict_s": time.perf_counter() - t1,
                    "text": text,
                }
            )
            extra = {"source": str(image_path)}
            writes.append(
                writer.submit(seg.save, folder, stem, image=image, alpha=args.alpha, extra=extra)
            )
            while len(writes) > 2:
                writes.popleft().result()
        for write in writes:
            write.result()
    if args.timings:
        from ovseg.fileio import write_atomic

        write_atomic(Path(args.timings), json.dumps(timings, indent=1).encode())
    done = len(todo) - len(failed)
    print(f"{done} segmented, {skipped} already done, {len(failed)} failed -> {out}")
    return 1 if failed else 0
