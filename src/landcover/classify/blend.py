"""From logits to classes: tile weights, class decoding and probabilities.

Overlapping tiles are blended on their *logits*, weighted by each tile's 2-D window (the outer product of
its row and column windows from :mod:`.plan`), as arcgis.learn's Hann blending does. Logits rather than
softmax probabilities: they are what the model outputs (no exponentials per tile), test-time augmentation
averages them the same way, and a weighted mean of logits is a geometric mean of the probabilities, which
lets a confident tile outvote an unsure one near the other's edge.

Where exactly one tile has weight, its own argmax is used; elsewhere the weighted logits of all covering tiles
are summed in the canonical tile order (row-major over the whole raster) and the argmax is taken of the sum.
The order is fixed, so the floating-point result is the same whichever block or process computed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .plan import TilePlan


def tile_weights(plan: TilePlan, r: int, c: int) -> np.ndarray:
    """The (h, w) float32 blending window of tile (r, c). Shared between tiles with the same window: do not
    modify it."""
    return _outer(plan.rows.window(r).tobytes(), plan.cols.window(c).tobytes())


@lru_cache(maxsize=16)
def _outer(rows: bytes, cols: bytes) -> np.ndarray:
    # Most tiles share one of a few windows (interior, first, last); a 1024² outer product costs ~2 ms.
    return np.multiply.outer(np.frombuffer(rows, np.float32), np.frombuffer(cols, np.float32))


@dataclass(frozen=True)
class ClassDecoder:
    """Turns logits (C, h, w) into class values and probabilities.

    ``lut`` maps model class index to class value (index 0, NoData/background, maps to 0); ``allowed`` marks
    the indices that may be predicted (background is excluded with ``predict_background=False``, ignored
    classes always).
    """

    lut: np.ndarray
    allowed: np.ndarray

    @classmethod
    def build(cls, lut: np.ndarray, predict_background: bool, ignore_values=()) -> ClassDecoder:
        lut = np.asarray(lut, dtype=np.uint8)
        allowed = np.ones(len(lut), dtype=bool)
        allowed[0] = predict_background
        for i, v in enumerate(lut):
            if i and int(v) in set(int(x) for x in ignore_values):
                allowed[i] = False
        if not allowed.any():
            allowed[0] = True
        return cls(lut, allowed)

    @classmethod
    def for_package(cls, pkg, predict_background: bool = True) -> ClassDecoder:
        """The decoder of a model package. As in arcgis.learn, the background (index 0, which training never
        learns) is predicted only if asked and the model has a class of value 0 or a single class: otherwise
        its untrained score would leave holes of nodata in the map."""
        background = bool(predict_background) and (
            len(pkg.classes) == 1 or any(int(c.value) == 0 for c in pkg.classes))
        return cls.build(pkg.index_to_value, background, pkg.ignore_classes)

    @property
    def predicts_background(self) -> bool:
        return bool(self.allowed[0])

    @property
    def key(self) -> str:
        """A short text identifying the decoding (for caches of models that decode in-graph)."""
        return "".join("1" if a else "0" for a in self.allowed)

    @property
    def bias(self) -> np.ndarray:
        """Added to logits before argmax: 0 for allowed classes, -inf for the others."""
        return np.where(self.allowed, 0.0, -np.inf).astype(np.float32)

    def _allowed_view(self, logits: np.ndarray) -> tuple[np.ndarray, int]:
        idx = np.flatnonzero(self.allowed)
        if idx[-1] - idx[0] + 1 == len(idx):  # a contiguous run: a view, no copy
            return logits[idx[0]: idx[-1] + 1], int(idx[0])
        return logits[idx], -1

    def classes(self, logits: np.ndarray) -> np.ndarray:
        """Class values (h, w) uint8 of the argmax over allowed classes (first index on ties)."""
        view, offset = self._allowed_view(logits)
        arg = view.argmax(axis=0)
        if offset >= 0:
            return self.lut[offset:][arg]
        return self.lut[np.flatnonzero(self.allowed)][arg]

    def probabilities(self, logits: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """Softmax over the allowed classes of ``logits / weight``, one uint8 band (p * 255) per class value
        (index 1..C-1; background has no band)."""
        x = logits if weight is None else logits / np.maximum(weight, np.float32(1e-12))
        x = x + self.bias.reshape(-1, 1, 1)
        x = x - x.max(axis=0, keepdims=True)
        np.exp(x, out=x)
        x *= np.float32(255.0) / x.sum(axis=0, keepdims=True)
        return np.rint(x[1:]).astype(np.uint8)
