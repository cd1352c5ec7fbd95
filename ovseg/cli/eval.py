"""``ovseg eval``: zero-shot semantic segmentation benchmarks, oracles and sweeps.

Examples::

    ovseg eval --dataset ade20k-150 --root ADEChallengeData2016 --model ovseg-swinB-vitL14
    ovseg eval --dataset camvid --root camvid --predictions preds/ --json camvid.json
    ovseg eval --dataset ade20k-150 --root ADE --model ovseg-swinB-vitL14 --oracle gt-masks
    ovseg eval --dataset pascal-context-59 --root VOC2010 --model ... --sweep
    torchrun --nproc-per-node 2 -m ovseg eval ...      # each rank scores its shard
    ovseg eval ... --engine ray --workers 4            # predictions on Ray actors
"""

from __future__ import annotations

import argparse

from ovseg.cli._common import add_batch_size_arg, add_model_args, add_tta_args
from ovseg.cli._engine import add_engine_args
from ovseg.cli._inference import add_classifier_args, add_dtype_args
from ovseg.cli._proposals import add_proposal_args
from ovseg.data.datasets import list_datasets

SWEEP_LAMBDAS = (0.6, 0.65, 0.7, 0.75, 0.8)
SWEEP_THRESHOLDS = (0.35, 0.4, 0.45)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate zero-shot semantic segmentation (mIoU) on a benchmark",
        description=(
            "Score the model (or saved prediction PNGs) on a benchmark; prints a table and "
            "optionally writes JSON and a per-class IoU chart. Runs under torchrun, one shard "
            "per rank. Per-image confusion counts are cached, so an interrupted run resumes."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=list_datasets())
    data.add_argument("--root", required=True, help="the dataset folder (see docs/evaluation.md)")
    data.add_argument("--split", default=None, help="split to score (default: val)")
    data.add_argument("--limit", type=int, default=None, help="score only the first N images")
    data.add_argument(
        "--vocabulary",
        help="file with K class names, one a line, given to the model instead of the "
        "dataset's own names (same order and count)",
    )
    data.add_argument(
        "--seen-classes",
        help="seen-class names for seen/unseen mIoU: a file (one a line) or a dataset name "
        "(e.g. coco-stuff-171, the training vocabulary)",
    )
    source = parser.add_argument_group("what to score")
    source.add_argument(
        "--predictions",
        help="folder of prediction PNGs (0-based class indices, 8 or 16 bit, named by image "
        "stem; 255 (8-bit) or 65535 = unlabelled, a miss) to score instead of running a model",
    )
    source.add_argument(
        "--oracle",
        choices=["gt-masks", "proposal-oracle"],
        help="gt-masks: GT masks classified by CLIP; proposal-oracle: the model's proposals "
        "labelled with the GT class of highest overlap",
    )
    source.add_argument(
        "--ensemble-weight",
        type=float,
        default=None,
        help="lambda (default: the published evaluation's for the dataset: 0.6 Pascal "
        "Context 59/459, 0.45 Pascal VOC 20; else the model's, 0.7 released)",
    )
    source.add_argument(
        "--mask-threshold", type=float, default=None, help="MASK_THR (default: model's)"
    )
    add_classifier_args(source)
    add_dtype_args(source)
    add_batch_size_arg(source)
    source.add_argument("--sweep", action="store_true", help="grid-search lambda x mask threshold")
    source.add_argument(
        "--lambdas", type=_floats, default=list(SWEEP_LAMBDAS), help="sweep lambdas"
    )
    source.add_argument(
        "--thresholds", type=_floats, default=list(SWEEP_THRESHOLDS), help="sweep mask thresholds"
    )
    add_model_args(parser)
    add_proposal_args(parser)
    add_tta_args(parser)
    add_engine_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--json", help="write the metrics here (JSON)")
    out.add_argument("--chart", help="per-class IoU bar chart PNG (default: next to --json)")
    out.add_argument("--per-class", action="store_true", help="print per-class IoU in the table")
    out.add_argument(
        "--cache", help="per-image confusion cache folder (default: under $OVSEG_HOME)"
    )
    out.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovseg.cli._eval_run import run_eval

    return run_eval(args)
