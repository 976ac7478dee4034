"""A confusion matrix counted window by window, and the accuracy metrics derived from it.

Convention used everywhere in this package: rows are the MAP (prediction) classes, columns the REFERENCE
classes — as in Olofsson et al. (2014) and ArcGIS's Compute Confusion Matrix. User's accuracy (precision) is
read along a row, producer's accuracy (recall) down a column.
"""

from __future__ import annotations

import numpy as np

#: When both value ranges fit in this span, pairs are counted with one np.bincount (the fast path).
_DENSE_SPAN = 1024


class ConfusionCounter:
    """Counts (map value, reference value) pairs over many windows, without knowing the classes in advance."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[int, int], int] = {}

    def add(self, mapped: np.ndarray, reference: np.ndarray) -> None:
        """Count the pairs of two equally long int64 arrays of class values."""
        if mapped.size == 0:
            return
        lo = min(int(mapped.min()), int(reference.min()))
        span = max(int(mapped.max()), int(reference.max())) - lo + 1
        if span <= _DENSE_SPAN:
            codes = mapped * span  # (m - lo) * span + (r - lo), with one temporary array
            codes += reference
            if lo:
                codes -= lo * (span + 1)
            counts = np.bincount(codes, minlength=span * span)
            present = np.flatnonzero(counts)
            pairs = zip(present // span + lo, present % span + lo, counts[present], strict=True)
        else:
            uniq, counts = np.unique(np.stack([mapped, reference]), axis=1, return_counts=True)
            pairs = zip(uniq[0], uniq[1], counts, strict=True)
        for m, r, n in pairs:
            key = (int(m), int(r))
            self._pairs[key] = self._pairs.get(key, 0) + int(n)

    @property
    def total(self) -> int:
        return sum(self._pairs.values())

    def matrix(self, values: list[int] | None = None) -> tuple[list[int], np.ndarray]:
        """``(values, matrix)``: the sorted class values seen on either side and the int64 matrix (rows = map)."""
        if values is None:
            values = sorted({v for pair in self._pairs for v in pair})
        index = {v: i for i, v in enumerate(values)}
        mat = np.zeros((len(values), len(values)), dtype=np.int64)
        for (m, r), n in self._pairs.items():
            mat[index[m], index[r]] += n
        return values, mat


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den is 0 (an undefined metric, written as null in JSON)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_metrics(matrix: np.ndarray) -> dict:
    """Accuracy metrics of a confusion matrix with rows = map classes and columns = reference classes.

    Returns a dict of numpy arrays (one entry per class) and floats: ``map_totals``, ``reference_totals``,
    ``correct``, ``users_accuracy`` (= ``precision``), ``producers_accuracy`` (= ``recall``), ``f1``, ``iou``,
    ``overall_accuracy``, ``kappa`` (Cohen's) and ``mean_iou`` (macro average over the classes present in the map
    or the reference, i.e. all rows/columns that are not all zero). Undefined values are NaN.
    """
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum()
    diag = np.diag(m)
    map_tot, ref_tot = m.sum(axis=1), m.sum(axis=0)
    users = _ratio(diag, map_tot)
    producers = _ratio(diag, ref_tot)
    f1 = _ratio(2 * diag, map_tot + ref_tot)
    iou = _ratio(diag, map_tot + ref_tot - diag)
    oa = float(diag.sum() / total) if total else float("nan")
    expected = float((map_tot * ref_tot).sum() / total**2) if total else float("nan")
    kappa = float((oa - expected) / (1 - expected)) if total and expected != 1 else float("nan")
    present = (map_tot + ref_tot) > 0
    mean_iou = float(iou[present].mean()) if present.any() else float("nan")
    return {
        "map_totals": map_tot.astype(np.int64), "reference_totals": ref_tot.astype(np.int64),
        "correct": diag.astype(np.int64), "users_accuracy": users, "producers_accuracy": producers,
        "precision": users, "recall": producers, "f1": f1, "iou": iou,
        "overall_accuracy": oa, "kappa": kappa, "mean_iou": mean_iou,
    }
