"""Files: atomic writes (a temp file in the same folder, then ``os.replace``) and ovseg's
cache folder (``ovseg_home``)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, else it is removed.

    Readers never see a partial file. The result gets the usual permissions (0666 & ~umask):
    the temp file is created with mode 0666 and the kernel applies the umask, which is never
    read or changed here (changing it, even for a moment, races with other threads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def ovseg_home() -> Path:
    """The cache folder for URL downloads: ``$OVSEG_HOME``, else the user cache dir + ``/ovseg``."""
    env = os.environ.get("OVSEG_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ovseg"))


def file_identity(path: str | os.PathLike) -> dict[str, str]:
    """A file's resolved path, size and modification time: what ties a cache entry to the
    file it was made from, without reading the file."""
    path = Path(path).resolve()
    stat = path.stat()
    return {
        "source": str(path),
        "source_size": str(stat.st_size),
        "source_mtime_ns": str(stat.st_mtime_ns),
    }
