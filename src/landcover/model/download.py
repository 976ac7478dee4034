"""Download weight files once into the cache, checked against their published SHA-256, with a progress bar.

A download goes to a temporary file beside its cache entry and is renamed into place only once it is complete
and its checksum passes, so the cache never holds a partial or corrupt file under a final name. A file lock
keeps concurrent processes (the workers of a multi-process run) from downloading the same file twice.

Environment: ``$LANDCOVER_CACHE`` (the cache root, as for classify's cache; else ``~/.cache/landcover``),
``$LANDCOVER_OFFLINE=1`` (never use the network: cached files still load), ``$LANDCOVER_WEIGHTS_URL`` (a base
URL that replaces the published host of the named weights, e.g. a mirror holding the files under their
published names, or a test server on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..cache import cache_root
from ..errors import LandcoverError

#: seconds to wait for the server to connect or send more bytes before the network counts as unreachable
TIMEOUT_S = 10.0
#: bytes per read while downloading (and hashing)
CHUNK = 1 << 20
OFFLINE_ENV, BASE_URL_ENV = "LANDCOVER_OFFLINE", "LANDCOVER_WEIGHTS_URL"


class DownloadFailed(Exception):
    """The network or the server did not deliver the file (offline, DNS failure, timeout, HTTP error).

    Not a :class:`LandcoverError`: whoever asked decides whether that stops training (weights the user named)
    or only warns (the default ImageNet weights)."""


class OfflineMode(DownloadFailed):
    """``$LANDCOVER_OFFLINE`` forbids the download: the user chose to work offline."""


def weights_cache_dir() -> Path:
    """``weights/`` in :func:`landcover.cache.cache_root`, beside classify's ``classify/``."""
    return cache_root() / "weights"


def offline() -> bool:
    """Whether ``$LANDCOVER_OFFLINE`` forbids downloads (any value but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def mirrored(url: str) -> str:
    """``url`` from the host ``$LANDCOVER_WEIGHTS_URL`` names (same file name), or ``url`` itself."""
    base = os.environ.get(BASE_URL_ENV, "").strip()
    if not base:
        return url
    return base.rstrip("/") + "/" + url.split("?")[0].rsplit("/", 1)[-1]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def cached_download(url: str, dest: Path, sha256: str | None = None, label: str | None = None) -> Path:
    """``dest``, downloaded from ``url`` first unless the cache has it; returns ``dest``.

    ``sha256``: the published checksum, the full hex digest or a prefix of it (torchvision and torchgeo publish
    the first 8 hex digits in their file names); a download that does not match is refused and nothing is kept,
    a cached file that no longer matches is refused with the advice to delete it. Raises
    :class:`DownloadFailed` when the file cannot be fetched (or ``$LANDCOVER_OFFLINE`` is set and it is not
    cached).
    """
    if dest.is_file():
        _check_cached(dest, sha256)
        return dest
    if offline():
        raise OfflineMode(f"{OFFLINE_ENV} is set and the file is not in the cache")
    dest.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(dest) + ".lock"):
        if dest.is_file():  # another process finished it while this one waited
            _check_cached(dest, sha256)
            return dest
        part = _fetch(url, dest, label or dest.name)
        try:
            digest = sha256_of(part)
            if sha256 and not digest.startswith(sha256.lower()):
                raise LandcoverError(
                    f"{url}: corrupt download (SHA-256 {digest[:16]}... is not the published {sha256[:16]}...); "
                    f"nothing was kept in {dest.parent}: retry, or download the file yourself and give it with "
                    "--pretrained FILE")
            os.replace(part, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
    return dest


def _check_cached(path: Path, sha256: str | None) -> None:
    if sha256 and not sha256_of(path).startswith(sha256.lower()):
        raise LandcoverError(f"{path}: the cached weights are corrupt (their SHA-256 is not the published "
                             f"{sha256[:16]}...); delete {path} and retry")


def _fetch(url: str, dest: Path, label: str) -> Path:
    """The body of ``url`` in a temporary file beside ``dest`` (the caller renames or deletes it)."""
    from tqdm import tqdm

    fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    part = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "landcover"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {label}") as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
                if size is not None and out.tell() != size:
                    raise DownloadFailed(f"the connection closed after {out.tell()} of {size} bytes")
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        part.unlink(missing_ok=True)
        raise DownloadFailed(_reason(exc.reason)) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        part.unlink(missing_ok=True)
        raise DownloadFailed(_reason(exc)) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _reason(exc: object) -> str:
    """Why the network failed, in a few words (``[Errno -2] Name or service not known`` → the name part)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
