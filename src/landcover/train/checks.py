"""Argument checks and wording shared by the parts of :class:`~landcover.train.UnetClassifier`."""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import LandcoverError, arg, on_command_line
from .losses import DICE_AVERAGES


def _check_flag(name: str, value) -> bool:
    """A True/False argument; anything else (a string, a number) is one line naming the argument."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise LandcoverError(f"{arg(name, value)}: give True or False")


def _bands(bands) -> str:
    """Chip bands as the user counts them: 0-based in Python, from 1 on the command line (as GDAL)."""
    if on_command_line():
        return " ".join(str(int(b) + 1) for b in bands)
    return f"{[int(b) for b in bands]} (0-based)"


def _extract_bands_arg(bands) -> str:
    """``extract_bands=[3, 0, 1]`` in Python, ``--extract-bands 4 1 2`` on the command line (counted from 1)."""
    return arg("extract_bands", [int(b) + 1 if on_command_line() else int(b) for b in bands])


def _check_dice_average(value) -> str:
    if isinstance(value, str) and value in DICE_AVERAGES:
        return value
    raise LandcoverError(f"{arg('dice_loss_average', value)}: choose {' or '.join(repr(v) for v in DICE_AVERAGES)}")


def _class_values(what: str, values, known: list[int]) -> list[int]:
    """Class values given as one value or a list of them (None: none), each one of ``known``; one line otherwise."""
    if values is None:
        return []
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    items = list(values) if isinstance(values, (list, tuple, set, frozenset, np.ndarray)) else None
    if items is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise LandcoverError(f"{what}(ignore_classes={values!r}): give class values, e.g. "
                             f"ignore_classes=[{known[0]}] (classes: {', '.join(map(str, known))})")
    unknown = [int(v) for v in items if int(v) not in known]
    if unknown:
        raise LandcoverError(f"{what}(ignore_classes=...): class {', '.join(map(str, unknown))} is not in the "
                             f"model (classes: {', '.join(map(str, known))})")
    return [int(v) for v in items]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _bands_text(names: list[str], extract_bands: list[int]) -> str:
    """``Red, Green, Blue``, or with a band selection ``NearInfrared, Red, Green (imagery bands 4, 1, 2)``."""
    text = ", ".join(names)
    if extract_bands != list(range(len(extract_bands))):
        text += f" (imagery bands {', '.join(str(b + 1) for b in extract_bands)})"
    return text
