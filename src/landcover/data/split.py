"""Which exported chips validate: a split stratified by the classes in each chip, or — when training draws
windows from the chips' mosaic — a compact block that takes little of any class.

With window sampling (:mod:`.mosaic`) the footprint of every validation chip is withheld from training. Chips
overlap (the export's stride is often half the tile), so a tenth of the chips drawn at random withholds far more
than a tenth of the area: on a 130 x 260 Landsat scene cut into 64-pixel chips at stride 32, three random
validation chips withheld 36 % of the labelled pixels, and 158 of the 164 water pixels. :func:`compact_split`
grows the validation set as one block of neighbouring chips (their footprints overlap, so less is withheld, and
a spatial block validates more honestly than chips interleaved with training ones) and keeps each class's
withheld share at most ``MAX_WITHHELD``.
"""

from __future__ import annotations

import math

import numpy as np

from .mosaic import ChipLayout

#: the most of any class's labelled pixels that the validation block may take out of training (where possible)
MAX_WITHHELD = 0.25
#: chips away from the block tried at each step besides its neighbours (bounds the work on large sets)
SAMPLED_CANDIDATES = 32


def compact_split(layout: ChipLayout, labels: list[np.ndarray], n_valid: int, seed: int) -> set[int]:
    """Indices of ``n_valid`` validation chips forming a compact block on the chips' grid.

    ``labels``: each chip's class values (0 = unlabelled), in the order of ``layout.origins``. The first chip is
    drawn at random; each next one is, of the chips touching the block (and a few drawn at random), the one
    that keeps every class's withheld share within ``MAX_WITHHELD`` (or 1.5 times the share of all labelled pixels
    the block takes, when that is more; else exceeds it least), then withholds the
    fewest new training pixels per labelled pixel it validates (it overlaps the block most), then brings the most
    classes new to validation. Reproducible for a ``seed``.
    """
    rng = np.random.default_rng(seed)
    (h, w), n = layout.shape, len(labels)
    values = np.zeros((layout.height, layout.width), np.int64)
    for (r, c), lab in zip(layout.origins, labels, strict=True):
        values[r:r + h, c:c + w] = np.maximum(values[r:r + h, c:c + w], lab)
    size = int(values.max()) + 1
    totals = np.bincount(values.ravel(), minlength=size).astype(np.float64)
    totals[0] = 0.0
    withheld = np.zeros(size)
    covered = np.zeros(values.shape, bool)
    classes_in = np.zeros(size, bool)
    position = rng.permutation(n)
    chosen: list[int] = []

    def cost(i: int) -> tuple:
        r, c = layout.origins[i]
        new = ~covered[r:r + h, c:c + w]
        counts = np.bincount(values[r:r + h, c:c + w][new], minlength=size)
        counts[0] = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(totals > 0, (withheld + counts) / totals, 0.0)
        # a class may lose MAX_WITHHELD of its pixels, or half as much again as the share of all labelled pixels
        # the block takes when that is more (a tiny scene): the limit is on a class losing more than the others
        limit = max(MAX_WITHHELD, 1.5 * (withheld.sum() + counts.sum()) / totals.sum())
        excess = float(np.max(share - limit, initial=0.0))
        labelled = int((values[r:r + h, c:c + w] > 0).sum())
        # training pixels lost per validation pixel gained: 1 for a chip on its own, less for one that overlaps
        # the block (a chip with no labels validates nothing)
        lost = round(counts.sum() / labelled, 2) if labelled else math.inf
        new_classes = int(((counts > 0) & ~classes_in).sum())
        return excess > 0, excess, lost, -new_classes, position[i]

    for _ in range(min(n_valid, n)):
        rest = [i for i in range(n) if i not in chosen]
        near = [i for i in rest if _touches(layout, i, chosen)]
        far = [i for i in rest if i not in near]
        sample = [far[j] for j in rng.permutation(len(far))[:SAMPLED_CANDIDATES]]
        best = min(near + sample, key=cost)
        r, c = layout.origins[best]
        block = values[r:r + h, c:c + w][~covered[r:r + h, c:c + w]]
        withheld += np.bincount(block, minlength=size)
        withheld[0] = 0
        covered[r:r + h, c:c + w] = True
        classes_in[np.unique(values[r:r + h, c:c + w])] = True
        chosen.append(best)
    return set(chosen)


def _touches(layout: ChipLayout, i: int, chosen: list[int]) -> bool:
    """Whether chip ``i`` overlaps or borders one of ``chosen`` on the grid."""
    (h, w), (r, c) = layout.shape, layout.origins[i]
    return any(abs(r - rr) <= h and abs(c - cc) <= w for rr, cc in (layout.origins[j] for j in chosen))


def stratified_split(label_sets: list[frozenset[int]], n_valid: int, seed: int) -> set[int]:
    """Indices of the validation chips of a split stratified by the set of class values in each chip.

    Each set of classes (stratum) gives validation its share of ``n_valid`` (largest remainders, ties broken
    at random). Then, rarest class first, a class found in at least 2 chips that is missing from validation
    or from training, or found in a single chip that landed in validation, gets one of its chips moved across,
    swapped for a chip of the most common stratum whose classes stay represented — where such chips exist.
    Chips are drawn at random within a stratum; all draws come from ``seed``.
    """
    rng = np.random.default_rng(seed)
    n = len(label_sets)
    strata: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(label_sets):
        strata.setdefault(tuple(sorted(s)), []).append(i)
    keys = sorted(strata)
    for k in keys:
        strata[k] = [strata[k][j] for j in rng.permutation(len(strata[k]))]
    quota = {k: len(strata[k]) * n_valid / n for k in keys}
    take = {k: math.floor(quota[k]) for k in keys}
    ties = rng.random(len(keys))
    by_remainder = sorted(range(len(keys)), key=lambda j: (-(quota[keys[j]] - take[keys[j]]), ties[j]))
    for j in by_remainder[: n_valid - sum(take.values())]:
        take[keys[j]] += 1
    valid = {i for k in keys for i in strata[k][: take[k]]}

    # Chips in a random order; for swaps back, chips of the most common strata first.
    position = {i: p for p, i in enumerate(rng.permutation(n).tolist())}
    size = {i: len(strata[k]) for k in keys for i in strata[k]}
    random_order = sorted(range(n), key=position.__getitem__)
    common_first = sorted(range(n), key=lambda i: (-size[i], position[i]))
    chips_with: dict[int, list[int]] = {}
    for i in random_order:
        for c in label_sets[i]:
            chips_with.setdefault(c, []).append(i)

    def keeps(i: int, side: bool) -> bool:
        """Whether taking chip i off ``side`` (True = validation) leaves each of its classes there (in
        validation: the classes of 2+ chips; in training: all)."""
        return all((side and len(chips_with[c]) < 2) or any(j != i and (j in valid) == side for j in chips_with[c])
                   for c in label_sets[i])

    for c in sorted(chips_with, key=lambda c: (len(chips_with[c]), c)):
        chips = chips_with[c]
        for side in (True, False) if len(chips) >= 2 else (False,):
            if any((i in valid) == side for i in chips):
                continue
            mover = next((i for i in chips if keeps(i, not side)), None)
            if mover is None:
                continue
            valid.symmetric_difference_update({mover})
            back = next((j for j in common_first if j != mover and (j in valid) == side and keeps(j, side)), None)
            if back is not None:
                valid.symmetric_difference_update({back})
    # A swap without a partner changes the size: restore it (chips of common strata first, and chips whose
    # classes stay represented before any others), so validation is never emptied nor training.
    while len(valid) < n_valid:
        valid.add(next((i for i in common_first if i not in valid and keeps(i, False)),
                       next(i for i in common_first if i not in valid)))
    while len(valid) > n_valid:
        valid.discard(next((i for i in common_first if i in valid and keeps(i, True)),
                           next(i for i in common_first if i in valid)))
    return valid

