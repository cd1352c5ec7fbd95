"""CLIP adaptation learns on real data: FT of the tiny CLIP on CamVid ground-truth crops.

    PYTHONPATH=. python benchmarks/clip_camvid.py --train-pairs P --val-pairs V --out RUN
        [--loss contrastive] [--steps 300] [--lr 1e-3] [--batch-size 32]

Make the pairs first (one crop per image and class present, 11 classes):

    python -m ovseg.train.semseg_pairs --dataset camvid --data CAMVID --split train \
        --out P --max-images 200
    python -m ovseg.train.semseg_pairs --dataset camvid --data CAMVID --split val \
        --out V --max-images 60

The model is ``ovseg-test-tiny``'s CLIP with seeded random weights (no pretrained CLIP is
available offline), so "before" is chance level. The run uses the ``ft-vitB16`` recipe (the
tiny CLIP has 16-px patches: contrastive loss, learned logit scale, raw-noun text, the crop
augmentation, AdamW betas (0.9, 0.98), eps 1e-6, the official decay groups, linear warmup then
cosine) at small scale: batch 32 instead of 512, a few hundred steps, and lr 1e-3 instead of
5e-6 (5e-6 fine-tunes a pretrained CLIP; a random one does not move at that rate). Held-out
accuracy: the val crops classified against the 11 class names, every ``--eval-every`` steps.
Writes ``RUN/result.json`` and ``RUN/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import ovseg
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.variants import MODELS
from ovseg.train.clip_adaptation import ClipOptions, recipe_train_config, train_clip
from ovseg.train.clip_recipes import get_recipe
from ovseg.train.semseg_pairs import crop_accuracy

LOGGED = ("batch_size", "max_steps", "lr", "weight_decay", "warmup_steps", "adam_betas",
          "adam_eps")  # fmt: skip
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", required=True)
    parser.add_argument("--val-pairs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", default="ft-vitB16")
    parser.add_argument("--loss", default=None, help="override: vocabulary-ce")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = [n.strip() for n in (CAMVID / "classes.txt").read_text().splitlines() if n.strip()]
    recipe = get_recipe(args.recipe)
    init = out / "init.safetensors"
    if not init.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ovseg.save_checkpoint(build_ovseg(MODELS["ovseg-test-tiny"]()), init)
    prompts = recipe.mode != "ft"
    before = crop_accuracy(ovseg.load_checkpoint(init), args.val_pairs, classes, prompts)
    options = ClipOptions.from_recipe(recipe)
    if args.loss:
        options = replace(options, loss=args.loss)
    config = recipe_train_config(
        recipe,
        str(out / "run"),
        batch_size=args.batch_size,
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        warmup_factor=1.0 / args.warmup_steps,
        precision="fp32",  # faster than bf16 for the tiny model on CPU
        device="cpu",
        eval_every=args.eval_every,
        log_every=10,
        checkpoint_every=100,
    )
    start = time.perf_counter()
    path = train_clip(
        args.train_pairs,
        str(init),
        recipe.mode,
        config,
        options,
        evaluate=lambda m: crop_accuracy(m, args.val_pairs, classes, prompts),
    )
    seconds = time.perf_counter() - start
    after = crop_accuracy(ovseg.load_checkpoint(path), args.val_pairs, classes, prompts)
    result = {
        "recipe": recipe.name,
        "options": repr(options),
        "train_config": {k: getattr(config, k) for k in LOGGED},
        "train_pairs": sum(1 for _ in open(Path(args.train_pairs) / "pairs.jsonl")),
        "val_pairs": sum(1 for _ in open(Path(args.val_pairs) / "pairs.jsonl")),
        "before": before,
        "after": after,
        "train_seconds": round(seconds, 1),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    from ovseg.train.plots import plot_run

    plot_run(out / "run", out / "curves.png", f"{recipe.name} (small scale) on CamVid GT crops")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
