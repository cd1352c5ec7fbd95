"""Tiny models and data folders shared by the training tests (not a test module)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ovseg
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.config import OVSegConfig
from ovseg.modeling.variants import MODELS
from ovseg.train.pair_shards import ShardWriter, empty_stats, merge_shards
from ovseg.train.trainer import TrainConfig

NOUNS = ["cat", "dog", "car", "tree"]


def make_tiny_model(**overrides) -> ovseg.OVSeg:
    config = OVSegConfig.from_dict(MODELS["ovseg-test-tiny"]().to_dict() | overrides)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return build_ovseg(config)


def tiny_checkpoint(path: Path, **overrides) -> Path:
    return ovseg.save_checkpoint(make_tiny_model(**overrides), path)


def pairs_folder(path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        crop = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        crop[..., i % 3] = 40 * (i % 4)
        mask = np.zeros((224, 224), bool)
        mask[16 * (i % 4) : 120 + 10 * (i % 3), 30:200] = True
        pairs.append((NOUNS[i % 4], crop, mask))
    return write_pairs(path, pairs)


def write_pairs(path: Path, pairs: list, per_shard: int = 4) -> Path:
    """Write ``(noun, crop, mask)`` pairs with the mining writer (``ovseg mine``'s format)."""
    shards = range(0, len(pairs), per_shard)
    for index, start in enumerate(shards):
        writer = ShardWriter(path, index)
        for i, (noun, crop, mask) in enumerate(pairs[start : start + per_shard], start):
            writer.add(f"{i:06d}", crop, mask, {"image_id": i, "noun": noun, "score": 1.0})
        writer.commit(empty_stats())
    merge_shards(path, len(shards))
    return path


def semseg_folder(path: Path, n_train: int = 4, n_val: int = 2, size: int = 64) -> Path:
    """A tiny dataset in the CamVid layout: 3 classes (blocks) and some ignore pixels."""
    rng = np.random.default_rng(0)
    (path / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (path / "classes.txt").write_text("sky\nroad\ncar\n")
    colors = np.array([[120, 160, 240], [90, 90, 90], [200, 30, 30]], np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        (path / split / "images").mkdir(parents=True, exist_ok=True)
        (path / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            label[size // 2 :] = 1
            y, x = rng.integers(0, size // 2, 2)
            label[y : y + size // 3, x : x + size // 3] = 2
            label[:2] = 255
            image = colors[np.minimum(label, 2)] + rng.integers(0, 20, (size, size, 3)).astype(
                np.uint8
            )
            Image.fromarray(image).save(path / split / "images" / f"{i:03d}.png")
            Image.fromarray(label).save(path / split / "labels" / f"{i:03d}.png")
    return path


def loop_config(out: Path, **kw) -> TrainConfig:
    base = dict(
        out_dir=str(out),
        batch_size=2,
        max_steps=3,
        lr=1e-3,
        precision="fp32",
        device="cpu",
        log_every=1,
        checkpoint_every=100,
        progress=False,
    )
    return TrainConfig(**(base | kw))
