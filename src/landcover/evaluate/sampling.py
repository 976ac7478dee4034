"""Sample-based accuracy and area estimation (Olofsson et al. 2014) and the stream-friendly sampler behind it.

Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A. (2014). Good practices
for estimating area and assessing accuracy of land change. Remote Sensing of Environment 148, 42-57.

Sampling design: the map classes are the strata. Every candidate pixel gets a uniform random key as the raster
streams past; each stratum keeps only the pixels with the smallest keys (a bottom-k reservoir). Keeping the k
smallest of i.i.d. keys is a simple random sample without replacement of size k, so after one pass each stratum
holds an exact random sample whatever its allocation turns out to be, in memory proportional to the sample size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LandcoverError, arg

STRATEGIES = ("stratified", "equalized", "random")

#: Smallest sample per stratum that "stratified" aims for (Olofsson et al. recommend 50-100 for rare classes),
#: lowered to an equal share when the total sample is too small for it.
MIN_PER_STRATUM = 50


@dataclass(frozen=True)
class OlofssonEstimates:
    """Stratified estimates; index i of every array is the i-th class of the counts matrix.

    ``proportions``: estimated area proportions p_ij (rows = map, columns = reference); ``area``, ``area_se``,
    ``area_ci95``: estimated area of each reference class, its standard error and the 95 % half-width (in the
    unit of ``pixel_area``); ``users_*``, ``producers_*``, ``overall_*``: accuracies and 95 % half-widths.
    """

    proportions: np.ndarray
    area: np.ndarray
    area_se: np.ndarray
    area_ci95: np.ndarray
    map_area: np.ndarray
    users_accuracy: np.ndarray
    users_ci95: np.ndarray
    producers_accuracy: np.ndarray
    producers_ci95: np.ndarray
    overall_accuracy: float
    overall_ci95: float


def olofsson_estimates(counts, strata_pixels, pixel_area: float = 1.0, z: float = 1.96) -> OlofssonEstimates:
    """Area-adjusted accuracy and class areas with confidence intervals (Olofsson et al. 2014, eqs. 2-10).

    Args:
        counts: K x K sample counts n_ij, rows = map class (stratum) i, columns = reference class j.
        strata_pixels: size N_i of each map stratum, in pixels (or any area unit: only the weights
            W_i = N_i / sum N matter, and the total for the areas).
        pixel_area: area of one pixel (e.g. 0.09 ha for 30 m pixels); areas come out in this unit.
        z: normal quantile of the confidence intervals (1.96 for 95 %).

    A stratum with fewer than two sample units contributes no variance (its term needs n_i. - 1 > 0); a stratum
    with pixels but no sample cannot be estimated and contributes nothing.
    """
    n = np.asarray(counts, dtype=np.float64)
    big_n = np.asarray(strata_pixels, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != n.shape[1] or big_n.shape != (n.shape[0],):
        raise ValueError("counts must be K x K and strata_pixels of length K")
    total_area = big_n.sum() * pixel_area
    weights = big_n / big_n.sum()
    n_i = n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)  # n_ij / n_i.
        var_den = np.where(n_i > 1, n_i - 1, np.inf)[:, None]  # no variance term below two units
    p = weights[:, None] * q  # eq. (1) with n_ij / n_i.
    p_col = p.sum(axis=0)  # eq. (9)
    se_col = np.sqrt((weights[:, None] ** 2 * q * (1 - q) / var_den).sum(axis=0))  # eq. (10)

    diag = np.diag(p)
    p_row = p.sum(axis=1)
    users = _div(diag, p_row)  # eq. (3)
    producers = _div(diag, p_col)  # eq. (4)
    overall = float(diag.sum())  # eq. (2)
    u0 = np.nan_to_num(users)
    var_users = u0 * (1 - u0) / var_den[:, 0]  # eq. (6)
    var_overall = float((weights**2 * u0 * (1 - u0) / var_den[:, 0]).sum())  # eq. (5)

    # eq. (7): N_hat_.j = sum_i N_i. / n_i. * n_ij, the estimated number of pixels of reference class j.
    with np.errstate(invalid="ignore", divide="ignore"):
        n_hat = (np.where(n_i[:, None] > 0, big_n[:, None] / n_i[:, None], 0.0) * n).sum(axis=0)
    p0 = np.nan_to_num(producers)
    other = (big_n[:, None] ** 2 * q * (1 - q) / var_den)  # N_i.^2 n_ij/n_i. (1 - n_ij/n_i.) / (n_i. - 1)
    other_sum = other.sum(axis=0) - np.diag(other)
    own = big_n**2 * (1 - p0) ** 2 * u0 * (1 - u0) / var_den[:, 0]
    var_producers = _div(own + p0**2 * other_sum, n_hat**2)

    return OlofssonEstimates(
        proportions=p,
        area=p_col * total_area,
        area_se=se_col * total_area,
        area_ci95=z * se_col * total_area,
        map_area=weights * total_area,
        users_accuracy=users,
        users_ci95=np.where(np.isnan(users), np.nan, z * np.sqrt(var_users)),
        producers_accuracy=producers,
        producers_ci95=np.where(np.isnan(producers), np.nan, z * np.sqrt(var_producers)),
        overall_accuracy=overall,
        overall_ci95=z * math.sqrt(var_overall),
    )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=np.asarray(den) != 0)
    return out


# --- allocation -------------------------------------------------------------------------------------------

def allocate(strategy: str, size: int, strata_pixels: dict[int, int],
             strata_sizes: dict[int, float] | None = None) -> dict[int, int]:
    """Sample units per stratum (map class) for a total of ``size``.

    ``stratified``: proportional to stratum area (``strata_sizes``, default the pixels that can be drawn), but
    at least ``min(50, size // K)`` per stratum (rare classes would otherwise get too few units to estimate their
    accuracy); ``equalized``: the same number per stratum; ``random``: simple random sampling, returned as
    ``{0: size}`` (one stratum covering every pixel). No stratum gets more units than ``strata_pixels`` it can
    draw from; what does not fit is given to the others.
    """
    if strategy not in STRATEGIES:
        raise LandcoverError(f"{arg('strategy', strategy)}: use one of {', '.join(STRATEGIES)}")
    total = int(sum(strata_pixels.values()))
    if size < 1:
        raise LandcoverError(f"{arg('sample', size)}: the sample size must be at least 1")
    if size > total:
        raise LandcoverError(f"{arg('sample', size)}: larger than the {total:,} pixels that have data in both the "
                             "prediction and the reference; use a smaller sample")
    if strategy == "random":
        return {0: size}
    keys = sorted(strata_pixels)
    cap = np.array([strata_pixels[k] for k in keys], dtype=np.int64)
    if strategy == "equalized":
        share = np.ones(len(keys))
        floor = 0
    else:
        sizes = np.array([(strata_sizes or strata_pixels).get(k, 0) for k in keys], dtype=float)
        share = sizes / sizes.sum() if sizes.sum() > 0 else cap / cap.sum()
        floor = min(MIN_PER_STRATUM, size // len(keys))
    alloc = _fill(size, share, cap, floor)
    return {k: int(a) for k, a in zip(keys, alloc, strict=True)}


def _fill(size: int, share: np.ndarray, cap: np.ndarray, floor: int) -> np.ndarray:
    """Integer allocation summing to ``size``: at least ``floor`` (and at most ``cap``) each, the rest by share.

    Strata whose proportional target falls below the floor, or exceeds their capacity, are fixed at that bound
    and the rest is shared again among the others; largest remainders settle the rounding.
    """
    k = len(share)
    fixed = np.full(k, -1.0)
    while True:
        free = fixed < 0
        left = size - fixed[~free].sum()
        target = np.zeros(k)
        if free.any() and share[free].sum() > 0:
            target[free] = left * share[free] / share[free].sum()
        low = free & (target < np.minimum(floor, cap))
        high = free & (target > cap)
        if not (low.any() or high.any()):
            break
        fixed[low] = np.minimum(floor, cap[low])
        fixed[high] = cap[high]
    target = np.where(fixed >= 0, fixed, target)
    alloc = np.floor(target).astype(np.int64)
    remainder = target - alloc
    for i in np.argsort(-remainder, kind="stable"):
        if alloc.sum() >= size:
            break
        if alloc[i] < cap[i]:
            alloc[i] += 1
    # Capacity leftovers (tiny strata) go to whichever strata still have room, largest first.
    for i in np.argsort(-(cap - alloc), kind="stable"):
        room = min(int(cap[i] - alloc[i]), size - int(alloc.sum()))
        if room <= 0:
            break
        alloc[i] += room
    return alloc


def _present(values: np.ndarray) -> np.ndarray:
    """The distinct values of an int64 array (a bincount when their range is small: much faster than a sort)."""
    if values.size == 0:
        return values
    lo, hi = int(values.min()), int(values.max())
    if 0 <= lo and hi < 65536:
        return np.flatnonzero(np.bincount(values))
    return np.unique(values)


# --- streaming sampler ------------------------------------------------------------------------------------

class BottomKSampler:
    """Keeps, per stratum, the ``capacity`` candidates with the smallest random keys seen so far.

    Each kept unit records its key, flat pixel index, map value and reference value. With ``by_stratum`` False
    all pixels form one stratum (simple random sampling).
    """

    def __init__(self, capacity: int, seed: int = 0, by_stratum: bool = True):
        self.capacity, self.by_stratum = int(capacity), by_stratum
        self.rng = np.random.default_rng(seed)
        self._kept: dict[int, np.ndarray] = {}  # stratum -> structured rows sorted by nothing in particular

    _dtype = np.dtype([("key", "f8"), ("pixel", "i8"), ("map", "i8"), ("ref", "i8")])

    def offer(self, pixel: np.ndarray, mapped: np.ndarray, reference: np.ndarray) -> None:
        """Offer candidates (equally long 1-D arrays); their keys are drawn here, in stream order."""
        keys = self.rng.random(pixel.size)
        strata = mapped if self.by_stratum else np.zeros_like(mapped)
        present = _present(strata)
        # Only keys below a stratum's current k-th smallest can enter it. Once every stratum present is full,
        # one comparison against the largest of those thresholds discards almost every pixel at once.
        limit = max(self._threshold(int(s)) for s in present) if present.size else 0.0
        if limit < 1.0:
            keep = np.flatnonzero(keys < limit)
            keys, strata, pixel, mapped, reference = (a[keep] for a in (keys, strata, pixel, mapped, reference))
        for s in present:
            idx = np.flatnonzero((strata == s) & (keys < self._threshold(int(s))))
            if idx.size == 0:
                continue
            new = np.empty(idx.size, self._dtype)
            new["key"], new["pixel"], new["map"], new["ref"] = keys[idx], pixel[idx], mapped[idx], reference[idx]
            kept = self._kept.get(int(s))
            merged = new if kept is None else np.concatenate([kept, new])
            if merged.size > self.capacity:
                merged = merged[np.argpartition(merged["key"], self.capacity - 1)[: self.capacity]]
            self._kept[int(s)] = merged

    def _threshold(self, stratum: int) -> float:
        """Keys must be below this to enter the stratum: its k-th smallest key when full, else 1 (all keys)."""
        kept = self._kept.get(stratum)
        return float(kept["key"].max()) if kept is not None and kept.size >= self.capacity else 1.0

    def draw(self, allocation: dict[int, int]) -> np.ndarray:
        """The sample: for each stratum, its ``allocation`` units with the smallest keys (structured array)."""
        parts = []
        for s, n in allocation.items():
            kept = self._kept.get(int(s))
            if kept is None or n <= 0:
                continue
            parts.append(np.sort(kept, order="key")[:n])
        return np.concatenate(parts) if parts else np.empty(0, self._dtype)
