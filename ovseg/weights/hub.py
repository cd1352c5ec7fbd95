"""Released weights: names, where they live, checksums, licences, and ``download``.

Nothing here touches the network unless ``download`` is called (``ovseg download NAME``); the
model builders only call ``find_cached``.

Where files live. A file on the Hugging Face Hub is fetched with ``huggingface_hub``
(``hf_hub_download``) into the standard Hugging Face cache (``$HF_HUB_CACHE``, shared with every
other tool; ``HF_HUB_OFFLINE=1`` uses it without a network). A file published only as a URL
(Google Drive, OpenAI's CDN) is fetched with ``gdown``, which follows Google Drive's
confirmation pages and resumes an interrupted transfer from its ``.part`` file, into
``ovseg_home()`` (``$OVSEG_HOME``). A file copied by hand to ``ovseg_home()/<filename>`` is used
as is, for every name. Sources are tried in order; the next one is tried when one fails.

Checksums. A sha256 is pinned where a verifiable source publishes it: the Hub's LFS metadata
(its pointer files carry ``oid sha256:...``) and OpenAI's URLs. It is checked after every
download, whatever the source, and a file that does not match is deleted. (huggingface_hub
2.4 does not hash what it downloads; it only compares the size.) Where only the first six hex
digits of the md5 are published (the OVSeg authors' Google Drive files; SAM's file names), those
are checked, and the sha256 of the first complete download is recorded next to the file
(``<file>.sha256``) and enforced on every later download.

Licences and the table of released files: ``ovseg.weights.released``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from ovseg.fileio import ovseg_home
from ovseg.weights.released import (  # noqa: F401  (the names hub's users know it by)
    CODE_LICENSE,
    LICENSE_URLS,
    OVSEG_WEIGHTS_LICENSE,
    REGISTRY,
    RELEASED_FILES,
    HubFile,
    ReleasedFile,
)
from ovseg.weights.verify import ChecksumMismatch, verify_file


def _candidates(entry: ReleasedFile) -> list[Path]:
    """Where a copy of ``entry`` may already be, in order: ``ovseg_home()``, then the Hugging
    Face cache of each Hub source (no network)."""
    found = []
    manual = ovseg_home() / entry.filename
    if manual.is_file():
        found.append(manual)
    for source in entry.sources:
        if isinstance(source, HubFile):
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(
                source.repo_id,
                source.filename,
                revision=source.revision,
                repo_type=source.repo_type,
            )
            if isinstance(path, str) and os.path.isfile(path):
                found.append(Path(path))
    return found


def find_cached(
    name: str, registry: dict[str, ReleasedFile] | None = None, verify: bool = True
) -> Path | None:
    """Path of the cached file for ``name`` (a variant or download name), or None. No network.

    Looks in ``ovseg_home()`` (URL downloads and hand-copied files), then in the Hugging Face
    cache for each Hub source. With ``verify`` (the default) a copy is returned only once it
    matches the pinned sha256 (or, where only an md5 prefix is published, that prefix and
    the sha256 recorded at the first download): ``check_released``, whose result is cached
    per file version (``ovseg.weights.verify``), so a large file is hashed once. A copy that
    does not match is skipped for the next one, with a warning.

    Raises:
        ChecksumMismatch: every copy found fails the check; the message names each one with
            its sha256 and the pinned one.
    """
    entry = (REGISTRY if registry is None else registry).get(name)
    if entry is None:
        return None
    candidates = _candidates(entry)
    if not verify:
        return candidates[0] if candidates else None
    refused = []
    for path in candidates:
        try:
            check_released(entry, path)
        except ChecksumMismatch as error:
            refused.append(str(error))
            continue
        for reason in refused:
            warnings.warn(f"{name}: skipped a copy that does not match: {reason}", stacklevel=2)
        return path
    if refused:
        raise ChecksumMismatch(
            f"{name}: no cached copy matches its published checksum:\n  "
            + "\n  ".join(refused)
            + f"\nDelete the file(s) and run `ovseg download {name}`."
        )
    return None


def resolve_file(name_or_path: str | os.PathLike, option: str = "weights") -> Path:
    """A weights file from a download name (it must be cached: ``find_cached``) or a path.

    ``option`` names the setting in error messages (e.g. ``--clip``).
    """
    name_or_path = str(name_or_path)
    if name_or_path in REGISTRY:
        cached = find_cached(name_or_path)
        if cached is None:
            raise FileNotFoundError(
                f"{option} {name_or_path}: not downloaded; run `ovseg download {name_or_path}` "
                "(or pass the file's path)"
            )
        return cached
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{option} {name_or_path}: no such file, and not a download name (see "
            "`ovseg download --list`)"
        )
    return path


class DownloadError(RuntimeError):
    """A download failed; the message names every source tried and what to do."""


class _SourceFailed(Exception):
    """This source did not give a good file; the next one is tried."""


def _sha_record(entry: ReleasedFile) -> Path:
    return ovseg_home() / f"{entry.filename}.sha256"


def _recorded_sha256(entry: ReleasedFile) -> str | None:
    record = _sha_record(entry)
    return record.read_text().split()[0] if record.is_file() else None


def check_released(entry: ReleasedFile, path: str | os.PathLike) -> str:
    """The sha256 of ``path`` once it matches what is known of ``entry``: its pinned sha256,
    else the sha256 recorded at its first download and its published md5 prefix.

    Raises:
        ChecksumMismatch: naming the file, its sha256 and the expected one.
    """
    # a pinned sha256 says all; the (3x slower) md5 is only computed where it is the check
    expected = entry.sha256 or _recorded_sha256(entry)
    md5 = entry.md5_prefix if entry.sha256 is None else None
    what = entry.filename
    if expected and not entry.sha256:
        what += f", sha256 recorded in {_sha_record(entry)}"
    return verify_file(path, sha256=expected, md5_prefix=md5, what=what)


def _from_hub(source: HubFile, entry: ReleasedFile, force: bool, progress: bool) -> Path:
    import httpx2
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars

    bars = contextlib.nullcontext() if progress else disable_progress_bars("huggingface_hub")
    try:
        with bars:
            path = Path(
                hf_hub_download(
                    source.repo_id,
                    source.filename,
                    repo_type=source.repo_type,
                    revision=source.revision,
                    force_download=force,
                )
            )
    except LocalEntryNotFoundError:
        if constants.is_offline_mode():
            raise _SourceFailed(
                "not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
            ) from None
        raise _SourceFailed("could not reach the Hub, and the file is not cached") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise _SourceFailed(f"HTTP {status}: {str(error).splitlines()[0]}") from None
    except (OSError, httpx2.HTTPError) as error:
        raise _SourceFailed(f"{type(error).__name__}: {error}") from None
    try:
        check_released(entry, path)
    except ChecksumMismatch as error:
        blob = Path(os.path.realpath(path))
        for item in (path, blob):
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
        raise _SourceFailed(str(error)) from None
    return path


def _cached_hub_file(source: HubFile, entry: ReleasedFile) -> Path | None:
    """The Hub file from the Hugging Face cache, checked, without the network (or None)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        source.repo_id, source.filename, revision=source.revision, repo_type=source.repo_type
    )
    if not (isinstance(found, str) and os.path.isfile(found)):
        return None
    try:
        check_released(entry, found)
    except ChecksumMismatch as error:
        raise _SourceFailed(str(error)) from None
    return Path(found)


def _from_url(
    url: str, entry: ReleasedFile, force: bool, progress: bool, retries: int, timeout: float
) -> Path:
    import gdown
    import requests

    dest = ovseg_home() / entry.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".download")  # gdown keeps <staging>XXXXXXXX.part
    if force:
        for stale in [staging, *dest.parent.glob(staging.name + "????????.part")]:
            stale.unlink(missing_ok=True)
    try:
        gdown.download(
            url,
            str(staging),
            quiet=not progress,
            resume=True,
            retries=retries,
            timeout=timeout,
        )
    except (gdown.exceptions.DownloadError, requests.RequestException, OSError) as error:
        reason = str(error).strip().splitlines()
        raise _SourceFailed(f"{type(error).__name__}: {' '.join(reason)[:500]}") from None
    try:
        digest = check_released(entry, staging)
    except ChecksumMismatch as error:
        staging.unlink()
        raise _SourceFailed(str(error)) from None
    os.replace(staging, dest)
    if entry.sha256 is None and _recorded_sha256(entry) is None:
        _sha_record(entry).write_text(f"{digest}  {entry.filename}\n")
    return dest


RESOLVE_TIMEOUT_S = 3.0  # a name lookup slower than this counts as failed


def source_host(source: HubFile | str) -> str | None:
    """The host a source is fetched from: the Hub's endpoint (``HF_ENDPOINT``) or the
    URL's."""
    from urllib.parse import urlparse

    if isinstance(source, HubFile):
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname
    return urlparse(source).hostname


def resolves(host: str | None, timeout: float = RESOLVE_TIMEOUT_S) -> bool:
    """Whether ``host``'s name resolves within ``timeout`` seconds (asked in a daemon thread:
    ``getaddrinfo`` has no timeout of its own, and an offline resolver can hang)."""
    import socket
    import threading

    if not host:
        return False
    answer: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            answer.append(True)
        except (OSError, UnicodeError):
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True, name=f"resolve-{host}")
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _offline_help(entry: ReleasedFile) -> str:
    hub = [s for s in entry.sources if isinstance(s, HubFile)]
    lines = [f"If this machine is offline, download {entry.filename} elsewhere and either:"]
    if hub:
        lines.append(
            f"  - fill the Hugging Face cache there (`hf download {hub[0].repo_id} "
            f"{hub[0].filename} --repo-type {hub[0].repo_type}`) and copy $HF_HUB_CACHE here, "
            "then use HF_HUB_OFFLINE=1; or"
        )
    lines.append(f"  - copy the file to {ovseg_home() / entry.filename} (or set OVSEG_HOME); or")
    lines.append("  - pass the file's path (--checkpoint, --sam-checkpoint or --clip PATH).")
    return "\n".join(lines)


def download(
    name: str,
    *,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    registry: dict[str, ReleasedFile] | None = None,
) -> Path:
    """Download the released file ``name`` and return its local path.

    Sources are tried in order (Hub repository, mirror, URL); the first good file wins. A file
    copied to ``ovseg_home()`` by hand is returned as is. Hub files land in the Hugging Face
    cache (a cached one is returned without a transfer, online or with ``HF_HUB_OFFLINE=1``),
    URL files in ``ovseg_home()``. Every file is checked against its checksums (see the module
    docstring) before it is returned; one that fails is deleted and the next source is tried.

    Args:
        name: a key of ``registry`` (see ``ovseg download --list``).
        force: download again even if cached.
        progress: show progress bars on stderr.
        retries: extra attempts of a URL transfer after a network error (each resumes);
            huggingface_hub retries Hub transfers on its own (resuming with an HTTP Range).
        timeout: seconds to wait for a URL server between bytes.
        registry: the table to look ``name`` up in (default ``REGISTRY``; tests pass their own).
    Raises:
        KeyError: unknown name.
        DownloadError: every source failed; the message lists each one's reason.

    With ``HF_HUB_OFFLINE=1`` nothing goes to the network: Hub files come from the cache, URL
    sources are skipped.
    """
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise KeyError(f"unknown download {name!r}; choose one of {sorted(registry)}")
    entry = registry[name]
    manual = ovseg_home() / entry.filename
    if manual.is_file() and not force:
        try:
            check_released(entry, manual)
            return manual
        except ChecksumMismatch as error:  # a damaged or wrong copy: fetch a good one
            warnings.warn(f"{error}; downloading it again", stacklevel=2)
    from huggingface_hub import constants

    failures: list[str] = []
    reachable: dict[str | None, bool] = {}  # host -> its name resolves (asked once per host)
    for source in entry.sources:
        try:
            offline = constants.is_offline_mode()
            if isinstance(source, HubFile) and offline:
                return _from_hub(source, entry, force, progress)  # the cache alone
            if offline:  # the ecosystem's offline switch covers URLs too
                raise _SourceFailed("skipped: HF_HUB_OFFLINE is set")
            host = source_host(source)
            if host not in reachable:
                reachable[host] = resolves(host)
            if not reachable[host]:  # no retries against a name that does not resolve
                if isinstance(source, HubFile):
                    cached = _cached_hub_file(source, entry)
                    if cached is not None:
                        return cached
                raise _SourceFailed(f"cannot resolve {host} (offline?); not retried")
            if isinstance(source, HubFile):
                return _from_hub(source, entry, force, progress)
            return _from_url(source, entry, force, progress, retries, timeout)
        except _SourceFailed as error:
            failures.append(f"{source}: {error}")
    parts = list(manual.parent.glob(manual.name + ".download????????.part"))
    raise DownloadError(
        f"could not download {name!r} ({entry.filename}):\n  "
        + "\n  ".join(failures)
        + f"\n{_offline_help(entry)}"
        + (f"\nThe partial file {parts[0]} is kept; the next try resumes it." if parts else "")
    )
