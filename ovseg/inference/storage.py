"""Folders and files at URLs (``s3://``, ``gs://``, ``file://``, any fsspec protocol), with the
few ``pathlib.Path`` methods that ``ovseg segment`` uses, so a job's input and output may be a
local path or a URL alike.

``as_path(text)`` gives a ``pathlib.Path`` for a local path and a ``UrlPath`` for
``SCHEME://...``. A ``UrlPath`` reaches its storage through a ``pyarrow.fs`` filesystem
(pyarrow's own S3, GCS, HDFS, Azure and local ones; other protocols through fsspec), the
filesystems Ray Data reads with. pyarrow comes with ``pip install 'ovseg[ray]'``.

Writes are whole-file: to a temporary name and a rename on a local filesystem, and a single
upload on an object store (S3, GCS, Azure), whose objects appear only once complete.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

_FILESYSTEMS: dict[str, tuple[object, str]] = {}  # "scheme://netloc" -> (filesystem, base)
_LISTED: dict[str, dict[str, str]] = {}  # folder URL -> {URL below it: "file" / "dir"}
_LOCK = threading.Lock()


def is_url(text: str | os.PathLike) -> bool:
    """True for ``SCHEME://...`` (a one-letter scheme is a Windows drive, not a URL)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def as_path(text: str | os.PathLike) -> Path | UrlPath:
    """``UrlPath`` for a URL, else ``pathlib.Path``."""
    if isinstance(text, (Path, UrlPath)):
        return text
    return UrlPath(str(text)) if is_url(text) else Path(text)


@contextlib.contextmanager
def listed(folder: Path | UrlPath) -> Iterator[None]:
    """Inside the block, whether a file below the URL ``folder`` exists is answered from one
    recursive listing made on entry, instead of one request per file (thousands of HEAD
    requests on an object store when a rerun checks which images are done). Nothing to do
    for a local folder. Files that appear during the block are not seen."""
    if not isinstance(folder, UrlPath):
        yield
        return
    kinds = {entry.url: entry._kind for entry in folder.rglob("*")}
    kinds[folder.url] = "dir" if kinds or folder.is_dir() else "missing"
    with _LOCK:
        _LISTED[folder.url] = kinds
    try:
        yield
    finally:
        with _LOCK:
            _LISTED.pop(folder.url, None)


def _listed_kind(url: str) -> str | None:
    with _LOCK:
        for root, kinds in _LISTED.items():
            if url == root or url.startswith(root + "/"):
                return kinds.get(url, "missing")
    return None


def _pyarrow_fs():
    try:
        import pyarrow.fs as pafs
    except ImportError:  # pragma: no cover - pyarrow comes with ray[data]
        raise ImportError("input and output URLs need pyarrow: pip install 'ovseg[ray]'") from None
    return pafs


def _filesystem(url: str) -> tuple[object, str]:
    """(pyarrow filesystem, path inside it) for ``url``, taken literally (no %-decoding); one
    filesystem per bucket or host."""
    pafs = _pyarrow_fs()
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    root = f"{scheme}://{netloc}"
    with _LOCK:
        cached = _FILESYSTEMS.get(root)
    if cached is None:
        try:
            cached = pafs.FileSystem.from_uri(root)
        except Exception as error:  # pyarrow knows no such scheme: ask fsspec
            if "Unrecognized filesystem" not in str(error):
                raise
            try:
                import fsspec
            except ImportError:  # pragma: no cover - huggingface_hub brings fsspec
                raise ValueError(f"no filesystem for {url}: pip install fsspec") from None
            fs, _ = fsspec.core.url_to_fs(url)
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(url)
        with _LOCK:
            _FILESYSTEMS[root] = cached
    fs, base = cached
    return fs, (base.rstrip("/") + path) if path else base


class UrlPath:
    """A file or folder at a URL. Paths compose with ``/`` like ``pathlib`` paths; the
    filesystem is opened in each process that uses it (a ``UrlPath`` pickles as its URL)."""

    __slots__ = ("url", "_kind")

    def __init__(self, url: str, _kind: str | None = None) -> None:
        if not is_url(url):
            raise ValueError(f"not a URL (SCHEME://...): {url!r}")
        scheme, _, rest = url.partition("://")
        self.url = f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else url
        self._kind = _kind  # "file" / "dir" when known from the listing that found it

    def __reduce__(self):
        return (UrlPath, (self.url,))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: UrlPath) -> bool:
        return self.url < other.url

    def __truediv__(self, part: str | os.PathLike) -> UrlPath:
        pieces = [p for p in PurePosixPath(part).parts if p not in (".", "/")]
        if ".." in pieces:
            raise ValueError(f"'..' in a URL path part: {part}")
        return UrlPath("/".join([self.url, *pieces])) if pieces else self

    @property
    def name(self) -> str:
        return self.url.partition("://")[2].rpartition("/")[2]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> UrlPath:
        scheme, _, rest = self.url.partition("://")
        head = rest.rpartition("/")[0]
        return UrlPath(f"{scheme}://{head}") if head else self

    def relative_to(self, other: UrlPath) -> PurePosixPath:
        prefix = other.url + "/"
        if not self.url.startswith(prefix):
            raise ValueError(f"{self} is not inside {other}")
        return PurePosixPath(self.url[len(prefix) :])

    def _fs(self) -> tuple[object, str]:
        return _filesystem(self.url)

    def _type(self) -> str:
        """ "file", "dir" or "missing": known from the listing that found this path, from a
        ``listed`` block, or else asked of the filesystem (each time: outputs change)."""
        kind = self._kind or _listed_kind(self.url)
        if kind is None:
            pafs = _pyarrow_fs()
            fs, path = self._fs()
            found = fs.get_file_info(path).type
            kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(
                found, "missing"
            )
        return kind

    def is_file(self) -> bool:
        return self._type() == "file"

    def is_dir(self) -> bool:
        return self._type() == "dir"

    def exists(self) -> bool:
        return self._type() != "missing"

    def iterdir(self) -> Iterator[UrlPath]:
        """The files and folders in this folder."""
        return self._list(recursive=False)

    def rglob(self, pattern: str = "*") -> Iterator[UrlPath]:
        """Every file and folder below this folder (``pattern`` must be ``"*"``)."""
        if pattern != "*":
            raise ValueError("UrlPath.rglob supports only '*'")
        return self._list(recursive=True)

    def _list(self, recursive: bool) -> Iterator[UrlPath]:
        pafs = _pyarrow_fs()
        fs, base = self._fs()
        selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        for info in fs.get_file_info(selector):
            rel = info.path[len(base) :].strip("/")
            kind = "file" if info.type == pafs.FileType.File else "dir"
            yield UrlPath(f"{self.url}/{rel}", kind)

    def read_bytes(self) -> bytes:
        fs, path = self._fs()
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file: a temporary name renamed into place on a local filesystem,
        one upload (visible only once complete) on an object store."""
        pafs = _pyarrow_fs()
        fs, path = self._fs()
        parent = path.rpartition("/")[0]
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{self.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with fs.open_output_stream(tmp) as stream:
                    stream.write(data)
                fs.move(tmp, path)
            finally:
                if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                    fs.delete_file(tmp)
        else:
            with fs.open_output_stream(path) as stream:
                stream.write(data)

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self._fs()
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self._kind = None
