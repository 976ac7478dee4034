"""Where the tiles and blocks of a classification lie.

Tiles sit on one grid for the whole raster: along each axis as few tiles as cover it with overlaps of at least
``2 * padding`` pixels, spread evenly from the first pixel to the last (no tile reads past the raster, so no
made-up border pixels enter the model). Which tiles cover a pixel therefore depends on the raster size and the
tiling only, never on how the raster is cut into blocks. A run over a window of the raster (an extent on its
pixels) lays the tiles of the whole raster and keeps those with weight in the window: its pixels are the whole
run's, and its tiles at the window's edges read the raster beyond them as context.

Blocks are groups of whole tiles (``block_tiles`` tile rows by ``block_tiles`` tile columns). The pixels where
tiles of two blocks overlap are *seams*: each block writes its tiles' weighted logits there, and the assembly
step sums them. Along an axis, the pixels fall into *segments* (runs covered by the same set of tiles), and
segments into *groups* (runs whose covering tiles belong to the same set of blocks). A *piece* is a row group
by a column group: either the interior of one block or a seam shared by two or four blocks. The pieces
partition the raster, and the final raster is assembled from one file per piece.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Pixels ``[start, stop)`` of an axis, covered by tiles ``lo..hi`` (inclusive)."""

    start: int
    stop: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Group:
    """Pixels ``[start, stop)`` of an axis whose covering tiles belong to blocks ``blo..bhi``."""

    start: int
    stop: int
    blo: int
    bhi: int


def default_tiling(model_tile: int, tile: int | None = None, padding: int | None = None) -> tuple[int, int]:
    """(tile, padding) where the user gave ``tile`` and ``padding`` or left them None, as arcgis.learn: the tile
    defaults to the model's (``ImageHeight``), the padding to a quarter of the model's tile (``ImageHeight // 4``)
    whatever tile is asked for, or a quarter of the tile when that is smaller. A model trained on small chips
    then runs on larger tiles with the context it had: a 64-px model on 256-px tiles computes 1.3 pixels per
    pixel kept instead of 4 (at a quarter of 256 it would stay 4)."""
    tile = int(model_tile) if tile is None else int(tile)
    return tile, min(int(model_tile), tile) // 4 if padding is None else int(padding)


def fit_tile(size: int, tile: int, padding: int) -> int:
    """The tile length that covers ``size`` pixels with as few tiles as ``tile`` allows (overlaps of at least
    ``2 * padding``), shrunk to the smallest multiple of 32 that still does: no tile computes more than
    needed and none is larger than asked for."""
    if size <= tile:
        return size
    count = math.ceil((size - 2 * padding) / (tile - 2 * padding))
    fitted = 2 * padding + math.ceil((size - 2 * padding) / count)
    return min(tile, fitted + (-fitted) % 32)


@dataclass(frozen=True)
class AxisPlan:
    """Tiles and blocks along one axis of the raster, or of a window of it.

    ``count`` tiles of ``tile`` pixels are spread evenly from the raster's first pixel to its last, neighbours
    overlapping by at least ``2 * padding`` pixels; no tile reads past the raster. Across each overlap a
    raised-cosine ramp of ``ramp`` pixels (``padding`` for even paddings) hands over from one tile to the
    next; the two ramps add up to 1. The pixels of the overlap on the far side of the ramp get weight 0 (the
    predictions with the least context are not used), those on the near side weight 1. At the raster's own
    edges there is no ramp: the outermost pixels get full weight (no rim).

    The axis is pixels ``[offset, offset + size)`` of a raster ``full`` pixels long (the whole raster unless
    built with a window): its tiles are those of the whole raster with weight there, numbered from 0 in the
    same order, and every position (``starts``, ``extent``, ``segments``) counts from ``offset``.
    """

    size: int
    tile: int
    padding: int
    block_tiles: int
    offset: int
    full: int

    @classmethod
    def build(cls, size: int, tile: int, padding: int, block_tiles: int, offset: int = 0,
              full: int | None = None) -> AxisPlan:
        full = size if full is None else full
        if not (0 <= offset and offset + size <= full):
            raise ValueError(f"pixels {offset}..{offset + size} are not within an axis of {full}")
        return cls(size, min(tile, full), padding, max(1, block_tiles), offset, full)

    @property
    def ramp(self) -> int:
        return 2 * self.padding - 2 * (self.padding // 2)

    @cached_property
    def _raster_starts(self) -> tuple[int, ...]:
        """Where the whole raster's tiles start."""
        if self.full <= self.tile:
            return (0,)
        count = math.ceil((self.full - 2 * self.padding) / max(1, self.tile - 2 * self.padding))
        count = max(count, 2)
        return tuple(round(k * (self.full - self.tile) / (count - 1)) for k in range(count))

    def _raster_edges(self, k: int) -> tuple[int, int]:
        """The whole raster's tile ``k``: its dead pixels at its start and its end (0 at the raster's edges)."""
        starts, head, tail = self._raster_starts, 0, 0
        if k > 0:
            overlap = starts[k - 1] + self.tile - starts[k]
            head = (overlap - min(self.ramp, overlap)) // 2
        if k < len(starts) - 1:
            overlap = starts[k] + self.tile - starts[k + 1]
            tail = overlap - (overlap - min(self.ramp, overlap)) // 2 - min(self.ramp, overlap)
        return head, tail

    @cached_property
    def _first(self) -> int:
        """The whole raster's index of this axis's tile 0: the first with weight at or past ``offset``."""
        starts = self._raster_starts
        return next(k for k in range(len(starts)) if starts[k] + self.tile - self._raster_edges(k)[1] > self.offset)

    @cached_property
    def starts(self) -> tuple[int, ...]:
        stop = self.offset + self.size
        kept = []
        for k in range(self._first, len(self._raster_starts)):
            if self._raster_starts[k] + self._raster_edges(k)[0] >= stop:
                break
            kept.append(self._raster_starts[k] - self.offset)
        return tuple(kept)

    @property
    def count(self) -> int:
        return len(self.starts)

    def extent(self, k: int) -> tuple[int, int]:
        """Pixels ``[start, stop)`` where tile ``k`` has weight > 0 (beyond the axis for a window's edge tiles)."""
        head, tail = self._raster_edges(self._first + k)
        return self.starts[k] + head, self.starts[k] + self.tile - tail

    @lru_cache(maxsize=1024)  # noqa: B019 - plans are few and immutable
    def window(self, k: int) -> np.ndarray:
        """The 1-D blending weights of tile ``k`` over its full length (0 in the dead bands)."""
        k += self._first
        starts = self._raster_starts
        w = np.ones(self.tile, dtype=np.float64)
        head, tail = self._raster_edges(k)
        if k > 0:
            r = min(self.ramp, starts[k - 1] + self.tile - starts[k])
            w[:head] = 0
            w[head: head + r] = _ramp(r)
        if k < len(starts) - 1:
            r = min(self.ramp, starts[k] + self.tile - starts[k + 1])
            w[self.tile - tail:] = 0
            w[self.tile - tail - r: self.tile - tail] *= _ramp(r)[::-1]
        return w.astype(np.float32)

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        extents = [tuple(min(max(e, 0), self.size) for e in self.extent(k)) for k in range(self.count)]
        edges = sorted({0, self.size, *(e for ext in extents for e in ext)})
        segs = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            cover = [k for k, (s, e) in enumerate(extents) if s <= a and b <= e]
            segs.append(Segment(a, b, cover[0], cover[-1]))
        return tuple(segs)

    @cached_property
    def block_cuts(self) -> tuple[int, ...]:
        """Tile indices where blocks start, plus the tile count at the end: as few blocks as hold at most
        ``block_tiles`` tiles each, of (nearly) equal size so that workers finish together."""
        n = math.ceil(self.count / self.block_tiles)
        return tuple(round(i * self.count / n) for i in range(n + 1))

    @property
    def block_count(self) -> int:
        return len(self.block_cuts) - 1

    def block_of(self, k: int) -> int:
        return bisect.bisect_right(self.block_cuts, k) - 1

    def block_tiles_range(self, b: int) -> range:
        return range(self.block_cuts[b], self.block_cuts[b + 1])

    @cached_property
    def groups(self) -> tuple[Group, ...]:
        groups: list[Group] = []
        for seg in self.segments:
            blo, bhi = self.block_of(seg.lo), self.block_of(seg.hi)
            if groups and (groups[-1].blo, groups[-1].bhi) == (blo, bhi):
                groups[-1] = Group(groups[-1].start, seg.stop, blo, bhi)
            else:
                groups.append(Group(seg.start, seg.stop, blo, bhi))
        return tuple(groups)

    def tile_segments(self, k: int) -> list[int]:
        """Indices of the segments where tile ``k`` has weight."""
        return [i for i, seg in enumerate(self.segments) if seg.lo <= k <= seg.hi]

    def cost(self) -> float:
        """Pixels computed per output pixel along this axis."""
        return self.count * self.tile / self.size

    def reblocked(self, block_tiles: int) -> AxisPlan:
        return dataclasses.replace(self, block_tiles=max(1, block_tiles))


@dataclass(frozen=True)
class TilePlan:
    """The 2-D plan: rows and columns of tiles, blocks of tiles, and pieces."""

    rows: AxisPlan
    cols: AxisPlan

    @classmethod
    def build(cls, height: int, width: int, tile: int, padding: int, block_size: int,
              window: tuple[int, int, int, int] | None = None) -> TilePlan:
        """The plan of a ``height`` x ``width`` raster, or with ``window`` (row, col, raster height, raster
        width) of that window of a larger raster, tiled as the whole raster is."""
        row, col, full_h, full_w = window or (0, 0, height, width)
        # One square tile size for both axes (shrunk to fit the larger need), so that test-time rotations
        # keep the tile shape.
        larger = [fit_tile(n, tile, padding) for n in (full_h, full_w) if n > tile]
        tile = max(larger) if larger else tile
        return cls(AxisPlan.build(height, tile, padding, 1, row, full_h),
                   AxisPlan.build(width, tile, padding, 1, col, full_w)).reblocked(block_size)

    def reblocked(self, block_size: int) -> TilePlan:
        """The same tiles in blocks of about ``block_size`` pixels (whole tiles)."""
        tile = max(self.rows.tile, self.cols.tile)
        block_tiles = max(1, math.ceil(block_size / max(1, tile - 2 * self.rows.padding)))
        return TilePlan(self.rows.reblocked(block_tiles), self.cols.reblocked(block_tiles))

    @property
    def blocks(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.rows.block_count) for j in range(self.cols.block_count)]

    @property
    def tile_count(self) -> int:
        return self.rows.count * self.cols.count

    def tile_id(self, r: int, c: int) -> int:
        """The tile's rank in the canonical (row-major) order in which overlapping logits are summed."""
        return r * self.cols.count + c

    def tile_window(self, r: int, c: int) -> tuple[int, int, int, int]:
        """(row, col, height, width) of tile (r, c) on the grid."""
        return self.rows.starts[r], self.cols.starts[c], self.rows.tile, self.cols.tile

    def block_tiles(self, block: tuple[int, int]) -> list[tuple[int, int]]:
        i, j = block
        return [(r, c) for r in self.rows.block_tiles_range(i) for c in self.cols.block_tiles_range(j)]

    def pieces(self) -> list[tuple[int, int]]:
        return [(a, b) for a in range(len(self.rows.groups)) for b in range(len(self.cols.groups))]

    def piece_rect(self, piece: tuple[int, int]) -> tuple[int, int, int, int]:
        """(row, col, height, width) of a piece."""
        rg, cg = self.rows.groups[piece[0]], self.cols.groups[piece[1]]
        return rg.start, cg.start, rg.stop - rg.start, cg.stop - cg.start

    def piece_blocks(self, piece: tuple[int, int]) -> list[tuple[int, int]]:
        rg, cg = self.rows.groups[piece[0]], self.cols.groups[piece[1]]
        return [(i, j) for i in range(rg.blo, rg.bhi + 1) for j in range(cg.blo, cg.bhi + 1)]

    def is_interior(self, piece: tuple[int, int]) -> bool:
        return len(self.piece_blocks(piece)) == 1

    def interior_piece(self, block: tuple[int, int]) -> tuple[int, int] | None:
        """The piece only this block covers (None if its tiles are all shared, e.g. blocks of one tile)."""
        rs = [a for a, g in enumerate(self.rows.groups) if g.blo == g.bhi == block[0]]
        cs = [b for b, g in enumerate(self.cols.groups) if g.blo == g.bhi == block[1]]
        return (rs[0], cs[0]) if rs and cs else None

    def cost(self) -> float:
        """Pixels the model computes per output pixel (1.0 = no overlap)."""
        return self.rows.cost() * self.cols.cost()


@lru_cache(maxsize=64)
def _ramp(n: int) -> np.ndarray:
    """A raised-cosine ramp of n values in (0, 1) with ramp[i] + ramp[n - 1 - i] == 1."""
    return 0.5 * (1.0 - np.cos(np.pi * (np.arange(n) + 0.5) / max(n, 1)))
