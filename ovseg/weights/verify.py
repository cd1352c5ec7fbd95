"""Digests of weights files, computed once per file version, and checks against pinned ones.

``file_digests(path)`` hashes a file (sha256, and md5 when asked) and remembers the result
under ``ovseg_home()/verified``, keyed by the file's resolved path, size, modification time,
change time and inode (one entry per path): a 2 GB checkpoint is read once, and any
rewrite of the file (new size, mtime, ctime or inode) makes it hashed again. ``verify_file`` compares a file with the
digest a publisher pinned and raises ``ChecksumMismatch`` naming both digests.
``verify_hub_blob`` checks a file in the Hugging Face cache against the name of its blob
(the Hub's ETag: the sha256 of an LFS file, the git blob sha1 of a small one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from ovseg.fileio import ovseg_home, write_atomic

FOLDER = "verified"
_PROGRESS_BYTES = 256 * 2**20  # files larger than this show a progress bar while hashed


class ChecksumMismatch(ValueError):
    """A weights file is not the one its name promises; the message names both digests."""


def _key(path: Path) -> dict[str, str]:
    stat = path.stat()
    return {
        "path": str(path),
        "size": str(stat.st_size),
        "mtime_ns": str(stat.st_mtime_ns),
        "ctime_ns": str(stat.st_ctime_ns),
        "inode": str(stat.st_ino),
    }


def _entry(path: Path) -> Path:
    """One entry per file path (a new version of the file replaces it), so the folder holds
    at most one small file per weights file ever checked."""
    name = hashlib.sha256(str(path).encode()).hexdigest()[:40]
    return ovseg_home() / FOLDER / f"{name}.json"


def _hash(path: Path, md5: bool) -> dict[str, str]:
    from tqdm import tqdm

    size = path.stat().st_size
    sha, md = hashlib.sha256(), (hashlib.md5() if md5 else None)
    with (
        open(path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"checking {path.name}",
            disable=size < _PROGRESS_BYTES,
            file=sys.stderr,
        ) as bar,
    ):
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            if md is not None:
                md.update(chunk)
            bar.update(len(chunk))
    out = {"sha256": sha.hexdigest()}
    if md is not None:
        out["md5"] = md.hexdigest()
    return out


def file_digests(path: str | os.PathLike, md5: bool = False) -> dict[str, str]:
    """``{"sha256": hex[, "md5": hex]}`` of a file, read from the verification cache when
    this version of the file (path, size, mtime, ctime, inode) was hashed before."""
    path = Path(path).resolve()
    key = _key(path)
    entry = _entry(path)
    try:
        cached = json.loads(entry.read_text())
        if cached.get("key") == key and "sha256" in cached and (not md5 or "md5" in cached):
            return {k: cached[k] for k in ("sha256", "md5") if k in cached}
    except (OSError, ValueError):
        pass  # absent or damaged: hash the file
    digests = _hash(path, md5)
    if _key(path) == key:  # unchanged while it was read
        try:
            write_atomic(entry, json.dumps({"key": key, **digests}).encode())
        except OSError:
            pass  # a read-only cache folder only costs a hash next time
    return digests


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file (cached per file version, see ``file_digests``)."""
    return file_digests(path)["sha256"]


def verify_file(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5_prefix: str | None = None,
    what: str = "",
    remedy: str = "",
) -> str:
    """Check ``path`` against a pinned ``sha256`` and/or the published ``md5_prefix``;
    returns its sha256.

    Raises:
        ChecksumMismatch: naming the file, ``what`` it should be, both digests and ``remedy``.
    """
    digests = file_digests(path, md5=md5_prefix is not None)
    label = f"{path} ({what})" if what else str(path)
    tail = f"; {remedy}" if remedy else ""
    if sha256 is not None and digests["sha256"] != sha256.lower():
        raise ChecksumMismatch(
            f"{label}: sha256 mismatch: the file's sha256 is {digests['sha256']}, the pinned "
            f"sha256 is {sha256}; the file is damaged or not the released one, refused{tail}"
        )
    if md5_prefix is not None and not digests["md5"].startswith(md5_prefix.lower()):
        raise ChecksumMismatch(
            f"{label}: md5 mismatch: the file's md5 is {digests['md5']} (sha256 "
            f"{digests['sha256']}), the publisher gives {md5_prefix}...; the file is damaged or "
            f"not the released one, refused{tail}"
        )
    return digests["sha256"]


_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file's content (what the Hub gives small, non-LFS files as
    their ETag): sha1 of ``b"blob <size>\\0" + content``."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_hub_blob(path: str | os.PathLike, what: str = "") -> str | None:
    """Check a file of the Hugging Face cache (a link into ``blobs/``) against its blob name,
    the ETag the Hub served: the sha256 of an LFS file, the git blob sha1 of a small file.
    Returns the sha256 of an LFS file (None for a small one, or a file outside the cache
    layout, which is not checked).

    Raises:
        ChecksumMismatch: the content does not hash to the blob's name.
    """
    blob = Path(os.path.realpath(path))
    if blob.parent.name != "blobs":
        return None
    name = blob.name
    remedy = f"delete {blob} and {path} and download it again"
    if _SHA256.fullmatch(name):
        return verify_file(blob, sha256=name, what=what or "Hub file", remedy=remedy)
    if _SHA1.fullmatch(name):
        got = git_blob_sha1(blob)
        if got != name:
            raise ChecksumMismatch(
                f"{path} ({what or 'Hub file'}): git blob sha1 {got} does not match the Hub's "
                f"{name}; refused; {remedy}"
            )
    return None
