"""Mined mask-category pairs for CLIP adaptation (the mining output folder).

The folder (written by ``ovseg mine``, ``ovseg.train.pair_shards``) holds ``pairs.jsonl``,
one JSON object per pair with at least ``key``, ``noun`` and ``shard`` (the tar file,
relative to the folder), and webdataset-style tar shards with
``<key>.crop.png`` (the masked crop at the CLIP input size, 0-255 RGB), ``<key>.mask.png``
(its region mask, 0 / 255) and ``<key>.json``. Members are read by offset, so the dataset is
random-access and works with any number of DataLoader workers.

``CropAugment`` is the official training augmentation (open_clip_training
``src/open_clip/transform.py``, ``image_transform(is_train=True, with_mask=...)``):
``RandomResizedCrop(224, scale=(0.9, 1.0), ratio=(3/4, 4/3), BICUBIC)`` on the masked crop,
after which ``Maskget`` takes the region mask to be the pixels that differ from the fill
colour (124, 116, 103). The mask is therefore not resampled on its own: it is the set of
output pixels that the bicubic kernel drew from the region, i.e. the region slightly grown
at its border. ``mask_rule="official"`` reproduces that from our stored mask (it composites
the crop over the official fill, resamples, and compares with the fill);
``mask_rule="nearest"`` is our variant, the stored mask resampled with nearest neighbour.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ovseg.data.transforms import CLIP_MEAN, CLIP_STD

OFFICIAL_MASK_FILL = (124, 116, 103)  # transform.py Maskget(mean=(124, 116, 103))
MASK_RULES = ("official", "nearest")


@dataclass(frozen=True)
class CropAugment:
    """Random resized crop of a masked crop and its region mask (see the module docstring).

    Args:
        scale: range of the crop's area fraction.
        ratio: range of its aspect ratio (sampled log-uniformly).
        mask_rule: "official" (region = pixels differing from the fill after the bicubic
            crop) or "nearest" (the stored mask resampled with nearest neighbour).
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mask_rule: str = "official"

    def __post_init__(self):
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {self.mask_rule!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")

    def box(self, height: int, width: int, seed: int) -> tuple[int, int, int, int]:
        """(top, left, h, w): torchvision's ``RandomResizedCrop.get_params`` drawn from
        ``seed`` (the global RNG is left as it was)."""
        from torchvision.transforms import RandomResizedCrop

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probe = torch.empty(1, height, width)
            return tuple(RandomResizedCrop.get_params(probe, list(self.scale), list(self.ratio)))

    def apply(self, crop: np.ndarray, mask: np.ndarray, box, size: int):
        """Crop ``box`` of (H, W, 3) uint8 ``crop`` and (H, W) bool ``mask``, resized to
        ``size``: returns ((size, size, 3) uint8, (size, size) bool)."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        top, left, h, w = box

        def resample(array, mode):
            return np.array(TF.resized_crop(Image.fromarray(array), top, left, h, w,
                                            [size, size], mode))  # fmt: skip

        image = resample(crop, InterpolationMode.BICUBIC)
        if self.mask_rule == "nearest":
            region = resample(mask.astype(np.uint8) * 255, InterpolationMode.NEAREST) > 0
            return image, region
        fill = np.array(OFFICIAL_MASK_FILL, np.uint8)
        composite = np.where(mask[..., None], crop, fill)
        if not np.array_equal(composite, crop):
            composite = resample(composite, InterpolationMode.BICUBIC)
        else:
            composite = image
        return image, (composite != fill).any(-1)


def read_pairs(folder: str | Path) -> list[dict]:
    """The records of ``folder/pairs.jsonl``, checked for the fields training needs."""
    path = Path(folder) / "pairs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --pairs must be a folder written by `ovseg mine`"
        )
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [k for k in ("key", "noun", "shard") if k not in record]
            if missing:
                raise ValueError(f"{path}:{number}: pair lacks {missing} (has {sorted(record)})")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no pairs")
    return records


class PairDataset(Dataset):
    """Masked crops, region masks and noun indices of mined pairs.

    Args:
        folder: the mining output folder.
        vocabulary: the nouns, in class-index order; None takes the sorted unique nouns.
        image_size: CLIP input size S; crops of another size are an error.
        augment: a ``CropAugment`` (official training), or None (the stored crops as they are).
        seed: the augmentation of item i in epoch e is drawn from (seed, e, i), so it does
            not depend on DataLoader workers and a resumed run sees the same crops.

    Items are ``{"crop": (3, S, S) float CLIP-normalised, "mask": (1, S, S) float {0, 1},
    "label": int64 noun index}``.
    """

    def __init__(
        self,
        folder: str | Path,
        vocabulary: list[str] | None = None,
        image_size: int = 224,
        augment: CropAugment | None = None,
        seed: int = 0,
    ):
        self.folder = Path(folder)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.records = read_pairs(self.folder)
        self.vocabulary = vocabulary or sorted({r["noun"] for r in self.records})
        index = {n: i for i, n in enumerate(self.vocabulary)}
        unknown = sorted({r["noun"] for r in self.records} - set(index))
        if unknown:
            raise ValueError(f"nouns not in the vocabulary: {unknown[:10]}")
        self.labels = [index[r["noun"]] for r in self.records]
        self.image_size = image_size
        self._members: dict[str, dict[str, tuple[int, int]]] = {}
        self._files: dict[str, object] = {}
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])

    def _member_table(self, shard: str) -> dict[str, tuple[int, int]]:
        if shard not in self._members:
            path = self.folder / shard
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} named in pairs.jsonl is missing")
            with tarfile.open(path) as tar:
                self._members[shard] = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
        return self._members[shard]

    def _read(self, shard: str, name: str) -> bytes:
        table = self._member_table(shard)
        if name not in table:
            raise KeyError(f"{self.folder / shard} has no member {name!r}")
        if shard not in self._files:
            self._files[shard] = open(self.folder / shard, "rb")
        offset, size = table[name]
        f = self._files[shard]
        f.seek(offset)
        return f.read(size)

    def __getstate__(self):  # open files do not travel to DataLoader workers
        return {**self.__dict__, "_files": {}}

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        key, shard = record["key"], record["shard"]
        crop = np.array(Image.open(io.BytesIO(self._read(shard, f"{key}.crop.png"))).convert("RGB"))
        mask = np.array(Image.open(io.BytesIO(self._read(shard, f"{key}.mask.png"))).convert("L"))
        s = self.image_size
        if crop.shape[:2] != (s, s) or mask.shape != (s, s):
            raise ValueError(
                f"pair {key} in {shard}: crop {crop.shape[:2]}, mask {mask.shape}; expected {s}x{s}"
            )
        if self.augment is not None:
            box = self.augment.box(s, s, self.item_seed(i))
            crop, mask = self.augment.apply(crop, mask > 0, box, s)
        crop_t = (torch.from_numpy(crop).permute(2, 0, 1).float() - self.mean) / self.std
        return {
            "crop": crop_t,
            "mask": torch.from_numpy(mask > 0).float()[None],
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
        }


def collate_pairs(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
