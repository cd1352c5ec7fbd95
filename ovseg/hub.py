"""Released weights: names, URLs, checksums, the local cache folder and ``download``.

The model builders only need ``find_cached`` to locate weights already on disk; nothing here
touches the network unless ``download`` is called (``ovseg download NAME``).

Checksums. OpenAI publishes the sha256 of each CLIP file in its URL path. The OVSeg authors
publish only the first six hex digits of each checkpoint's md5 (GETTING_STARTED.md); those are
checked, and since no sha256 is published for them, the sha256 of the first complete download
is recorded next to the file (``<file>.sha256``) and checked on every later download.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def ovseg_home() -> Path:
    """The cache folder: ``$OVSEG_HOME``, else the platform's user cache dir + ``/ovseg``."""
    env = os.environ.get("OVSEG_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ovseg"))


@dataclass(frozen=True)
class ReleasedFile:
    """One downloadable file.

    Attributes:
        filename: name inside ``ovseg_home()``.
        urls: where to get it, tried in order (mirrors).
        sha256: full hex digest, or None where none is published (then it is recorded on
            first download and checked afterwards).
        md5_prefix: leading hex digits of the md5 where that is all that is published.
        description: one line for ``ovseg download --list``.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    md5_prefix: str | None
    description: str


def _gdrive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# The authors' demo space first fetched the Swin-B checkpoint from Google Drive with gdown;
# its later app.py reads a copy stored in the space itself (as it does the SAM checkpoints).
_HF_SPACE = "https://huggingface.co/spaces/facebook/ov-seg/resolve/main/"
_OPENAI = "https://openaipublic.azureedge.net/clip/models/"

# download name -> file. The OVSeg names are the model variants that load them.
REGISTRY: dict[str, ReleasedFile] = {
    "ovseg-swinB-vitL14": ReleasedFile(
        filename="ovseg_swinbase_vitL14_ft_mpt.pth",
        urls=(
            _HF_SPACE + "ovseg_swinbase_vitL14_ft_mpt.pth",
            _gdrive("1cn-ohxgXDrDfkzC1QdO-fi8IjbjXmgKy"),
        ),
        sha256=None,
        md5_prefix="526080",
        description="official OVSeg Swin-B + CLIP ViT-L/14, fine-tuned + mask prompts",
    ),
    "ovseg-R101c-vitB16": ReleasedFile(
        filename="ovseg_R101c_vitB16_ft_mpt.pth",
        urls=(_gdrive("1ZmeFMEkhuLqaWkhz4t4IlQ8YflrYja8q"),),
        sha256=None,
        md5_prefix="c746f4",
        description="official OVSeg R101c + CLIP ViT-B/16, fine-tuned + mask prompts",
    ),
    "ovseg-swinB-vitL14-mpt-only": ReleasedFile(
        filename="ovseg_swinbase_vitL14_mpt_only.pt",
        urls=(_gdrive("1LJGWFjHw76OGDNy9r9KQIaACfIm9KMhQ"),),
        sha256=None,
        md5_prefix="2dd495",
        description="official OVSeg Swin-B + CLIP ViT-L/14, mask prompts only (CLIP frozen)",
    ),
    "clip-vitL14": ReleasedFile(
        filename="ViT-L-14.pt",
        urls=(
            _OPENAI
            + "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        ),
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        md5_prefix=None,
        description="OpenAI CLIP ViT-L/14 (224 px)",
    ),
    "clip-vitB16": ReleasedFile(
        filename="ViT-B-16.pt",
        urls=(
            _OPENAI
            + "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        ),
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        md5_prefix=None,
        description="OpenAI CLIP ViT-B/16 (224 px)",
    ),
}

# model variant -> file name of its released checkpoint inside ovseg_home()
RELEASED_FILES: dict[str, str] = {
    name: REGISTRY[name].filename for name in ("ovseg-swinB-vitL14", "ovseg-R101c-vitB16")
}


def find_cached(name: str) -> Path | None:
    """Path of the cached released file for ``name`` (a variant or download name), or None."""
    entry = REGISTRY.get(name)
    filename = entry.filename if entry else RELEASED_FILES.get(name)
    if filename is None:
        return None
    path = ovseg_home() / filename
    return path if path.is_file() else None


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and what to do."""


def _offline_help(entry: ReleasedFile, dest: Path) -> str:
    return (
        f"If this machine is offline, download {entry.urls[0]} on another machine and copy it "
        f"to {dest} (or set OVSEG_HOME), or pass the file with --checkpoint."
    )


def _hash_file(path: Path, hashers: list) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashers:
                h.update(chunk)


class _NotTheFile(Exception):
    """The server answered, but with something other than the file (an HTML page)."""


def _fetch(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """Append the rest of ``url`` to ``part``, resuming from its size with an HTTP Range."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ovseg-download"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:
            # "bytes */N": the part already holds all N bytes, or it is longer than the file
            if error.headers.get("Content-Range", "").strip() == f"bytes */{start}":
                return
            part.unlink()
            return _fetch(url, part, timeout, progress, desc)
        raise
    with response:
        if response.headers.get_content_type() == "text/html":
            raise _NotTheFile(
                "the server sent a web page instead of the file (a sign-in, quota or "
                "virus-scan page); open the URL in a browser to download it by hand"
            )
        length = response.headers.get("Content-Length")
        if start and response.status != 206:  # server ignored the Range: start over
            start = 0
        total = start + int(length) if length is not None else None
        mode = "ab" if start else "wb"
        received = start
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise ConnectionError(f"transfer cut off after {received} of {total} bytes")


def _verify(entry: ReleasedFile, path: Path, url: str) -> str:
    """Check ``path`` against the published digests; returns its sha256."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    _hash_file(path, [sha, md5])
    digest = sha.hexdigest()
    recorded = _recorded_sha256(entry)
    expected = entry.sha256 or recorded
    if expected and digest != expected:
        source = "published" if entry.sha256 else f"recorded in {_sha_record(entry)}"
        raise DownloadError(
            f"sha256 mismatch for {url}: got {digest}, expected {expected} ({source}). "
            f"The file was removed; run the download again. If it keeps failing, the mirror "
            f"serves a different file."
        )
    if entry.md5_prefix and not md5.hexdigest().startswith(entry.md5_prefix):
        raise DownloadError(
            f"md5 mismatch for {url}: got {md5.hexdigest()}, the authors publish "
            f"{entry.md5_prefix}... The file was removed; run the download again."
        )
    return digest


def _sha_record(entry: ReleasedFile) -> Path:
    return ovseg_home() / f"{entry.filename}.sha256"


def _recorded_sha256(entry: ReleasedFile) -> str | None:
    record = _sha_record(entry)
    return record.read_text().split()[0] if record.is_file() else None


def _fetch_with_retries(
    url: str,
    part: Path,
    entry: ReleasedFile,
    retries: int,
    timeout: float,
    progress: bool,
    failures: list[str],
) -> bool:
    """Fetch ``url`` into ``part``, resuming after network errors; False (with the reasons
    appended to ``failures``) when this URL is no good."""
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress, entry.filename)
            return True
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.reason}")
            return False  # the server answered: asking again will not help
        except _NotTheFile as error:
            failures.append(f"{url}: {error}")
            return False
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            failures.append(f"{url}: {type(reason).__name__}: {reason} (attempt {attempt + 1})")
            if isinstance(reason, socket.gaierror):
                return False  # the name does not resolve: offline
    return False


def download(
    name: str,
    *,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    registry: dict[str, ReleasedFile] | None = None,
) -> Path:
    """Download the released file ``name`` into ``ovseg_home()`` and return its path.

    An existing complete file is returned as is (unless ``force``). Bytes arrive in
    ``<file>.part``; an interrupted transfer resumes from there with an HTTP Range request,
    on the next retry or the next call. The finished file is checked against its checksums
    before it is renamed into place.

    Args:
        name: a key of ``REGISTRY`` (see ``ovseg download --list``).
        force: download again even if the file is cached.
        progress: show a tqdm progress bar on stderr.
        retries: extra attempts per URL after a network error (each resumes).
        timeout: seconds to wait for the server before giving up on an attempt.
        registry: the table to look ``name`` up in (default ``REGISTRY``; tests pass their own).
    Raises:
        KeyError: unknown name.
        DownloadError: every URL failed, or the checksum did not match.
    """
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise KeyError(f"unknown download {name!r}; choose one of {sorted(registry)}")
    entry = registry[name]
    dest = ovseg_home() / entry.filename
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if force:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    failures: list[str] = []
    for url in entry.urls:
        if not _fetch_with_retries(url, part, entry, retries, timeout, progress, failures):
            continue
        try:
            digest = _verify(entry, part, url)
        except DownloadError:
            part.unlink()
            raise
        os.replace(part, dest)
        if entry.sha256 is None and _recorded_sha256(entry) is None:
            _sha_record(entry).write_text(f"{digest}  {entry.filename}\n")
        return dest
    raise DownloadError(
        f"could not download {name!r} ({entry.filename}):\n  "
        + "\n  ".join(failures)
        + f"\n{_offline_help(entry, dest)}"
        + (f"\nThe partial file {part} is kept; the next try resumes it." if part.exists() else "")
    )
