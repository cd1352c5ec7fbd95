"""Ground-truth pairs from a semantic-segmentation dataset, and held-out crop accuracy.

``semseg_pairs`` writes one pair per (image, class present): the class's whole region with
its class name, cropped by the model's CLIP-branch crop code (``PairMiner`` in ``gt-gt``
mode), into a pairs folder that ``ovseg train-clip`` reads. This is the semantic-mask form
of the official ``coco_gt_171cls`` data (GT masks of COCO-Stuff's 171 classes, case (1) of
the paper's Table 2: about 8 pairs per image, i.e. one per class present).

    python -m ovseg.train.semseg_pairs --dataset camvid --data DIR --split train --out PAIRS

``crop_accuracy`` classifies the crops of a pairs folder against class names: the
held-out measure of CLIP adaptation (top-1 %, with the ViLD templates as inference uses,
and with the raw names as the official training uses).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.train.pair_shards import ShardWriter, empty_stats, merge_shards, shard_done


def _spread(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def semseg_pairs(
    model,
    source,
    out_dir: str | Path,
    max_images: int | None = None,
    min_pixels: int = 1024,
    shard_size: int = 64,
    progress: bool = True,
) -> dict:
    """Write the GT pairs of ``source`` (``ovseg.train.semseg_data.open_source``) to
    ``out_dir``; returns the merged statistics. Shards already written are kept (resume).

    Args:
        model: an ``OVSeg`` whose crop settings (input size, fill, box expansion) are used.
        max_images: use this many images, spread evenly over the split (None: all).
        min_pixels: skip class regions smaller than this (at the label's resolution).
    """
    from tqdm import tqdm

    from ovseg.train.mining import PairMiner

    out_dir = Path(out_dir)
    indices = _spread(len(source), max_images)
    shards = [indices[i : i + shard_size] for i in range(0, len(indices), shard_size)]
    miner = PairMiner(model.eval(), "gt-gt")
    bar = tqdm(total=len(indices), disable=not progress, desc="gt pairs", dynamic_ncols=True)
    for number, chunk in enumerate(shards):
        if shard_done(out_dir, number):
            bar.update(len(chunk))
            continue
        writer = ShardWriter(out_dir, number)
        stats, skipped, nouns = empty_stats(), Counter(), Counter()
        try:
            for index in chunk:
                image, label = source.load(index)
                stats["images"] += 1
                gt = []
                for c in np.unique(label):
                    region = label == c
                    if c < 0 or region.sum() < min_pixels:
                        continue
                    gt.append((int(c), source.class_names[c], region))
                pairs = miner.image_pairs(image, [], gt, skipped) if gt else []
                stats["images_with_pairs"] += bool(pairs)
                for n, pair in enumerate(pairs):
                    record = {"image_id": index, **pair.record}
                    writer.add(f"{index:06d}_{n:02d}", pair.crop, pair.region, record)
                    nouns[pair.record["noun"]] += 1
                stats["pairs"] += len(pairs)
                bar.update(1)
        except BaseException:
            writer.abort()
            raise
        stats["skipped"] = dict(skipped)
        stats["noun_counts"] = dict(sorted(nouns.items()))
        writer.commit(stats)
    bar.close()
    return merge_shards(out_dir, len(shards))


@torch.no_grad()
def crop_accuracy(
    model, pairs: str | Path, class_names: list[str], use_prompts: bool, batch_size: int = 64
) -> dict[str, float]:
    """Top-1 % of the folder's crops classified against ``class_names`` (cosine with the
    text features): ``accuracy_vild`` (14 ViLD templates, as inference) and ``accuracy_raw``
    (the names alone, as the official training text)."""
    from ovseg.modeling.prompts import VILD_TEMPLATES
    from ovseg.train.pairs import PairDataset, collate_pairs

    dataset = PairDataset(pairs, vocabulary=list(class_names))
    adapter = model.clip_adapter
    was_training = model.training
    model.eval()
    device = adapter.non_object_embedding.device
    texts = {
        "accuracy_vild": adapter.text_features(list(class_names), VILD_TEMPLATES),
        "accuracy_raw": adapter.text_features(list(class_names), ("{}",)),
    }
    correct = dict.fromkeys(texts, 0)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate_pairs(items)
        region = batch["mask"].to(device) if use_prompts else None
        feats = F.normalize(adapter.encode_masked(batch["crop"].to(device), region).float(), dim=-1)
        for key, text in texts.items():
            correct[key] += int(((feats @ text.T).argmax(-1).cpu() == batch["label"]).sum())
    model.train(was_training)
    return {key: round(100.0 * c / len(dataset), 3) for key, c in correct.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True,
                        help="an `ovseg eval` dataset name (camvid, ...) or `folder`")  # fmt: skip
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="pairs folder to write")
    parser.add_argument("--init", help="ovseg checkpoint whose crop settings are used")
    parser.add_argument("--model", default="ovseg-test-tiny",
                        help="without --init: a model name (random weights allowed only for "
                        "ovseg-test-tiny; the crops do not depend on the weights)")  # fmt: skip
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--min-pixels", type=int, default=1024)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import ovseg
    from ovseg.train.semseg_data import open_source

    if args.init:
        model = ovseg.load_checkpoint(args.init)
    else:
        from ovseg.modeling.build import build_ovseg
        from ovseg.modeling.variants import MODELS

        model = build_ovseg(MODELS[args.model]())
    source = open_source(args.dataset, args.data, args.split)
    stats = semseg_pairs(model, source, args.out, args.max_images, args.min_pixels,
                         progress=not args.no_progress)  # fmt: skip
    print(json.dumps({k: stats[k] for k in ("images", "pairs", "unique_nouns")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
