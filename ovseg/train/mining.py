"""Mask-category pairs mined from captions (paper section 3.2): CLIP adaptation's training data.

Three modes, as in the paper's ablation:

- ``gt-gt``: every ground-truth instance mask with its ground-truth class name;
- ``gt-caption``: caption nouns, each paired with the best-matching ground-truth mask;
- ``proposal-caption`` (the paper's choice): caption nouns, each paired with the
  best-matching mask proposal of the model (or of ``--proposals``).

"Best-matching" is the cosine similarity between the noun's text embedding
(``model.encode_text``, 14 ViLD templates) and the CLIP-branch embedding of the mask's masked
crop, made exactly as inference makes it: the mask binarised at the model's threshold,
``ovseg.data.masked_crops.masked_crops`` with the model's fill and expand ratio, and
``model.clip_adapter.encode_masked`` with mask prompts. Ties go to the first mask.

With several captions per image, a noun already paired in this image by an earlier caption
is not paired again (counted as ``repeated_noun``). Skips, by reason (unit in brackets):
``missing_image`` [image], ``corrupt_image`` [image], ``no_captions`` [image],
``no_nouns`` [caption], ``no_valid_masks`` [image: no proposal or GT mask survives
binarisation], ``no_gt_instances`` [image, GT modes], ``gt_size_mismatch`` [image, GT modes:
decoded size differs from the annotation's], ``crowd_masks`` [GT crowd region, not used],
``empty_gt_masks`` [GT region empty at the model-input size],
``repeated_noun`` [noun].
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.data.coco_captions import CocoCaptions
from ovseg.data.image import read_image
from ovseg.data.transforms import CLIP_MEAN, CLIP_STD, resize_shortest_edge
from ovseg.train.pair_shards import ShardWriter, empty_stats, shard_done, write_json_atomic

MODES = ("gt-gt", "gt-caption", "proposal-caption")
CAPTIONS_PER_IMAGE = ("1", "all")
SKIP_REASONS = (
    "missing_image",
    "corrupt_image",
    "no_captions",
    "no_nouns",
    "no_valid_masks",
    "no_gt_instances",
    "gt_size_mismatch",
    "crowd_masks",
    "empty_gt_masks",
    "repeated_noun",
)


@dataclass
class Pair:
    """One mined pair. ``crop``: (S, S, 3) uint8; ``region``: (S, S) bool; ``record``: JSON."""

    crop: np.ndarray
    region: np.ndarray
    record: dict


def crops_to_uint8(crops: torch.Tensor) -> np.ndarray:
    """(V, 3, S, S) CLIP-normalised crops -> (V, S, S, 3) uint8: un-normalise, round, clamp."""
    mean = crops.new_tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0
    std = crops.new_tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0
    pixels = (crops.float() * std + mean).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class PairMiner:
    """Pairs masks of one image with nouns, scoring crops as the model's CLIP branch does.

    Args:
        model: an ``OVSeg`` in eval mode.
        mode: one of ``MODES``.
        proposal_generator: callable (3, H, W) uint8 -> ``Proposals``; default ``model.propose``.
        mask_threshold: binarisation threshold; default the model's ``config.mask_threshold``.
    """

    def __init__(self, model, mode: str, proposal_generator=None, mask_threshold=None):
        if mode not in MODES:
            raise ValueError(f"unknown mining mode {mode!r}; choose one of {MODES}")
        self.model = model
        self.mode = mode
        self.generator = proposal_generator or model.propose
        cfg = model.config
        self.mask_threshold = cfg.mask_threshold if mask_threshold is None else mask_threshold
        self._text: dict[str, torch.Tensor] = {}

    def text_features(self, names: list[str]) -> torch.Tensor:
        """(K, C) normalised text features. Each name is encoded on its own, so a name's
        feature never depends on which other names share its batch (1 vs N processes)."""
        for name in names:
            if name not in self._text:
                if len(self._text) >= 100_000:
                    self._text.clear()
                self._text[name] = self.model.encode_text([name])[0]
        return torch.stack([self._text[name] for name in names])

    def masked_crops(self, image: torch.Tensor, binary: torch.Tensor):
        """The CLIP branch's crops of (N, H, W) bool masks, with the model's settings."""
        return self.model.binary_crops(image, binary)

    @torch.no_grad()
    def encode(self, crops) -> torch.Tensor:
        """(V, C) normalised CLIP-branch features of ``MaskedCrops``."""
        return F.normalize(self.model.encode_crops(crops), dim=-1)

    @torch.no_grad()
    def image_pairs(
        self,
        image: np.ndarray,
        captions: list[tuple[int, str, list[str]]],
        gt: list[tuple[int, str, np.ndarray]] | None,
        skipped: Counter,
    ) -> list[Pair]:
        """Mine one image.

        Args:
            image: (H0, W0, 3) uint8 RGB as decoded.
            captions: (caption id, caption, nouns) to pair; unused in ``gt-gt``.
            gt: (annotation id, class name, (H0, W0) bool mask) for the GT modes, else None.
            skipped: counter of skip reasons, updated in place.
        """
        cfg = self.model.config
        resized = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
        tensor = (
            torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous().to(self.model.device)
        )
        h, w = tensor.shape[-2:]
        if gt is None:
            binary = self.generator(tensor).masks.to(self.model.device) > self.mask_threshold
            ids = list(range(binary.shape[0]))
        else:
            stack = torch.from_numpy(np.stack([m for _, _, m in gt])).float()
            binary = F.interpolate(stack[None], size=(h, w), mode="nearest")[0].bool()
            binary = binary.to(self.model.device)
            ids = [ann_id for ann_id, _, _ in gt]
        crops = self.masked_crops(tensor, binary)
        if gt is not None:
            skipped["empty_gt_masks"] += int((~crops.valid).sum())
        if crops.crops.shape[0] == 0:
            skipped["no_valid_masks"] += 1
            return []
        features = self.encode(crops)
        valid = crops.valid.nonzero().flatten().tolist()
        base = {"input_size": [int(h), int(w)]}
        if self.mode == "gt-gt":
            names = [gt[i][1] for i in valid]
            scores = (features * self.text_features(names)).sum(-1)
            choices = [(j, names[j], None, None, scores[j]) for j in range(len(valid))]
        else:
            choices, seen = [], set()
            for caption_id, caption, nouns in captions:
                fresh = [noun for noun in nouns if noun not in seen]
                skipped["repeated_noun"] += len(nouns) - len(fresh)
                seen.update(fresh)
                if not fresh:
                    continue
                sims = features @ self.text_features(fresh).T  # (V, K)
                best = sims.argmax(dim=0)
                for k, noun in enumerate(fresh):
                    j = int(best[k])
                    choices.append((j, noun, caption_id, caption, sims[j, k]))
        chosen = sorted({choice[0] for choice in choices})
        uint8 = dict(zip(chosen, crops_to_uint8(crops.crops[chosen])))
        regions = dict(zip(chosen, crops.region_masks[chosen, 0].bool().cpu().numpy()))
        pairs = []
        for j, noun, caption_id, caption, score in choices:
            index = valid[j]
            record = {
                **base,
                "noun": noun,
                "score": round(float(score), 6),
                "caption_id": caption_id,
                "caption": caption,
                "box": [int(v) for v in crops.boxes[j].tolist()],
                "mask_index": index if gt is None else None,
                "annotation_id": ids[index] if gt is not None else None,
            }
            pairs.append(Pair(uint8[j], regions[j], record))
        return pairs


def _gt_masks(dataset: CocoCaptions, image_id: int, shape, skipped: Counter):
    """(annotation id, class name, bool mask) of the non-crowd instances, or None to skip."""
    info = dataset.images[image_id]
    if (info["height"], info["width"]) != tuple(shape[:2]):
        skipped["gt_size_mismatch"] += 1
        return None
    found = []
    for ann in dataset.instances(image_id):
        if ann.get("iscrowd", 0):
            skipped["crowd_masks"] += 1
            continue
        mask = dataset.coco.annToMask(ann).astype(bool)
        found.append((ann["id"], dataset.category_name(ann["category_id"]), mask))
    if not found:
        skipped["no_gt_instances"] += 1
        return None
    return found


def mine_shard(
    miner: PairMiner,
    dataset: CocoCaptions,
    images_dir: Path,
    image_ids: list[int],
    captions_per_image: str,
    writer: ShardWriter,
    nouns=None,
    progress=None,
) -> dict:
    """Mine the images ``image_ids`` into ``writer``; returns the shard's statistics.

    ``nouns`` is a ``NounExtractor`` (not needed in ``gt-gt``); the shard's captions are
    parsed together in one batched pass.
    """
    stats, skipped, noun_counts = empty_stats(), Counter(), Counter()
    selected = {}
    for image_id in image_ids:
        caps = dataset.captions(image_id)
        selected[image_id] = caps[:1] if captions_per_image == "1" else caps
    flat = [text for caps in selected.values() for _, text in caps]
    parsed = iter(nouns.extract(flat)) if miner.mode != "gt-gt" else iter(())
    for image_id in image_ids:
        caps = [(cid, text, next(parsed, [])) for cid, text in selected[image_id]]
        stats["images"] += 1
        if progress is not None:
            progress.update(1)
        if miner.mode != "gt-gt":
            stats["captions"] += len(caps)
            if not caps:
                skipped["no_captions"] += 1
                continue
            skipped["no_nouns"] += sum(1 for _, _, n in caps if not n)
            caps = [c for c in caps if c[2]]
            if not caps:
                continue
        info = dataset.images[image_id]
        try:
            image = read_image(Path(images_dir) / info["file_name"])
        except FileNotFoundError:
            skipped["missing_image"] += 1
            continue
        except ValueError:
            skipped["corrupt_image"] += 1
            continue
        gt = None
        if miner.mode != "proposal-caption":
            gt = _gt_masks(dataset, image_id, image.shape, skipped)
            if gt is None:
                continue
        pairs = miner.image_pairs(image, caps, gt, skipped)
        stats["images_with_pairs"] += bool(pairs)
        for n, pair in enumerate(pairs):
            record = {"image_id": image_id, "file_name": info["file_name"], **pair.record}
            writer.add(f"{image_id:012d}_{n:03d}", pair.crop, pair.region, record)
            noun_counts[pair.record["noun"]] += 1
        stats["pairs"] += len(pairs)
    unknown = set(skipped) - set(SKIP_REASONS)
    if unknown:
        raise RuntimeError(f"skip reasons {sorted(unknown)} are not listed in SKIP_REASONS")
    stats["skipped"] = {reason: skipped[reason] for reason in SKIP_REASONS}
    stats["noun_counts"] = dict(sorted(noun_counts.items()))
    return stats


def check_or_write_run_config(out_dir: Path, config: dict) -> None:
    """Record the run's settings in ``config.json``; a resume with other settings is an error."""
    path = Path(out_dir) / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
            raise ValueError(
                f"{out_dir} holds a mining run with other settings ({changes}); "
                "use a new --out folder or the original settings"
            )
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config)


def mine(
    model,
    dataset: CocoCaptions,
    images_dir: str | Path,
    out_dir: str | Path,
    mode: str,
    captions_per_image: str = "1",
    images_per_shard: int = 1000,
    proposal_generator=None,
    mask_threshold: float | None = None,
    run_info: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
    nouns=None,
) -> int:
    """Mine this rank's unfinished shards (``rank::world_size``); returns the shard count.

    Finished shards are skipped, so re-running the same call resumes. Merge with
    ``ovseg.train.pair_shards.merge_shards`` once every rank is done.

    Args:
        run_info: extra settings recorded in ``config.json`` (model name, proposal source).
        on_shard_done: called with each shard index after it is committed.
        nouns: a ``NounExtractor`` to reuse; by default one is loaded when a mode needs it.
    """
    if captions_per_image not in CAPTIONS_PER_IMAGE:
        raise ValueError(f"captions_per_image must be one of {CAPTIONS_PER_IMAGE}")
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    if mode != "proposal-caption" and dataset.coco is None:
        raise ValueError(f"mode {mode} needs the instance annotations (--instances JSON)")
    if not dataset.image_ids:
        raise ValueError("the caption file lists no images")
    out_dir = Path(out_dir)
    miner = PairMiner(model, mode, proposal_generator, mask_threshold)
    num_shards = -(-len(dataset.image_ids) // images_per_shard)
    config = {
        "mode": mode,
        "captions_per_image": captions_per_image,
        "images_per_shard": images_per_shard,
        "mask_threshold": miner.mask_threshold,
        "images": len(dataset.image_ids),
        "images_digest": dataset.digest(),
        "shards": num_shards,
        **(run_info or {}),
    }
    check_or_write_run_config(out_dir, config)
    todo = [k for k in range(rank, num_shards, world_size) if not shard_done(out_dir, k)]
    if not todo:
        return num_shards
    if nouns is None and mode != "gt-gt":
        from ovseg.data.nouns import NounExtractor

        nouns = NounExtractor()
    from tqdm import tqdm

    ids = dataset.image_ids
    total = sum(len(ids[k * images_per_shard : (k + 1) * images_per_shard]) for k in todo)
    bar = tqdm(total=total, unit="img", desc=f"mine rank {rank}", disable=not progress)
    try:
        for k in todo:
            writer = ShardWriter(out_dir, k)
            try:
                shard_ids = ids[k * images_per_shard : (k + 1) * images_per_shard]
                stats = mine_shard(
                    miner,
                    dataset,
                    Path(images_dir),
                    shard_ids,
                    captions_per_image,
                    writer,
                    nouns,
                    bar,
                )
            except BaseException:
                writer.abort()
                raise
            writer.commit(stats)
            if on_shard_done is not None:
                on_shard_done(k)
    finally:
        bar.close()
    return num_shards
