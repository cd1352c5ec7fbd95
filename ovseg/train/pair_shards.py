"""Storage of mined mask-category pairs: webdataset-style tar shards, resumable and mergeable.

Layout of a mining output folder::

    config.json                  the run's settings; a resume must match them
    shards/pairs-000000.tar      <key>.crop.png, <key>.mask.png, <key>.json per pair
    shards/pairs-000000.jsonl    one line per pair of that shard (same as <key>.json + "shard")
    shards/pairs-000000.stats.json   counts of that shard; written last, it marks the shard done
    pairs.jsonl                  every shard's lines, in shard order (the merge)
    stats.json                   the summed statistics (the merge)
    noun_counts.tsv              pairs per noun, most frequent first (the merge)

Shard ``k`` holds the pairs of images ``k*S .. (k+1)*S - 1`` in image-id order, so the same
images always land in the same shard whichever process mines them. Every file is written to a
temporary name in the same folder and moved into place (``ovseg.fileio``); the tar members
carry fixed metadata (mtime 0, uid 0, mode 0644), so a shard's bytes depend only on its pairs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ovseg.fileio import atomic_path, write_atomic

SHARD_DIR = "shards"


def shard_stem(index: int) -> str:
    return f"pairs-{index:06d}"


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically.

    Every call has its own temporary file, so ranks that write the same file at once (the
    run's ``config.json``) never share one.
    """
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG bytes (deterministic for equal arrays)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class ShardWriter:
    """Streams one shard's pairs to temporary files; ``commit`` moves them into place.

    Args:
        out_dir: the mining output folder.
        index: shard number.
    """

    def __init__(self, out_dir: Path, index: int) -> None:
        self.dir = Path(out_dir) / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stem = shard_stem(index)
        self.tar_path = self.dir / f"{self.stem}.tar"
        self.jsonl_path = self.dir / f"{self.stem}.jsonl"
        self.stats_path = self.dir / f"{self.stem}.stats.json"
        for stale in self.dir.glob(f".{self.stem}.*"):
            stale.unlink()  # temporary files of a killed run; only this process writes them
        self._files = contextlib.ExitStack()
        tar_tmp = self._files.enter_context(atomic_path(self.tar_path))
        jsonl_tmp = self._files.enter_context(atomic_path(self.jsonl_path))
        self._tar = tarfile.open(tar_tmp, "w", format=tarfile.USTAR_FORMAT)
        self._jsonl = open(jsonl_tmp, "w")
        self.keys: set[str] = set()

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, crop: np.ndarray, mask: np.ndarray, record: dict) -> None:
        """Append one pair.

        Args:
            key: unique name within the shard, no dots ("000000000139_003").
            crop: (S, S, 3) uint8 masked crop. mask: (S, S) bool or uint8 region mask.
            record: JSON-serialisable metadata of the pair.
        """
        if "." in key or key in self.keys:
            raise ValueError(f"pair key {key!r} must be unique in its shard and hold no dots")
        self.keys.add(key)
        record = {"key": key, **record}
        self._add(f"{key}.crop.png", encode_png(crop))
        self._add(f"{key}.mask.png", encode_png(mask.astype(np.uint8) * 255))
        self._add(f"{key}.json", json.dumps(record, sort_keys=True).encode())
        line = {**record, "shard": f"{SHARD_DIR}/{self.tar_path.name}"}
        self._jsonl.write(json.dumps(line, sort_keys=True) + "\n")

    def commit(self, stats: dict) -> None:
        """Close, move the tar and jsonl into place, then write the stats (the done marker)."""
        self._tar.close()
        self._jsonl.close()
        self._files.close()  # moves both into place
        write_json_atomic(self.stats_path, stats)

    def abort(self) -> None:
        """Close and delete the temporary files (the shard stays not done)."""
        self._tar.close()
        self._jsonl.close()
        self._files.__exit__(RuntimeError, RuntimeError("shard aborted"), None)  # removes them


def shard_done(out_dir: Path, index: int) -> bool:
    """True when shard ``index`` was committed (stats, tar and jsonl all present)."""
    base = Path(out_dir) / SHARD_DIR / shard_stem(index)
    return all(Path(f"{base}{ext}").is_file() for ext in (".stats.json", ".tar", ".jsonl"))


def empty_stats() -> dict:
    """Per-shard statistics; ``skipped`` counts are keyed by reason (see ``mining``)."""
    return {
        "images": 0,
        "images_with_pairs": 0,
        "captions": 0,
        "pairs": 0,
        "skipped": {},
        "noun_counts": {},
    }


def merge_shards(out_dir: Path, num_shards: int, top_k: int = 50) -> dict:
    """Concatenate the shards' jsonl into ``pairs.jsonl`` and sum their stats into ``stats.json``.

    Reads one shard at a time (streams). Returns the merged statistics.

    Raises:
        RuntimeError: a shard is not done yet.
    """
    out_dir = Path(out_dir)
    missing = [k for k in range(num_shards) if not shard_done(out_dir, k)]
    if missing:
        raise RuntimeError(
            f"cannot merge {out_dir}: shards {missing[:10]} (of {num_shards}) are not finished; "
            "run the same command again to finish them"
        )
    total = empty_stats()
    nouns: Counter = Counter()
    with atomic_path(out_dir / "pairs.jsonl") as tmp, open(tmp, "w") as merged:
        for k in range(num_shards):
            base = out_dir / SHARD_DIR / shard_stem(k)
            with open(f"{base}.jsonl") as part:
                for line in part:
                    merged.write(line)
            stats = json.loads(Path(f"{base}.stats.json").read_text())
            for name in ("images", "images_with_pairs", "captions", "pairs"):
                total[name] += stats[name]
            for reason, count in stats["skipped"].items():
                total["skipped"][reason] = total["skipped"].get(reason, 0) + count
            nouns.update(stats["noun_counts"])
    ranked = sorted(nouns.items(), key=lambda item: (-item[1], item[0]))
    summary = {key: value for key, value in total.items() if key != "noun_counts"}
    summary["unique_nouns"] = len(ranked)
    summary["shards"] = num_shards
    summary["top_nouns"] = [[noun, count] for noun, count in ranked[:top_k]]
    write_json_atomic(out_dir / "stats.json", summary)
    counts = "".join(f"{noun}\t{count}\n" for noun, count in ranked)
    write_atomic(out_dir / "noun_counts.tsv", counts.encode())
    return summary


def read_shard(path: str | os.PathLike) -> Iterator[dict]:
    """Iterate a shard's pairs in order, as ``{"key", "crop", "mask", "meta"}``.

    ``crop`` is (S, S, 3) uint8, ``mask`` is (S, S) bool, ``meta`` the pair's record.
    """
    current: dict = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, kind = member.name.partition(".")
            if current and current["key"] != key:
                yield current
                current = {}
            data = tar.extractfile(member).read()
            current["key"] = key
            if kind == "json":
                current["meta"] = json.loads(data)
            else:
                array = np.asarray(Image.open(io.BytesIO(data)))
                current["crop" if kind == "crop.png" else "mask"] = (
                    array if kind == "crop.png" else array > 0
                )
    if current:
        yield current
