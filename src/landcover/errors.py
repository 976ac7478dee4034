"""The one exception type users see, and how its messages name the user's arguments.

Anything the user can fix (a missing file, a bad option, rasters that do not overlap) is raised as
:class:`LandcoverError` with a single line that names the file and the fix. The CLI prints that line and exits
with code 2; the Python API lets it propagate so notebooks show the same message.

A message names an argument the way the user gave it (:func:`arg`): ``tile_size=100`` in Python,
``--tile-size 100`` on the command line, which runs the API inside :func:`cli_spelling`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any


class LandcoverError(Exception):
    """A problem with the user's input, described in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep messages on one line: CLI users read them in a terminal, scripts grep them.
        super().__init__(" ".join(str(message).split()))


class NetworkError(LandcoverError):
    """Reading imagery over the network failed part-way (a command that keeps finished work can resume)."""


#: this package's folder: frames from files under it are landcover's own, not the user's
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` that points at the user's line: the first caller outside landcover, however deep in
    the package the warning is raised (a counted ``stacklevel`` points into the package as soon as the code
    calling it is split or moved). From the CLI, every frame is landcover's and it points at the outermost."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of this function
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_CLI = contextvars.ContextVar("landcover_cli_spelling", default=False)

#: API arguments whose command-line flag is not their name with dashes
CLI_FLAGS = {
    "input_raster": "--imagery", "output": "--out", "test_time_augmentation": "--tta", "chip_format": "--format",
    "val_split_pct": "--val-split", "pretrained_path": "--pretrained", "num_steps": "--steps",
}
#: boolean arguments whose flag turns them off
CLI_NEGATIVE_FLAGS = {"predict_background": "--no-predict-background"}

_MISSING = object()


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    """Within this block, :func:`arg` names arguments as command-line flags (the CLI runs the API in it)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def on_command_line() -> bool:
    """Whether messages are for the command line (within :func:`cli_spelling`), e.g. to count bands from 1."""
    return _CLI.get()


def arg(name: str, value: Any = _MISSING) -> str:
    """How a message names the API argument ``name`` (with ``value`` if given), as the user wrote it.

    In Python ``tile_size=100``, ``backend='gpu'``, ``overwrite=True``; on the command line ``--tile-size 100``,
    ``--backend gpu``, ``--overwrite``, ``--no-predict-background`` (for ``predict_background=False``).
    Without a value, just the name: ``class_field`` or ``--class-field``.
    """
    if not on_command_line():
        return name if value is _MISSING else f"{name}={_python(value)}"
    if isinstance(value, bool):
        if not value and name in CLI_NEGATIVE_FLAGS:
            return CLI_NEGATIVE_FLAGS[name]
        value = _MISSING  # a switch: given or not
    flag = CLI_FLAGS.get(name) or "--" + name.replace("_", "-")
    if value is _MISSING:
        return flag
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(str(_plain(v)) for v in value)}"
    return f"{flag} {_plain(value)}"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (numpy 2 writes ``np.float64(2.0)`` in a repr)."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value


def _python(value: Any) -> str:
    """``value`` as Python source a user could have typed."""
    value = _plain(value)
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    if isinstance(value, (list, tuple)):
        items = ", ".join(_python(v) for v in value)
        return f"({items}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{items}]"
    return repr(value)
