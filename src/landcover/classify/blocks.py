"""Classifying one block: read its tiles, run the model, blend, write its piece and its seam contributions.

A block is self-contained, so it can run in this process or as a task on a Dask worker. It writes into the
run's work folder:

- ``b<i>_<j>.tif`` (and ``b<i>_<j>.prob.tif``): the classes (probabilities) of the block's interior piece;
- ``b<i>_<j>.seams/``: for every seam piece its tiles touch, each tile's weighted logits there (``.npz``);
- ``b<i>_<j>.done``: written last; a resumed run skips blocks that have it.

Reading (a thread that prefetches tiles), inference (this thread) and GeoTIFF writing (a writer thread)
overlap, so the model is rarely idle.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from ..raster import GDAL_ENV, Grid, GridReader
from ..sources import Imagery
from .blend import ClassDecoder, tile_weights
from .plan import TilePlan


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to classify any block of a run (picklable, hashable)."""

    imagery: Imagery
    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int
    model: str
    model_hash: str
    backend: str
    artifact: str | None
    tile: int
    padding: int
    block_size: int
    batch_size: int
    tta: bool
    predict_background: bool
    probabilities: bool
    work: str
    threads: int | None = None
    #: class pieces uncompressed (the disk has room): deflating and inflating them again costs ~0.5 s of CPU
    #: per 100 MP, which on a small machine is taken from the model
    raw_classes: bool = False
    #: (row, col, height, width of the whole grid) where the grid lies in the whole imagery's grid at the run's
    #: cell size, for a run over an extent: the run is tiled as the whole grid is (its pixels are the whole
    #: run's), and its tiles read the imagery beyond the extent as context
    window: tuple[int, int, int, int] | None = None

    @property
    def grid(self) -> Grid:
        return Grid(CRS.from_wkt(self.crs_wkt), Affine(*self.transform[:6]), self.width, self.height)

    @property
    def whole_grid(self) -> Grid:
        """The grid this run's grid is a window of (tiles are laid and read on it)."""
        if self.window is None:
            return self.grid
        row, col, height, width = self.window
        grid = self.grid
        return Grid(grid.crs, grid.transform * Affine.translation(-col, -row), width, height)

    @cached_property
    def plan(self) -> TilePlan:
        return TilePlan.build(self.height, self.width, self.tile, self.padding, self.block_size, self.window)


@dataclass
class Context:
    """Per-process state for a job: the package, decoder, engine and an open reader."""

    job: Job
    pkg: object
    decoder: ClassDecoder
    engine: object
    reader: GridReader


def normalize_tile(pkg, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The tile (bands, h, w) normalized as in training, float32; nodata pixels get the band mean, i.e. 0
    (they are written as nodata anyway)."""
    x = pkg.normalize(data)
    if not valid.all():
        x[:, ~valid] = 0.0
    return x


_CONTEXTS: dict[Job, Context] = {}
_LOCK = threading.Lock()


def context(job: Job, pkg=None) -> Context:
    """The (cached) per-process context of a job; builds the engine on first use (``pkg``: the package if
    the caller has it loaded already)."""
    with _LOCK:
        ctx = _CONTEXTS.get(job)
        if ctx is None:
            from ..package import load_package
            from .engine import TTAEngine, build_engine

            _keep_large_allocations()
            threads = job.threads or _worker_threads()
            if threads:
                import torch

                torch.set_num_threads(threads)
            pkg = pkg if pkg is not None else load_package(job.model)
            decoder = ClassDecoder.for_package(pkg, job.predict_background)
            engine = build_engine(job.backend, pkg, decoder, job.artifact, job.batch_size, threads)
            if job.tta:
                engine = TTAEngine(engine)
            ds = job.imagery.open()
            reader = GridReader(ds, job.grid, indexes=[b + 1 for b in pkg.extract_bands], within=job.whole_grid,
                                beyond=True)
            ctx = Context(job, pkg, decoder, engine, reader)
            _drop_contexts()  # one job at a time per process: free the previous engine and close its reader
            _CONTEXTS[job] = ctx
        return ctx


def forget_contexts() -> None:
    """Drop this process's cached job context and close its reader. A run that failed calls it: its open
    dataset may hold blocks decoded from a cut-off download (GDAL caches them per dataset), and a resumed run
    in the same process reused them — 2 to 9 % of a test raster's pixels came out different."""
    with _LOCK:
        _drop_contexts()


def _drop_contexts() -> None:
    """Close the cached contexts' readers and forget them (callers hold ``_LOCK``)."""
    for ctx in _CONTEXTS.values():
        ctx.reader.close()
    _CONTEXTS.clear()


def _keep_large_allocations() -> None:
    """Let glibc keep freed large blocks for reuse instead of unmapping them.

    Every tile allocates tens of MB (logits, activations); by default glibc maps and unmaps each such block,
    and the page faults of touching fresh pages cost ~10 % of the model time. The price is that the process
    keeps its peak heap after the run instead of returning it to the system.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not give the heap top back after each tile
    except (OSError, AttributeError):
        pass


def _worker_threads() -> int | None:
    """Threads of the Dask worker we run in (one per worker process by default), else None."""
    if "distributed" not in sys.modules:  # not in a Dask worker; importing distributed would cost ~0.3 s
        return None
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None


# --- file names in the work folder --------------------------------------------------------------------------

def block_name(block: tuple[int, int]) -> str:
    return f"b{block[0]}_{block[1]}"


def done_path(work: str | Path, block: tuple[int, int]) -> Path:
    return Path(work) / f"{block_name(block)}.done"


def profile_for(grid: Grid, rect: tuple[int, int, int, int], count: int, nodata, raw: bool = False) -> dict:
    """The GeoTIFF profile of a piece in the work folder: tiled, and light deflate unless ``raw``."""
    row, col, h, w = rect
    win = Window(col, row, w, h)
    # Intermediate files: light compression at most (they are read once, by the COG writer).
    packing = {"compress": "none"} if raw else {"compress": "deflate", "predictor": 1, "zlevel": 1}
    # One compression thread: the piece is written beside the model's threads, and GDAL's multi-threaded
    # compression of small multi-band strips sometimes prints "Bad value 5 for ExtraSamples" (a harmless but
    # alarming line on stderr).
    return grid.profile(transform=grid.window_transform(win), width=w, height=h, count=count, dtype="uint8",
                        nodata=nodata, blockxsize=512 if w > 512 else 256, blockysize=512 if h > 512 else 256,
                        tiled=w >= 256 and h >= 256, num_threads=1, **packing)


# --- the block task ------------------------------------------------------------------------------------------

def run_block(job: Job, block: tuple[int, int], pkg=None) -> dict:
    """Classify one block into the work folder (skipped if already done); returns its statistics."""
    done = done_path(job.work, block)
    if done.exists():
        return json.loads(done.read_text())
    with rasterio.Env(**GDAL_ENV):
        return _BlockRun(context(job, pkg), block).run()


class _BlockRun:
    def __init__(self, ctx: Context, block: tuple[int, int]):
        self.ctx, self.block = ctx, block
        self.job, self.plan = ctx.job, ctx.job.plan
        self.work = Path(self.job.work)
        self.name = block_name(block)
        self.interior = self.plan.interior_piece(block)
        self.nclasses = ctx.pkg.num_classes
        self.zones: dict[tuple[int, int], list] = {}
        rows, cols = self.plan.rows, self.plan.cols
        self.row_group = [_group_index(rows, s) for s in rows.segments]
        self.col_group = [_group_index(cols, s) for s in cols.segments]

    # -- orchestration --
    def run(self) -> dict:
        t0 = time.perf_counter()
        # Leftovers of an interrupted attempt at this block (it has no .done marker, so it runs again).
        for stale in [*self.work.glob(f"{self.name}.*partial*"), self.work / f"{self.name}.seams"]:
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        seams_tmp = self.work / f"{self.name}.seams.partial"
        seams_tmp.mkdir(parents=True)
        self.seams_tmp = seams_tmp
        tiles = self.plan.block_tiles(self.block)
        self.writer = _PieceWriter(self) if self.interior is not None else None
        self.has_data = False  # set by the reader thread, read once it has ended
        batch_size = _effective_batch(self.job.batch_size, self.ctx.engine, self.plan)
        tiles_q: queue.Queue = queue.Queue(maxsize=batch_size + 2)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(tiles, tiles_q, stop), daemon=True)
        reader.start()
        computed = 0
        try:
            batch: list = []
            while True:
                item = tiles_q.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None or item[2] is None or len(batch) >= batch_size:
                    computed += self._run_batch(batch)
                    batch = []
                if item is None:
                    break
                if item[2] is None:  # all nodata: nothing to compute, its pixels are all nodata
                    self._tile(item[0], item[1], None, None, item[3])
                else:
                    batch.append(item)
        finally:
            stop.set()
            while reader.is_alive():  # unblock the reader if it waits on a full queue
                try:
                    tiles_q.get_nowait()
                except queue.Empty:
                    reader.join(0.05)
            if self.writer is not None:
                self.writer.close()
        if self.zones:  # every zone of the interior piece must have been finalized
            raise RuntimeError(f"block {self.block}: {len(self.zones)} zones left unfinished")
        if self.writer is not None:
            self.writer.commit()
        os.replace(seams_tmp, self.work / f"{self.name}.seams")
        # "data": whether any imagery pixel of the map (not of the context read beyond an extent) is valid;
        # a map without one is warned about (see writer.warn_empty)
        stats = {"block": list(self.block), "tiles": len(tiles), "computed": computed, "data": self.has_data,
                 "pixels": self._share(), "seconds": time.perf_counter() - t0}
        tmp = self.work / f"{self.name}.done.partial"
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, done_path(self.work, self.block))
        return stats

    def _share(self) -> int:
        """Output pixels this block accounts for (segments counted for the block of their first tile)."""
        rows, cols = self.plan.rows, self.plan.cols
        h = sum(s.stop - s.start for s in rows.segments if rows.block_of(s.lo) == self.block[0])
        w = sum(s.stop - s.start for s in cols.segments if cols.block_of(s.lo) == self.block[1])
        return h * w

    def _read(self, tiles, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for r, c in tiles:
                if stop.is_set():
                    return
                row, col, h, w = self.plan.tile_window(r, c)
                data, valid = self.ctx.reader.read(Window(col, row, w, h))
                x = normalize_tile(self.ctx.pkg, data, valid) if valid.any() else None
                if x is not None and not self.has_data:
                    self.has_data = bool(_inside(valid, row, col, self.job.height, self.job.width).any())
                out.put((r, c, x, valid))
            out.put(None)
        except BaseException as exc:  # handed to the compute thread, which re-raises it
            out.put(exc)

    def _run_batch(self, batch: list) -> int:
        if not batch:
            return 0
        weights = [tile_weights(self.plan, r, c) for r, c, _, _ in batch]
        results = self.ctx.engine.run([b[2] for b in batch], weights)
        for (r, c, _, valid), w, (weighted, classes) in zip(batch, weights, results, strict=True):
            self._tile(r, c, weighted, classes, valid, w)
        return len(batch)

    # -- per tile --
    def _tile(self, r: int, c: int, weighted, classes, valid: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Route a tile's weighted logits: argmax where it alone covers the interior piece, accumulation where
        tiles of this block overlap, saved contributions where the pixels belong to a seam."""
        plan = self.plan
        rows, cols = plan.rows, plan.cols
        row0, col0 = rows.starts[r], cols.starts[c]
        if weights is None:
            weights = tile_weights(plan, r, c)
        seam_rects: dict[tuple[int, int], list[int]] = {}
        for i in rows.tile_segments(r):
            sr = rows.segments[i]
            ys = slice(sr.start - row0, sr.stop - row0)
            for j in cols.tile_segments(c):
                sc = cols.segments[j]
                xs = slice(sc.start - col0, sc.stop - col0)
                piece = (self.row_group[i], self.col_group[j])
                if piece != self.interior:
                    rect = seam_rects.setdefault(piece, [ys.start, ys.stop, xs.start, xs.stop])
                    rect[:] = [min(rect[0], ys.start), max(rect[1], ys.stop),
                               min(rect[2], xs.start), max(rect[3], xs.stop)]
                    continue
                count = (sr.hi - sr.lo + 1) * (sc.hi - sc.lo + 1)
                if count == 1:
                    self._direct(sr.start, sc.start, ys, xs, weighted, classes, valid)
                else:
                    self._blend((i, j), count, sr.start, sc.start, ys, xs, weighted, weights, valid)
        tile_id = plan.tile_id(r, c)
        for piece, (y0, y1, x0, x1) in seam_rects.items():
            ys, xs = slice(y0, y1), slice(x0, x1)
            arrays = {"valid": valid[ys, xs], "origin": np.array([row0 + y0, col0 + x0])}
            if weighted is not None:
                arrays.update(weighted=weighted[:, ys, xs], weight=weights[ys, xs])
            np.savez(self.seams_tmp / f"p{piece[0]}_{piece[1]}_t{tile_id}.npz", **arrays)

    def _direct(self, row, col, ys, xs, weighted, classes, valid) -> None:
        # Only this tile has weight here, and its weight is 1: the weighted logits are the logits.
        v = valid[ys, xs]
        if weighted is None:
            values, probs = np.zeros(v.shape, np.uint8), None
        else:
            values = classes[ys, xs] if classes is not None else self.ctx.decoder.classes(weighted[:, ys, xs])
            values = np.where(v, values, np.uint8(0))
            probs = self.ctx.decoder.probabilities(weighted[:, ys, xs]) if self.job.probabilities else None
        self.writer.put(row, col, values, probs, v)

    def _blend(self, key, count, row, col, ys, xs, weighted, weights, valid) -> None:
        zone = self.zones.get(key)
        if zone is None:
            h, w = ys.stop - ys.start, xs.stop - xs.start
            zone = self.zones[key] = [np.zeros((self.nclasses + 1, h, w), np.float32), count]
        acc = zone[0]
        if weighted is not None:
            acc[:-1] += weighted[:, ys, xs]
            if self.job.probabilities:
                acc[-1] += weights[ys, xs]
        zone[1] -= 1
        if zone[1] == 0:
            del self.zones[key]
            v = valid[ys, xs]
            values = np.where(v, self.ctx.decoder.classes(acc[:-1]), np.uint8(0))
            probs = self.ctx.decoder.probabilities(acc[:-1], acc[-1]) if self.job.probabilities else None
            self.writer.put(row, col, values, probs, v)


def _inside(valid: np.ndarray, row: int, col: int, height: int, width: int) -> np.ndarray:
    """The part of a tile's ``valid`` mask (tile at ``row, col``) that lies on the run's grid of ``height`` x
    ``width`` pixels (a tile may reach past it, reading context beyond an extent)."""
    r0, c0 = max(0, -row), max(0, -col)
    r1 = max(r0, min(valid.shape[0], height - row))
    c1 = max(c0, min(valid.shape[1], width - col))
    return valid[r0:r1, c0:c1]


def _effective_batch(batch_size: int, engine, plan: TilePlan) -> int:
    """Tiles per model call. A GPU takes the batch as asked. On a CPU a batch brings nothing once a tile is
    large (the cores are busy anyway) and multiplies the activation memory, which made big tiles ~25 %
    slower: batches are capped at batch_size x 256 x 256 pixels, and engines that run one tile at a time
    (compiled) start on each tile as soon as it is read."""
    if not getattr(engine, "batched", True):
        return 1
    if getattr(engine, "name", "") == "cuda":
        return batch_size
    return max(1, min(batch_size, batch_size * 65536 // (plan.rows.tile * plan.cols.tile)))


def _group_index(axis, seg) -> int:
    for g, grp in enumerate(axis.groups):
        if grp.start <= seg.start < grp.stop:
            return g
    raise IndexError(seg)


class _PieceWriter:
    """Writes the block's interior piece (classes, and probabilities) from a thread, then commits it."""

    def __init__(self, run: _BlockRun):
        job, plan = run.job, run.plan
        self.rect = plan.piece_rect(run.interior)
        grid = job.grid
        self.paths = {"classes": run.work / f"{run.name}.tif"}
        self.tmp = {"classes": run.work / f"{run.name}.partial.tif"}
        classes = profile_for(grid, self.rect, 1, 0, job.raw_classes)
        self.ds = {"classes": rasterio.open(self.tmp["classes"], "w", **classes)}
        if job.probabilities:
            self.paths["prob"] = run.work / f"{run.name}.prob.tif"
            self.tmp["prob"] = run.work / f"{run.name}.prob.partial.tif"
            count = run.nclasses - 1
            self.ds["prob"] = rasterio.open(self.tmp["prob"], "w", **profile_for(grid, self.rect, count, None))
        self.q: queue.Queue = queue.Queue(maxsize=64)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def put(self, row: int, col: int, values: np.ndarray, probs, valid: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((row - self.rect[0], col - self.rect[1], values, probs, valid))

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                row, col, values, probs, valid = item
                win = Window(col, row, values.shape[1], values.shape[0])
                self.ds["classes"].write(values, 1, window=win)
                if probs is not None:
                    self.ds["prob"].write(probs, window=win)
                    self.ds["prob"].write_mask(np.where(valid, np.uint8(255), np.uint8(0)), window=win)
            except BaseException as exc:  # re-raised in the compute thread
                self.error = exc

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        for ds in self.ds.values():
            ds.close()
        if self.error is not None:
            raise self.error

    def commit(self) -> None:
        for key, path in self.paths.items():
            os.replace(self.tmp[key], path)
