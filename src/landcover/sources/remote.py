"""Imagery that lives on a server: COG URLs and object-store paths, as GDAL virtual paths with fast failure.

``https://host/scene.tif`` is read through GDAL's ``/vsicurl/``, ``s3://bucket/key`` through ``/vsis3/`` and
``gs://bucket/key`` through ``/vsigs/``: GDAL fetches only the byte ranges of the blocks a window needs (a COG's
header, then its tiles), so a run reads no more of a scene than it classifies. :data:`REMOTE_GDAL_ENV` holds the
GDAL settings for that, and :func:`check_remote` turns a server that does not answer, or a missing file, into one
line within seconds instead of GDAL's retries, sidecar probes and messages.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import warnings
from http.client import HTTPResponse

import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from ..errors import LandcoverError
from ..raster import REMOTE_GDAL_ENV, TIMEOUT_S, gdal_path
from ..raster import URL_SCHEMES as _SCHEMES

_VSI_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/")

def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a file on a server: an http(s), s3 or gs URL, or a GDAL /vsicurl/, /vsis3/ or
    /vsigs/ path."""
    s = str(spec)
    return s.lower().startswith(tuple(_SCHEMES)) or s.startswith(_VSI_PREFIXES)


def _url(spec: str) -> str | None:
    """The http(s) URL that ``spec`` reads, or None for an object-store path."""
    s = gdal_path(spec)
    if s.startswith("/vsicurl/"):
        url = s[len("/vsicurl/"):]
        return url if url.lower().startswith(("http://", "https://")) else None
    return None


def check_remote(spec: str, what: str = "imagery") -> None:
    """For a remote ``spec``, raise a one-line :class:`LandcoverError` within about :data:`TIMEOUT_S` seconds if
    the file cannot be read: the server does not answer, the URL is not found, access is denied. Local paths
    pass unchecked.

    An http(s) URL is probed with a one-byte ranged GET (not HEAD: a pre-signed URL is signed for GET only);
    an s3/gs path is opened with GDAL under :data:`REMOTE_GDAL_ENV`, whose credentials it needs anyway.
    """
    if not is_remote(spec):
        return
    url = _url(spec)
    if url is None:
        _check_with_gdal(spec, what)
        return
    # Leaving the block closes the connection: a server that ignores Range sends no more than was buffered.
    with open_url(url, what, spec=spec, headers={"Range": "bytes=0-0"}):
        pass


def open_url(url: str, what: str = "imagery", spec: str | None = None,
             headers: dict[str, str] | None = None) -> HTTPResponse:
    """``urllib.request.urlopen(url)`` with a :data:`TIMEOUT_S` timeout, whose failures are one-line
    :class:`LandcoverError` s naming ``spec`` (default: the URL): not found, access denied, no answer, cannot
    connect. Use it as a context manager, like ``urlopen``."""
    spec = spec or url
    req = urllib.request.Request(url, headers={"User-Agent": "landcover", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise LandcoverError(_http_status_message(spec, what, exc.code, exc.reason)) from None
    except TimeoutError:
        raise LandcoverError(_no_answer(spec)) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise LandcoverError(_no_answer(spec)) from None
        raise LandcoverError(f"{spec}: cannot connect ({_reason(exc.reason)}); check the address or your "
                             "network") from None
    except (OSError, ValueError) as exc:  # a connection reset mid-answer, a malformed URL
        raise LandcoverError(f"{spec}: cannot read {what} ({_reason(exc)}); check the address or your "
                             "network") from None


def remote_error(spec: str, gdal_message: str, what: str = "imagery") -> LandcoverError:
    """A one-line error for ``spec`` from the first line of a GDAL error raised while opening or reading it over
    the network (HTTP status, curl timeout, missing credentials), in the words :func:`check_remote` uses."""
    msg = str(gdal_message).splitlines()[0] if str(gdal_message) else "unknown error"
    status = re.search(r"HTTP (?:response )?code:? ?(\d{3})", msg)
    if status:
        return LandcoverError(_http_status_message(spec, what, int(status.group(1)), ""))
    low = msg.lower()
    if "too slow" in low or "timed out" in low or "timeout" in low:
        return LandcoverError(_no_answer(spec))
    if "could not connect" in low or "couldn't connect" in low or "resolve host" in low:
        return LandcoverError(f"{spec}: cannot connect ({msg.removeprefix('CURL error: ')}); check the address "
                              "or your network")
    if "no_sign_request" in low or "credentials" in low or "access_key" in low:
        cloud = "GS" if spec.startswith(("gs://", "/vsigs/")) else "AWS"
        return LandcoverError(f"{spec}: no {cloud} credentials found; set them in the environment (or "
                              f"{cloud}_NO_SIGN_REQUEST=YES for a public bucket)")
    if "does not exist" in low or "no such file" in low:
        return LandcoverError(f"{spec}: {what} not found")
    return LandcoverError(f"{spec}: cannot read {what} over the network ({msg}); check the address or your "
                          "network")


def _check_with_gdal(spec: str, what: str) -> None:
    try:
        with rasterio.Env(**REMOTE_GDAL_ENV), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(gdal_path(spec)):
                pass
    except (RasterioIOError, CPLE_BaseError) as exc:
        raise remote_error(spec, str(exc), what) from None


def _http_status_message(spec: str, what: str, code: int, reason: str) -> str:
    if code in (404, 410):
        return f"{spec}: {what} not found (HTTP {code})"
    if code in (401, 403):
        return (f"{spec}: access denied (HTTP {code}); the address may need credentials or a fresh signature, "
                "or the file may not exist")
    if code == 416:  # an empty file: nothing at byte 0
        return f"{spec}: the file is empty (HTTP 416)"
    why = f" {reason}" if reason else ""
    return f"{spec}: the server answered HTTP {code}{why}; check the address or try again later"


def _no_answer(spec: str) -> str:
    return f"{spec}: the server did not answer within {TIMEOUT_S} s; check the address or your network"


def _reason(reason: object) -> str:
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return " ".join(str(text).split())
