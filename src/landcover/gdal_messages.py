"""GDAL's and libtiff's own messages, routed through one handler while a command runs.

rasterio hands every GDAL ``CPLError`` (libtiff's included) to Python logging, under the ``rasterio`` loggers.
With no logging configured, Python's last-resort handler prints each one on stderr: a disk that filled up during
an export printed 884 libtiff lines (``_tiffWriteProc: No space left on device.``) before the command's own final
line, which named no path. Those lines did not even pass through logging: libtiff reports errors it meets
outside a GDAL dataset handle (its low-level write and seek callbacks) to its own process-wide handler, which
prints on stderr. Inside :func:`routed`, libtiff's process-wide handlers log to ``rasterio.libtiff``, and every
record under ``rasterio`` goes to one :class:`GdalMessages` handler instead:
it passes them on to the ``landcover.gdal`` logger at DEBUG (visible to whoever configures logging at that
level) and notes what they say, so that a failure caused by a full disk (or a file-size limit) becomes one
:class:`~landcover.errors.LandcoverError` naming the output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import sys
from collections.abc import Iterator

from .errors import LandcoverError

#: the loggers rasterio sends GDAL's messages to (``rasterio._env``, ``rasterio._err``, ...)
GDAL_LOGGER = "rasterio"
#: where the routed messages go, at DEBUG
DEBUG_LOGGER = "landcover.gdal"
#: where libtiff's process-wide messages are logged while routed (under GDAL_LOGGER, so the same handler sees them)
LIBTIFF_LOGGER = "rasterio.libtiff"

#: words of the system's (and GDAL's) messages when the disk is full, or a file passed a size limit
DISK_FULL_WORDS = ("no space left on device", "disk full", "disk is full", "out of disk space")
TOO_LARGE_WORDS = ("file too large", "file size limit exceeded")


class GdalMessages(logging.Handler):
    """Collects GDAL's messages: counts them, notes a full disk or a file-size limit, logs them at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.disk_full = False
        self.too_large = False
        self._debug = logging.getLogger(DEBUG_LOGGER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record must not become a second error
            text = str(record.msg)
        self.count += 1
        low = text.lower()
        self.disk_full |= any(w in low for w in DISK_FULL_WORDS)
        self.too_large |= any(w in low for w in TOO_LARGE_WORDS)
        self._debug.debug("%s (%s): %s", record.levelname, record.name, text)


def cause(exc: BaseException, seen: GdalMessages | None = None) -> str | None:
    """``"disk full"`` or ``"too large"`` when ``exc`` (or the GDAL messages before it) says the output could
    not be written for lack of room; else None."""
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code == errno.ENOSPC or any(w in text for w in DISK_FULL_WORDS) or (seen is not None and seen.disk_full):
        return "disk full"
    if code == errno.EFBIG or any(w in text for w in TOO_LARGE_WORDS) or (seen is not None and seen.too_large):
        return "too large"
    return None


def no_room_message(where: str | os.PathLike, why: str, incomplete: bool = False) -> str:
    """The one line for an output that ran out of room (``incomplete``: the command went on and left files)."""
    left = ", so files written there are incomplete" if incomplete else ""
    if why == "too large":
        return (f"{where}: a file grew past the file-size limit (ulimit -f, or the file system's largest "
                f"file){left}; raise the limit or write to another disk, then run again")
    return f"{where}: the disk is full{left}; free some space" + (", then run again" if incomplete else "")


@contextlib.contextmanager
def routed(output: str | os.PathLike | None = None) -> Iterator[GdalMessages]:
    """Within the block, GDAL's messages go to one :class:`GdalMessages` handler instead of one stderr line
    each; a write that fails for lack of room is re-raised as one :class:`LandcoverError` naming ``output``
    (the command's output file or folder as the user gave it). Other errors pass through unchanged, and so do
    landcover's own one-line errors (they already name their file)."""
    handler = GdalMessages()
    logger = logging.getLogger(GDAL_LOGGER)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # not on to the root logger, whose last resort prints every message on stderr
    libtiff = _LibtiffHandlers()
    try:
        yield handler
        # libtiff does not always turn a failed write into an error GDAL raises: an export whose chips hit the
        # file-size limit reported success over truncated chips. Its messages are the only sign: say so.
        why = "disk full" if handler.disk_full else "too large" if handler.too_large else None
        if why is not None:
            raise LandcoverError(no_room_message(output or "the output folder", why, incomplete=True))
    except LandcoverError:
        raise
    except Exception as exc:
        why = cause(exc, handler) if _is_write_error(exc) else None
        if why is None:
            raise
        where = output if output is not None else (getattr(exc, "filename", None) or "the output folder")
        raise LandcoverError(no_room_message(where, why)) from None
    finally:
        libtiff.restore()
        logger.removeHandler(handler)
        logger.propagate = propagate


def _is_write_error(exc: BaseException) -> bool:
    """An error of the system or of GDAL (not a bug of ours that happened to follow a GDAL message)."""
    from rasterio._err import CPLE_BaseError  # GDAL's errors (rasterio.errors does not re-export them)
    from rasterio.errors import RasterioError

    return isinstance(exc, (OSError, RasterioError, CPLE_BaseError))


#: libtiff's handler type: ``void (*)(const char *module, const char *fmt, va_list ap)``
_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


def _format(fmt: bytes | None, ap: int | None) -> str:
    """A printf-style message from libtiff's (fmt, va_list), formatted by the C library's vsnprintf."""
    if not fmt:
        return ""
    try:
        libc = ctypes.CDLL(None)
        buf = ctypes.create_string_buffer(2048)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        libc.vsnprintf(buf, len(buf), fmt, ap)
        return buf.value.decode("utf-8", "replace")
    except (OSError, AttributeError, TypeError):  # no vsnprintf to call: the format string says enough
        return fmt.decode("utf-8", "replace")


def _log_libtiff(level: int):
    log = logging.getLogger(LIBTIFF_LOGGER)

    def handle(module: bytes | None, fmt: bytes | None, ap: int | None) -> None:
        try:
            text = _format(fmt, ap)
            where = module.decode("utf-8", "replace") if module else "libtiff"
            log.log(level, "%s: %s", where, text)
        except Exception:  # noqa: S110 - an exception must never unwind into C code
            pass

    return _TIFF_HANDLER(handle)


# Created once and kept: libtiff holds raw pointers to them, so they must outlive every call into libtiff.
_ON_ERROR = _log_libtiff(logging.ERROR)
_ON_WARNING = _log_libtiff(logging.WARNING)


class _LibtiffHandlers:
    """libtiff's process-wide error and warning handlers pointed at logging until :meth:`restore`.

    Every copy of libtiff loaded in the process is set (rasterio's wheel and Pillow's each bring one). Where
    libtiff cannot be found this way (not Linux, a static build), nothing changes: its lines are printed as
    before.
    """

    def __init__(self) -> None:
        self.saved: list[tuple[ctypes.CDLL, int | None, int | None]] = []
        for lib in _loaded_libtiffs():
            try:
                set_error, set_warning = lib.TIFFSetErrorHandler, lib.TIFFSetWarningHandler
            except AttributeError:
                continue
            for fn in (set_error, set_warning):
                fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
            old_error = set_error(ctypes.cast(_ON_ERROR, ctypes.c_void_p))
            old_warning = set_warning(ctypes.cast(_ON_WARNING, ctypes.c_void_p))
            self.saved.append((lib, old_error, old_warning))

    def restore(self) -> None:
        for lib, old_error, old_warning in self.saved:
            lib.TIFFSetErrorHandler(old_error)
            lib.TIFFSetWarningHandler(old_warning)
        self.saved = []


def _loaded_libtiffs() -> list[ctypes.CDLL]:
    """The libtiff libraries already mapped into this process (none loaded anew), from /proc/self/maps."""
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_NOLOAD"):
        return []
    import rasterio  # noqa: F401 - loads GDAL, and with it the libtiff it writes with

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split(None, 5)[-1].strip() for line in maps if "libtiff" in line})
    except OSError:
        return []
    libs = []
    for path in paths:
        if not os.path.basename(path).startswith("libtiff") or ".so" not in path:
            continue
        try:
            libs.append(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY))
        except OSError:
            continue
    return libs
