"""Statistics of an export, accumulated chip by chip and mergeable across exports into one folder.

Two kinds, both in the shape ArcGIS writes to ``esri_accumulated_stats.json``:

* class pixel statistics (``ClassPixelStats``): per class the pixels, the chips holding it and the min/max/mean
  pixels per chip; the number of classes per chip;
* band statistics (``BandStatsState``): per band min, max and the running moments ``M1`` (mean), ``M2`` (sum of
  squared deviations) and ``Num`` (pixel count) over the valid imagery pixels of the written chips, so a later
  export into the same folder merges with Chan's parallel algorithm instead of re-reading chips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Integer chip types with exact band sums: the type their squares fit in.
_SQUARE_TYPES = {"uint8": np.uint16, "int8": np.int16, "uint16": np.uint32, "int16": np.int32}


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, min and max of one band (``Num, M1, M2, Min, Max``)."""

    num: int = 0
    m1: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def merge(self, other: Moments) -> Moments:
        """Both sets of pixels together (Chan, Golub and LeVeque's pairwise update)."""
        if other.num == 0:
            return Moments(self.num, self.m1, self.m2, self.min, self.max)
        if self.num == 0:
            return Moments(other.num, other.m1, other.m2, other.min, other.max)
        n = self.num + other.num
        delta = other.m1 - self.m1
        m1 = self.m1 + delta * other.num / n
        m2 = self.m2 + other.m2 + delta * delta * self.num * other.num / n
        return Moments(n, m1, m2, min(self.min, other.min), max(self.max, other.max))

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.m2 / self.num) if self.num else 0.0

    def to_esri(self) -> dict:
        if self.num == 0:
            return {"Min": 0, "Max": 0, "Mean": 0, "StdDev": 0, "M1": 0, "M2": 0, "Num": 0}
        return {"Min": _number(self.min), "Max": _number(self.max), "Mean": self.m1, "StdDev": self.std,
                "M1": self.m1, "M2": self.m2, "Num": int(self.num)}

    @classmethod
    def from_esri(cls, d: dict) -> Moments:
        num = int(d.get("Num", 0))
        if num == 0:
            return cls()
        return cls(num, float(d["M1"]), float(d["M2"]), float(d["Min"]), float(d["Max"]))


def _number(v: float) -> int | float:
    """Whole numbers as JSON integers (band minima and maxima of integer imagery)."""
    return int(v) if float(v).is_integer() else float(v)


class BandAccumulator:
    """Per-band moments over the valid pixels of the chips added.

    8- and 16-bit integer imagery keeps exact integer sums of values and squares (numpy's vectorised sums cost
    less per pixel than a histogram, and Python integers never overflow); other types merge per-chip float64
    moments.
    """

    def __init__(self, count: int, dtype: str):
        self.count = count
        self.square_type = _SQUARE_TYPES.get(dtype)
        self.num = 0
        self.s1 = [0] * count
        self.s2 = [0] * count
        self.min = [math.inf] * count
        self.max = [-math.inf] * count
        self.moments = [Moments() for _ in range(count)]

    def add(self, chip: np.ndarray, valid: np.ndarray | None) -> None:
        """Add a (bands, h, w) chip; ``valid`` is its (h, w) mask, or None when every pixel is valid."""
        v = chip.reshape(self.count, -1) if valid is None else chip[:, valid]
        if v.shape[1] == 0:
            return
        if self.square_type is None:
            self._add_float(v)
            return
        mins, maxs = v.min(axis=1), v.max(axis=1)
        s1 = v.sum(axis=1, dtype=np.int64)
        sq = v.astype(self.square_type)
        np.multiply(sq, sq, out=sq)
        s2 = sq.sum(axis=1, dtype=np.uint64 if sq.dtype.kind == "u" else np.int64)
        self.num += v.shape[1]
        for b in range(self.count):
            self.s1[b] += int(s1[b])
            self.s2[b] += int(s2[b])
            self.min[b] = min(self.min[b], mins[b].item())
            self.max[b] = max(self.max[b], maxs[b].item())

    def _add_float(self, v: np.ndarray) -> None:
        for b in range(self.count):
            x = v[b].astype(np.float64, copy=False)
            x = x[np.isfinite(x)]
            if x.size:
                mean = float(x.mean())
                part = Moments(int(x.size), mean, float(((x - mean) ** 2).sum()), float(x.min()), float(x.max()))
                self.moments[b] = self.moments[b].merge(part)

    def result(self) -> list[Moments]:
        if self.square_type is None:
            return list(self.moments)
        n = self.num
        if n == 0:
            return [Moments() for _ in range(self.count)]
        # M2 = sum(x^2) - sum(x)^2 / n, exact in integers up to the one division.
        return [Moments(n, s1 / n, (n * s2 - s1 * s1) / n, float(lo), float(hi))
                for s1, s2, lo, hi in zip(self.s1, self.s2, self.min, self.max, strict=True)]


@dataclass
class ClassCounts:
    """Per class value (0..255): pixels, chips holding it, min/max pixels per chip; classes per chip.

    Value 0 (no data) is counted but never reported as a class.
    """

    pixels: np.ndarray
    images: np.ndarray
    min: np.ndarray
    max: np.ndarray
    tiles: int = 0
    cpi_min: int | None = None
    cpi_max: int | None = None
    cpi_sum: int = 0

    @classmethod
    def empty(cls) -> ClassCounts:
        z = np.zeros(256, dtype=np.int64)
        return cls(z.copy(), z.copy(), np.full(256, np.iinfo(np.int64).max), z.copy())

    def add(self, hist: np.ndarray) -> None:
        """Add one label chip's histogram (256 counts)."""
        self.pixels += hist
        present = hist > 0
        self.images += present
        np.minimum(self.min, hist, out=self.min)
        np.maximum(self.max, hist, out=self.max)
        self.tiles += 1
        n = int(present[1:].sum())
        self.cpi_min = n if self.cpi_min is None else min(self.cpi_min, n)
        self.cpi_max = n if self.cpi_max is None else max(self.cpi_max, n)
        self.cpi_sum += n

    def values(self) -> list[int]:
        """Class values with at least one pixel."""
        return [int(v) for v in np.flatnonzero(self.pixels[1:]) + 1]

    def merge(self, other: ClassCounts) -> ClassCounts:
        # An empty part must not pull the minimum down; a non-empty one already holds 0 for absent classes.
        def part_min(c: ClassCounts) -> np.ndarray:
            return c.min if c.tiles else np.full(256, np.iinfo(np.int64).max)

        mins = [m for m in (self.cpi_min, other.cpi_min) if m is not None]
        maxs = [m for m in (self.cpi_max, other.cpi_max) if m is not None]
        return ClassCounts(
            self.pixels + other.pixels, self.images + other.images,
            np.minimum(part_min(self), part_min(other)), np.maximum(self.max, other.max),
            self.tiles + other.tiles, min(mins) if mins else None, max(maxs) if maxs else None,
            self.cpi_sum + other.cpi_sum,
        )

    def to_esri(self, class_values: list[int]) -> dict:
        """``ClassPixelStats`` for the given classes, in that order."""
        n = self.tiles
        per_class = []
        for v in class_values:
            total = int(self.pixels[v])
            per_class.append({"Min": int(self.min[v]) if n else 0, "Max": int(self.max[v]), "Mean": total / n if n else 0,
                              "Sum": total, "Count": n})
        return {
            "NumClasses": len(class_values),
            "NumImagesTotal": n,
            "NumImagesPerClass": [int(self.images[v]) for v in class_values],
            "NumPixelsPerClass": [int(self.pixels[v]) for v in class_values],
            "NumClassesPerImage": {"Min": self.cpi_min or 0, "Max": self.cpi_max or 0,
                                   "Mean": self.cpi_sum / n if n else 0, "Sum": self.cpi_sum, "Count": n},
            "PixelsPerClass": per_class,
        }

    @classmethod
    def from_esri(cls, stats: dict, class_values: list[int]) -> ClassCounts:
        """Counts back from a ``ClassPixelStats`` block whose lists follow ``class_values``."""
        c = cls.empty()
        c.tiles = int(stats.get("NumImagesTotal", 0))
        if c.tiles:
            c.min[:] = 0  # classes not listed had 0 pixels in every chip
        per_image = stats.get("NumImagesPerClass", [])
        per_pixel = stats.get("NumPixelsPerClass", [])
        per_class = stats.get("PixelsPerClass", [])
        for i, v in enumerate(class_values):
            if i < len(per_pixel):
                c.pixels[v] = int(per_pixel[i])
            if i < len(per_image):
                c.images[v] = int(per_image[i])
            if i < len(per_class):
                c.min[v] = int(per_class[i].get("Min", 0))
                c.max[v] = int(per_class[i].get("Max", 0))
        cpi = stats.get("NumClassesPerImage", {})
        if c.tiles:
            c.cpi_min, c.cpi_max = int(cpi.get("Min", 0)), int(cpi.get("Max", 0))
            c.cpi_sum = int(cpi.get("Sum", 0))
        return c
