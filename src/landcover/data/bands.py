"""Band selections given by the user (``extract_bands``, ``rgb_bands``), checked into 0-based indices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..errors import LandcoverError


def band_indices(value: object, n: int, name: str, *, distinct: bool, length: int | None,
                 hint: str) -> list[int]:
    """``value`` as a list of 0-based indices into ``n`` bands, or one LandcoverError line saying what is wrong."""
    items: list | None = None
    if isinstance(value, (Iterable, np.ndarray)) and not isinstance(value, (str, bytes, Mapping)):
        items = [int(b) if isinstance(b, np.integer) else b for b in value]
    shown = f"{name}={items if items is not None else value!r}"
    tail = f"; {hint}"
    if items is None:
        raise LandcoverError(f"{shown}: give a list of 0-based band indices{tail}")
    if not items:
        raise LandcoverError(f"{shown}: the list is empty{tail}")
    if length is not None and len(items) != length:
        raise LandcoverError(f"{shown}: {len(items)} indices, not {length}{tail}")
    out = []
    for b in items:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)):
            raise LandcoverError(f"{shown}: {b!r} is not a band index (whole numbers, 0-based){tail}")
        b = int(b)
        if not 0 <= b < n:
            raise LandcoverError(f"{shown}: band {b} is out of range{tail}")
        if distinct and b in out:
            raise LandcoverError(f"{shown}: band {b} is given twice{tail}")
        out.append(b)
    return out


def check_rgb_bands(rgb_bands: Sequence[int], band_names: list[str]) -> list[int]:
    """``rgb_bands`` checked against the (extracted) training bands: 3 indices into ``band_names``."""
    n = len(band_names)
    return band_indices(rgb_bands, n, "rgb_bands", distinct=False, length=3,
                        hint=f"give 3 0-based indices into the {n} training band{'s' if n != 1 else ''} "
                        f"{band_names} (after extract_bands), e.g. {[2, 1, 0] if n >= 3 else [0, 0, 0]}")
