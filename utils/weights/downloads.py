"""Model-zoo weights: resolve a registry name to a local file, downloading it when needed.

A bare zoo name (``dy-yolov7.pt``; the registry is :mod:`models.zoo`) is looked for where
:func:`models.zoo.find_local` looks and downloaded into the cache when missing. Downloads use only the standard library: a temp file beside the
destination, resumed with an HTTP ``Range`` request after a dropped connection, checked
(Content-Length, a minimum size, sha256 where known) and then renamed into place, so a failed or
interrupted download never leaves a file under the final name.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tqdm import tqdm

from models.zoo import REPO_WEIGHTS, SHIPPED, ZOO, ZooEntry, find_local, weights_dir
from utils.io import atomic_write

__all__ = ["DownloadError", "attempt_download", "download"]

LOGGER = logging.getLogger(__name__)

MB = 10**6
CHUNK = 1 << 16
USER_AGENT = "dynamicdet-weights-downloader"
# HTTP statuses worth retrying; any other HTTP error (404, 403, ...) fails at once.
TRANSIENT_HTTP = frozenset({408, 416, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A zoo file could not be downloaded; the message says where to put it by hand."""


def attempt_download(weights: str | Path, cache_dir: Path | None = None, retries: int = 3,
                     timeout: float = 30, *, zoo: Mapping[str, ZooEntry] = ZOO,
                     backoff: float = 1.0) -> Path:
    """Local path of ``weights``, downloading a zoo file when it is not found locally.

    An existing file is returned as is. A bare zoo name is looked for in the working directory,
    ``weights/`` and ``cache_dir`` (default :func:`weights_dir`), and downloaded into
    ``cache_dir`` when missing; a missing path with a folder and a zoo file name is downloaded
    to exactly that path. Raises FileNotFoundError for anything else, DownloadError on failure.
    """
    path = Path(weights)
    if path.is_file():
        return path
    known = {**SHIPPED, **zoo}
    entry = known.get(path.name)
    if entry is None:
        raise FileNotFoundError(f"weights {str(weights)!r} not found, and not a model-zoo name "
                                f"(known: {', '.join(sorted(known))})")
    if entry.url is None:  # shipped with the repository: never downloaded
        local = find_local(path.name, cache_dir)
        if local is None:
            raise FileNotFoundError(f"the shipped weights {path.name} are missing from {REPO_WEIGHTS}; "
                                    f"restore them with: git checkout -- weights/{path.name}")
        return local
    if path.name != str(weights):  # an explicit location: use it as the destination
        return download(entry, path, retries, timeout, backoff=backoff)
    local = find_local(path, cache_dir)
    if local is not None:
        return local
    cache = Path(cache_dir) if cache_dir is not None else weights_dir()
    return download(entry, cache / path, retries, timeout, backoff=backoff)


def download(entry: ZooEntry, dest: Path, retries: int = 3, timeout: float = 30,
             *, backoff: float = 1.0) -> Path:
    """Download ``entry`` to ``dest`` through a verified temp file; DownloadError on failure."""
    LOGGER.info("Downloading %s to %s", entry.url, dest)

    def fetch(tmp: Path) -> None:
        _fetch(entry.url, tmp, retries, timeout, backoff, desc=dest.name)

    try:
        return atomic_write(dest, fetch, lambda tmp: _verify(tmp, entry))
    except DownloadError as e:
        raise _failure(entry, dest, str(e)) from None
    except (OSError, http.client.HTTPException) as e:
        where = f"cannot write to {dest.parent} ({e})" if not _writable(dest.parent) else _describe(e)
        raise _failure(entry, dest, where) from e


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK)


def _failure(entry: ZooEntry, dest: Path, reason: str) -> DownloadError:
    """The one error message: what failed, from where, and where to put the file by hand."""
    return DownloadError(f"could not download {entry.url}: {reason}. Download it manually "
                         f"and save it as {dest.resolve()}")


def _describe(error: BaseException) -> str:
    """Short human-readable reason for a network or file error."""
    if isinstance(error, HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return f"{type(error).__name__}: {error}"


def _fetch(url: str, tmp: Path, retries: int, timeout: float, backoff: float, desc: str) -> None:
    """Fill ``tmp`` with ``url``, resuming after transient failures; re-raises the last one."""
    validator: list[str] = []  # ETag / Last-Modified of the first answer, for If-Range
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(url, tmp, timeout, validator, desc)
            return
        except (OSError, http.client.HTTPException) as e:
            if attempt == retries or not _transient(e):
                raise
            LOGGER.warning("download of %s interrupted (%s), retrying at byte %d",
                           url, _describe(e), tmp.stat().st_size)


def _transient(error: BaseException) -> bool:
    """Whether retrying can help: network trouble and server hiccups, not 404 or 403."""
    return not isinstance(error, HTTPError) or error.code in TRANSIENT_HTTP


def _fetch_once(url: str, tmp: Path, timeout: float, validator: list[str], desc: str) -> None:
    """One request: resume ``tmp`` with a Range request if it has data, else start over."""
    offset = tmp.stat().st_size
    request = Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if validator:
            request.add_header("If-Range", validator[0])
    try:
        with urlopen(request, timeout=timeout) as response:
            start = _resume_offset(response, offset)
            if start is None:  # a range we did not ask for: drop the partial file, start over
                tmp.write_bytes(b"")
                raise ConnectionError(f"server resumed with {response.headers.get('Content-Range')!r} "
                                      f"instead of byte {offset}")
            offset = start
            if not offset:
                validator[:] = _validator(response)
            total = _expected_total(response, offset)
            _copy(response, tmp, offset, total, desc)
    except HTTPError as e:
        if e.code == 416:  # our partial file does not fit the resource: start over
            tmp.write_bytes(b"")
        raise
    size = tmp.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Where the body starts: 0 for a full answer, ``offset`` for a matching 206, else None."""
    if not offset or response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return offset if match is not None and int(match.group(1)) == offset else None


def _validator(response: http.client.HTTPResponse) -> list[str]:
    """A strong ETag or a Last-Modified date usable in If-Range (empty list if neither)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return [etag]
    modified = response.headers.get("Last-Modified")
    return [modified] if modified else []


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full file size from Content-Length (plus ``offset`` when resuming), None if unknown."""
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _copy(response: http.client.HTTPResponse, tmp: Path, offset: int, total: int | None,
          desc: str) -> None:
    """Stream the body into ``tmp`` (appending after ``offset``), with a bar when size is known."""
    with open(tmp, "r+b" if offset else "wb") as f, tqdm(
            total=total, initial=offset, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
            disable=True if total is None else None) as bar:
        f.seek(offset)
        f.truncate()
        while chunk := response.read(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def _verify(path: Path, entry: ZooEntry) -> None:
    """Reject a file below the sanity size bound or with the wrong sha256."""
    size = path.stat().st_size
    if size < entry.min_size:
        raise DownloadError(f"got only {size} bytes, expected at least {entry.min_size} "
                            f"(likely an error page or a truncated file)")
    if entry.sha256 is not None:
        digest = _sha256(path)
        if digest != entry.sha256.lower():
            raise DownloadError(f"sha256 mismatch: got {digest}, expected {entry.sha256}")


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
