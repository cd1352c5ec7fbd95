"""The work behind ``ovseg eval`` (the parser lives in ``ovseg/cli/eval.py``)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ovseg.cli._engine import ray_resources, set_local_threads
from ovseg.data.datasets import SemSegDataset, build_dataset
from ovseg.data.datasets.base import read_index_map
from ovseg.data.image import read_image
from ovseg.evaluation.loop import ConfusionCache, PredictFn, evaluate_dataset
from ovseg.evaluation.report import format_table, save_bar_chart, write_json
from ovseg.inference.segmentation import unlabelled_as_negative, unlabelled_png_values


def run_eval(args: argparse.Namespace) -> int:
    _check_args(args)
    resources = ray_resources(args)
    if resources is not None and args.predictions:
        raise ValueError(
            "--engine ray runs the model's predictions; --predictions scores saved PNGs here"
        )
    if resources is None:
        set_local_threads(args)
    rank, world_size, own_group = _init_distributed(args)
    if resources is not None and world_size > 1:
        raise ValueError("--engine ray and torchrun are two ways to scale out; use one of them")
    try:
        dataset = build_dataset(args.dataset, args.root, args.split)
        if args.limit is not None:
            dataset.items = dataset.items[: max(0, args.limit)]
        vocabulary = _vocabulary(args, dataset)
        predict_batch = None
        if args.predictions:
            settings, predict, key = _predictions_mode(args, dataset)
        else:
            settings, predict, predict_batch, key = _model_mode(args, dataset, vocabulary)
        key.update(
            dataset=dataset.name,
            root=str(dataset.root.resolve()),
            split=dataset.split,
            vocabulary=hashlib.sha256("\n".join(vocabulary).encode()).hexdigest(),
            settings=[name for name, _ in settings],
        )
        run_settings = key.get("run_settings")  # part of the cache key
        cache = _cache(args, key)
        if resources is None:
            evaluators = evaluate_dataset(
                dataset,
                predict,
                [name for name, _ in settings],
                class_names=dataset.class_names,
                seen_classes=_seen_classes(args.seen_classes),
                cache=cache,
                rank=rank,
                world_size=world_size,
                progress=not args.quiet,
                predict_batch=predict_batch if args.batch_size > 1 else None,
                batch_size=args.batch_size,
            )
        else:
            from ovseg.evaluation.ray_eval import evaluate_on_ray

            evaluators = evaluate_on_ray(
                dataset,
                functools.partial(worker_predict, args, dataset, vocabulary),
                [name for name, _ in settings],
                resources,
                class_names=dataset.class_names,
                seen_classes=_seen_classes(args.seen_classes),
                cache=cache,
                progress=not args.quiet,
            )
        results = {name: evaluators[name].compute() for name, _ in settings}
        if rank == 0:
            _report(args, dataset, settings, results, run_settings)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size > 1 and (args.predictions or args.oracle):
        raise ValueError(
            "--batch-size batches the model's predictions; --predictions and --oracle score "
            "one image at a time (leave --batch-size at 1)"
        )
    model_given = any(getattr(args, k, None) for k in ("model", "checkpoint", "config", "weights"))
    if args.predictions:
        if model_given or args.oracle or args.sweep:
            raise ValueError(
                "--predictions scores saved PNGs; do not combine it with a model, "
                "--oracle or --sweep"
            )
    if (args.tta or args.tta_sizes or args.sliding_window) and (args.predictions or args.oracle):
        raise ValueError(
            "--tta / --tta-sizes / --sliding-window apply to the model's predictions; they do "
            "not combine with --predictions or --oracle"
        )
    if args.sweep and args.oracle:
        raise ValueError(
            "--sweep grid-searches the model's ensemble; it does not apply to --oracle"
        )
    if args.sweep and (not args.lambdas or not args.thresholds):
        raise ValueError("--sweep needs at least one value in --lambdas and in --thresholds")


def _init_distributed(args: argparse.Namespace) -> tuple[int, int, bool]:
    """(rank, world size, whether we created the process group) from the torchrun env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, False
    import torch

    device = getattr(args, "device", "cpu") or "cpu"
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _read_names(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"class-name file {file} does not exist")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _vocabulary(args: argparse.Namespace, dataset: SemSegDataset) -> list[str]:
    if not args.vocabulary:
        return list(dataset.class_names)
    names = _read_names(args.vocabulary)
    if len(names) != dataset.num_classes:
        raise ValueError(
            f"--vocabulary {args.vocabulary} has {len(names)} names; {dataset.name} has "
            f"{dataset.num_classes} classes and the names must follow its class order"
        )
    return names


def _seen_classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    from ovseg.data.datasets import DATASETS

    if value in DATASETS:
        return list(DATASETS[value].class_names)
    return _read_names(value)


def _predictions_mode(args, dataset: SemSegDataset):
    folder = Path(args.predictions)
    if not folder.is_dir():
        raise FileNotFoundError(f"--predictions folder {folder} does not exist")
    k = dataset.num_classes

    def predict(index: int, gt: np.ndarray) -> dict[str, np.ndarray]:
        path = folder / f"{dataset[index].stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"no prediction {path} for image {dataset[index].image}")
        pred = unlabelled_as_negative(read_index_map(path), k)
        if pred.shape != gt.shape:
            raise ValueError(
                f"{path}: prediction is {pred.shape[0]}x{pred.shape[1]} (HxW) but the ground "
                f"truth {dataset[index].label} is {gt.shape[0]}x{gt.shape[1]}"
            )
        if pred.max() >= k:
            raise ValueError(
                f"{path}: prediction values up to {int(pred.max())}, but {dataset.name} has "
                f"classes 0..{k - 1} (unlabelled: {unlabelled_png_values(k)})"
            )
        return {"default": pred}

    key = {"predictions": str(folder.resolve())}
    return [("default", {})], predict, key


def _model_mode(args, dataset: SemSegDataset, vocabulary: list[str]):
    from ovseg.cli._spec import predictor_spec
    from ovseg.digest import tensor_digest
    from ovseg.evaluation import oracles

    spec = predictor_spec(args)
    model = spec.model.load()
    generator = spec.proposals.build(model, "eval")
    k = dataset.num_classes
    cfg = model.config
    options = {k: str(v) for k, v in sorted(spec.proposals.options.items())}
    key = {
        "model": tensor_digest(model.state_dict()),
        "proposals": args.proposals,
        "proposal_options": options,  # e.g. another SAM checkpoint must not reuse the cache
        "oracle": args.oracle,
    }
    resolved = spec.options.resolved(model.device)  # the dtypes 'auto' picks here
    dtype, text_dtype = resolved.dtype, resolved.text_dtype
    if dtype != "fp32" or text_dtype != "fp32":  # fp32 keys stay as they were
        key["dtype"] = dtype
        key["text_dtype"] = text_dtype  # int8 once meant int8 text too: those entries miss
    if spec.options.tf32:  # TF32 arithmetic is not the exact path's
        key["tf32"] = True

    def image(index: int) -> np.ndarray:
        return read_image(dataset[index].image)

    predict: PredictFn
    key["run_settings"] = {
        "mode": "eval",
        "oracle": args.oracle,
        "templates": getattr(cfg, "text_templates", "vild"),
        "proposals": args.proposals,
    }
    if args.oracle == "gt-masks":
        classify = oracles.CLIPMaskClassifier(model, vocabulary)

        def predict(index, gt):
            return {"default": oracles.gt_mask_oracle(image(index), gt, classify, k)}

        return [("default", {})], predict, None, key
    if args.oracle == "proposal-oracle":
        proposer = oracles.ModelProposer(model, generator)

        def predict(index, gt):
            return {"default": oracles.proposal_oracle(image(index), gt, proposer, k)}

        return [("default", {})], predict, None, key

    import ovseg
    from ovseg.cli._common import augmentation_settings
    from ovseg.evaluation.settings import eval_ensemble_weight

    predictor = ovseg.Predictor(model, proposal_generator=generator, options=spec.options)
    weight = eval_ensemble_weight(dataset.name, cfg.ensemble_weight, args.ensemble_weight)
    threshold = cfg.mask_threshold if args.mask_threshold is None else float(args.mask_threshold)
    key["run_settings"].update(
        ensemble_weight=weight,
        mask_threshold=threshold,
        clip_only=bool(args.clip_only) or cfg.clip_only_default,
        tta=augmentation_settings(predictor.augmentation),
        min_size_test=cfg.min_size_test,
        max_size_test=cfg.max_size_test,
        dtype=dtype,
        text_dtype=text_dtype,
    )
    if args.sweep:
        settings = [
            (f"lambda={lam:g},thr={thr:g}", {"ensemble_weight": lam, "mask_threshold": thr})
            for lam in args.lambdas
            for thr in args.thresholds
        ]
    else:
        settings = [("default", {"ensemble_weight": weight, "mask_threshold": threshold})]
    common = eval_predict_kwargs(args)
    key["run_settings"].update(
        mode="eval",
        templates=common.get("templates") or cfg.text_templates,
        clip_ensemble=common.get("clip_ensemble", cfg.clip_ensemble),
    )
    key.update(clip_only=bool(args.clip_only), options=[opts for _, opts in settings])
    if len(common) > 2:  # keys added only when used, so that existing caches stay valid
        key.update(predict=common)
    weights = [opts.get("ensemble_weight") for _, opts in settings]
    if any((model.config.ensemble_weight if w is None else w) == 0 for w in weights):
        key.update(lambda_zero="clip-alone")  # older caches held the proposal branch alone

    def predict(index, gt):
        predictor.set_image(image(index))
        return {
            name: predictor.predict(vocabulary, **common, **opts).official_label_map
            for name, opts in settings
        }

    def predict_batch(indices, gts):  # --batch-size: Predictor.set_images / predict_batch
        predictor.set_images([image(index) for index in indices])
        per_setting = {
            name: predictor.predict_batch(vocabulary, **common, **opts) for name, opts in settings
        }
        return [
            {name: segs[j].official_label_map for name, segs in per_setting.items()}
            for j in range(len(indices))
        ]

    return settings, predict, predict_batch, key


def worker_predict(args, dataset: SemSegDataset, vocabulary: list[str]) -> PredictFn:
    """The prediction function of the model mode, built in a Ray worker (``--engine ray``):
    the same model, settings and predictions as this process's."""
    return _model_mode(args, dataset, vocabulary)[1]


def eval_predict_kwargs(args) -> dict:
    """The ``predict`` options every setting shares: always eval mode (the official
    evaluation), plus ``--clip-only``, ``--no-clip-ensemble`` and ``--templates``."""
    out = {"mode": "eval", "clip_only": True if args.clip_only else None}
    if getattr(args, "no_clip_ensemble", False):
        out["clip_ensemble"] = False
    if getattr(args, "templates", None):
        out["templates"] = args.templates
    return out


def _cache(args, key: dict) -> ConfusionCache | None:
    if args.no_cache or (args.predictions and not args.cache):
        return None
    folder = args.cache
    if not folder:
        from ovseg.fileio import ovseg_home

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = ovseg_home() / "eval-cache" / f"{key['dataset']}-{key['split']}-{digest}"
    return ConfusionCache(folder, key)


def _report(
    args, dataset: SemSegDataset, settings, results: dict[str, dict], run_settings: dict | None
) -> None:
    title = f"{dataset.name} {dataset.split}: {len(dataset)} images"
    payload = {"dataset": dataset.name, "split": dataset.split, "num_images": len(dataset)}
    if args.oracle:
        payload["oracle"] = args.oracle
    if len(settings) == 1:
        best_name = settings[0][0]
        print(format_table(results[best_name], title=title, per_class=args.per_class))
        payload.update(settings[0][1])
    else:
        best_name = _print_sweep(dataset, settings, results)
        payload["sweep"] = [
            {**opts, **{k: v for k, v in results[name].items() if not k.startswith("per_class")}}
            for name, opts in settings
        ]
        payload["best"] = dict(settings)[best_name]
    if run_settings is not None:  # every setting the scores were made with
        payload["settings"] = {**run_settings, **dict(settings)[best_name]}
    payload.update(results[best_name])
    chart = args.chart or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if chart:
        save_bar_chart(results[best_name], chart, title=f"{dataset.name} {dataset.split}")
        print(f"wrote {chart}")


def _print_sweep(dataset, settings, results) -> str:
    """Print the mIoU grid (lambda rows x threshold columns); return the best setting's name."""
    lambdas = sorted({opts["ensemble_weight"] for _, opts in settings})
    thresholds = sorted({opts["mask_threshold"] for _, opts in settings})
    by_opts = {(o["ensemble_weight"], o["mask_threshold"]): results[n]["mIoU"] for n, o in settings}
    print(f"{dataset.name} {dataset.split}: mIoU over lambda (rows) x mask threshold (columns)")
    print("  lambda " + "".join(f"{t:>9g}" for t in thresholds))
    for lam in lambdas:
        row = "".join(
            f"{v:>9.2f}" if (v := by_opts.get((lam, t))) is not None else f"{'n/a':>9}"
            for t in thresholds
        )
        print(f"  {lam:<6g} {row}")
    scored = [(results[n]["mIoU"], n) for n, _ in settings if results[n]["mIoU"] is not None]
    best_name = max(scored, key=lambda pair: pair[0])[1] if scored else settings[0][0]
    opts = dict(settings)[best_name]
    miou = results[best_name]["mIoU"]
    print(
        f"best for {dataset.name}: lambda={opts['ensemble_weight']:g} "
        f"mask_threshold={opts['mask_threshold']:g} mIoU={'n/a' if miou is None else f'{miou:.2f}'}"
    )
    return best_name
