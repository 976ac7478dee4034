"""Whole-raster classification with a model package: :func:`classify_pixels` (``landcover classify``).

The raster is tiled on one grid (:mod:`.plan`), tiles are grouped into blocks that run in this process or on a
Dask cluster (:mod:`.blocks`, :mod:`.cluster`), overlapping logits are blended with border-aware windows
(:mod:`.blend`), the model runs on the fastest backend that agrees with fp32 (:mod:`.engine`), and the result
is assembled into a cloud-optimized GeoTIFF with its class table (:mod:`.writer`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ..arcgis_keywords import (
    check_seed_only,
    flag,
    grid_context,
    merge,
    read_context,
    records_given_arguments,
    whole,
)
from ..errors import LandcoverError, NetworkError, arg, warn
from ..raster import (
    GDAL_ENV,
    Grid,
    alpha_read_as_data,
    check_output,
    check_writable_dir,
    grid_window,
    pixel_errors,
    require_crs,
    target_grid,
    whole_grid,
)
from ..sources import Imagery, looks_like_stac_item, resolve
from ..threads import ThreadPlan, split_threads
from .blend import ClassDecoder
from .blocks import Job, done_path, forget_contexts, run_block
from .choose import choose_engine
from .engine import BACKENDS, CPU_BACKENDS, cuda_available, weights_hash
from .plan import TilePlan, default_tiling
from .writer import clear_leftovers, finish, has_room, open_work, read_manifest, work_dir

__all__ = ["classify_pixels"]

#: block edge in pixels when not given
DEFAULT_BLOCK = 4096
#: imagery cell sizes this many times finer or coarser than the model's training cell size are warned about
CELL_SIZE_RATIO = 1.5


class ImageryWarning(UserWarning):
    """Something about the imagery the user should know, which does not stop the run (``landcover classify``
    prints it)."""


class CellSizeWarning(UserWarning):
    """The imagery's cell size is far from the one the model was trained at (``landcover classify`` prints it)."""


@records_given_arguments
def classify_pixels(
    input_raster: str | os.PathLike | Sequence[str | os.PathLike],
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    padding: int | None = None,
    batch_size: int = 8,
    predict_background: bool = True,
    test_time_augmentation: bool = False,
    tile_size: int | None = None,
    extent: Sequence[float] | None = None,
    extent_crs: str | None = None,
    cell_size: float | Sequence[float] | None = None,
    probabilities: str | os.PathLike | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    *,
    backend: str = "auto",
    block_size: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    bands: Sequence[str] | None = None,
    model_arguments: dict | None = None,
    output_name: str | os.PathLike | None = None,
    context: dict | None = None,
    **seed_options,
) -> Path:
    """Classify a raster of any size with a model package; returns the output path.

    ``input_raster`` is imagery in any form :mod:`landcover.sources` reads: one raster (a path or a URL), band
    files stacked in order, :func:`landcover.mosaic` of scene tiles, or a STAC Item (``bands`` picks its bands by
    asset key or common name; default the bands the model was trained on, by name). ``model`` is a ``.emd``,
    ``.dlpk`` or package folder. The output is a one-band uint8 COG of class values (0 = nodata), in the
    input's CRS, with overviews, colour table, class names (``.aux.xml`` attribute table) and a QGIS ``.qml``.

    ``tile_size`` (default: the package's) is the model input; ``padding`` (default a quarter of the package's
    tile, as arcgis.learn, or of ``tile_size`` when smaller) the context on each side, so tiles start every
    ``tile_size - 2 * padding`` pixels and their logits are blended across the overlap.
    ``test_time_augmentation`` averages the 8 flips/rotations; ``predict_background=False`` never predicts the
    background class (index 0, value 0 = nodata); as in arcgis.learn it is also off when the model has more than
    one class and none of value 0, since training never learns that class. ``extent`` (xmin, ymin, xmax, ymax in
    ``extent_crs``, default the raster's CRS) and ``cell_size`` resample the input on the fly (bilinear).
    An extent is snapped outward to whole cells of the raster (resampled to ``cell_size`` from its upper-left
    corner) and tiled as the whole raster is, with context read beyond its edges: its map is the whole raster's
    map there, pixel for pixel, so the maps of adjacent extents join without a seam.
    Without ``cell_size``, imagery whose cell size is 1.5 times finer or coarser than the model's training cell
    size gets a :class:`CellSizeWarning` naming the cell size to give.
    ``probabilities`` writes a second COG with one uint8 band per class (p * 255).

    The raster is processed in blocks of about ``block_size`` pixels (default 4096, smaller when that gives
    a cluster fewer than two blocks per worker thread): in this process, on a local Dask cluster of ``workers``
    single-threaded processes, or on the Dask ``scheduler`` at that address. Blocks
    are kept in ``<output>.blocks/`` until the end; ``resume=True`` continues an interrupted run with
    identical results. ``backend`` is ``auto`` (fastest that agrees with fp32 on >= 99.5 % of pixels) or one
    of ``fp32``, ``bf16``, ``bf16-compiled``, ``onnx``, ``int8``, ``openvino``, ``openvino-int8``, ``cuda``; ``cpu``
    is ``auto`` without the GPU. ``threads`` caps the compute threads of the whole run (default
    ``$LANDCOVER_THREADS``, else the cores available): ``workers`` local processes (at most one per thread) share
    them, and the run's final line says how.

    arcgis.learn's spellings are accepted as well, so its notebooks run unchanged: ``model_arguments`` (strings,
    e.g. ``{"padding": "64", "batch_size": "4", "predict_background": "True", "test_time_augmentation": "False",
    "tile_size": "256"}``), ``output_name`` (``.tif`` added when it has no extension) and ``context={"cellSize":
    …, "extent": …, "processorType": "CPU" | "GPU"}`` with the extent as an Esri envelope (``{"xmin": …,
    "spatialReference": {"wkid": 3857}}``); ``model`` may be arcgis's model JSON ``{"uri": path}``. ``gis`` must
    be None: the classification runs here; ``process_all_raster_items``, ``future`` and ``tiles_only`` are
    accepted at their defaults.
    """
    t_start = time.perf_counter()
    a = _arcgis_arguments(locals())
    output = Path(a["output"])
    prob_path = Path(probabilities) if probabilities is not None else None
    _check_outputs(output, prob_path, input_raster, overwrite)
    _check_arguments(a, scheduler, workers, block_size)
    # The compute threads of this run's own processes (a remote cluster's workers use their own threads).
    split = None if scheduler else split_threads(int(workers or 1), threads)
    if split is not None and workers:
        workers = split.processes

    from ..package import load_package

    pkg = load_package(a["model"])
    decoder = ClassDecoder.for_package(pkg, a["predict_background"])
    # Plan the tiles on the output grid and choose the engine, with the imagery open once.
    run = _plan(a, input_raster, bands, pkg, decoder, block_size, resume, split, prob_path,
                _say if progress else (lambda _m: None))
    with _executor(scheduler, workers) as client:  # connect first: a dead scheduler leaves nothing behind
        job = _open_job(run, client, block_size, resume, overwrite)
        t_blocks = time.perf_counter()
        _run_blocks(job, run.plan, client, progress, pkg)
    t_assembly = time.perf_counter()
    finish(job, run.plan, decoder, list(pkg.classes), output, prob_path)
    if progress:
        _say(_summary(run, t_start, t_blocks, t_assembly, output))
    return output


@dataclass
class _Run:
    """One classification as its setup decided it: the call's settings that shape the output, the imagery, its
    grid and tiling, the work folder and the engine chosen."""

    model: str | os.PathLike
    batch_size: int
    tta: bool
    #: what the run does (an arcgis.learn package without class 0 never predicts it), kept in its manifest
    predict_background: bool
    prob_path: Path | None
    split: ThreadPlan | None
    source: Imagery
    grid: Grid
    #: (row, col, height, width) of the whole raster's grid when the output grid is a window of it
    window: tuple[int, int, int, int] | None
    plan: TilePlan
    tile: int
    pad: int
    model_hash: str
    work: Path
    #: the manifest of the unfinished run being resumed
    previous: dict | None
    choice: dict


def _check_outputs(output: Path, prob_path: Path | None, input_raster, overwrite: bool) -> None:
    """The outputs are GeoTIFFs in writable folders, not the inputs, and replaced only with ``overwrite``."""
    paths = [str(p) for p in (input_raster if isinstance(input_raster, (list, tuple)) else [input_raster])
             if isinstance(p, (str, os.PathLike))]
    clear_leftovers(output, prob_path)  # what a killed run left: its temporary COG, a finished run's work folder
    for path, what in ((output, "output"), (prob_path, "probabilities output")):
        if path is None:
            continue
        check_output(path, (".tif", ".tiff"), what, paths)
        if path.exists() and not overwrite:
            raise LandcoverError(f"{path}: {what} exists; add {arg('overwrite', True)} to replace it")
        check_writable_dir(path.parent)
    if prob_path is not None and prob_path.resolve() == output.resolve():
        raise LandcoverError(f"{prob_path}: the probabilities output must differ from the classes output")


def _check_arguments(a: dict, scheduler: str | None, workers: int | None, block_size: int | None) -> None:
    """Arguments that need neither the model nor the imagery."""
    if a["backend"] not in BACKENDS:
        raise LandcoverError(f"{arg('backend', a['backend'])}: unknown backend (choose from {', '.join(BACKENDS)})")
    if scheduler and workers:
        raise LandcoverError(f"give either {arg('scheduler')} or {arg('workers')}, not both")
    if workers is not None and int(workers) < 1:
        raise LandcoverError(f"{arg('workers', workers)}: must be at least 1")
    if int(a["batch_size"]) < 1:
        raise LandcoverError(f"{arg('batch_size', a['batch_size'])}: must be at least 1")
    if block_size is not None and block_size < 1:
        raise LandcoverError(f"{arg('block_size', block_size)}: must be at least 1")


def _tiling(pkg, tile_size, padding) -> tuple[int, int]:
    """The model input's edge and the context on each side, checked (defaults: :func:`.plan.default_tiling`)."""
    tile, pad = default_tiling(pkg.tile_size, None if tile_size is None else whole(tile_size, "tile_size"),
                               None if padding is None else whole(padding, "padding"))
    if tile < 16:
        raise LandcoverError(f"{arg('tile_size', tile)}: must be at least 16 pixels")
    if pad < 0 or 2 * pad >= tile:
        raise LandcoverError(f"{arg('padding', pad)}: must be >= 0 and less than half the tile size ({tile})")
    return tile, pad


def _plan(a: dict, input_raster, bands, pkg, decoder: ClassDecoder, block_size: int | None, resume: bool,
          split: ThreadPlan | None, prob_path: Path | None, say) -> _Run:
    """Open the imagery, check it against the model, lay out the tiles on the output grid (the extent and cell
    size asked, snapped to the raster's cells) and choose the engine (cached per model, CPU and tiling)."""
    with rasterio.Env(**GDAL_ENV):
        # Physical values (GDAL scale/offset applied, float) unless the model was trained on integer counts: a
        # package records its pixel type, and one trained on raw counts keeps reading them.
        raw = bool(pkg.input_dtype) and np.dtype(pkg.input_dtype).kind in "iu"
        source = resolve(input_raster, "input_raster", bands or _trained_bands(input_raster, pkg), raw=raw)
    with rasterio.Env(**GDAL_ENV), source.open() as ds:
        check_imagery(ds, pkg, source.name)
        grid = target_grid(Grid.of(ds), a["extent"], a["extent_crs"], a["cell_size"], name=source.name)
        if a["cell_size"] is None:
            _check_cell_size(grid, pkg, source.name)
        tile, pad = _tiling(pkg, a["tile_size"], a["padding"])
        whole_raster = whole_grid(Grid.of(ds), a["cell_size"])
        window = grid_window(whole_raster, grid)
        plan = TilePlan.build(grid.height, grid.width, tile, pad, int(block_size or DEFAULT_BLOCK), window)
        model_hash = weights_hash(pkg)
        work = work_dir(Path(a["output"]))
        previous = read_manifest(work) if resume else None
        choice = choose_engine(a["backend"], previous, pkg, decoder, ds, (grid, whole_raster), plan, tile, model_hash,
                               a["test_time_augmentation"], split.threads if split else None, say)
    return _Run(a["model"], int(a["batch_size"]), bool(a["test_time_augmentation"]), decoder.predicts_background,
                prob_path, split, source, grid, window, plan, tile, pad, model_hash, work, previous, choice)


def _open_job(run: _Run, client, block_size: int | None, resume: bool, overwrite: bool) -> Job:
    """Fix the block size (not given: a resumed run's, else from the cluster's threads), open the work folder
    with the run's manifest and describe the job its blocks run."""
    if block_size is None:
        block_size = (run.previous or {}).get("block_size") or _block_size_for(run.plan, client)
        run.plan = run.plan.reblocked(block_size)
    grid = run.grid
    manifest = {
        "format": 2, "model_hash": run.model_hash, "imagery": _absolute(run.source).describe(),
        "imagery_bytes": [os.path.getsize(p) if os.path.exists(p) else None for p in run.source.paths],
        "grid": {"crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6], "width": grid.width,
                 "height": grid.height},
        "window": list(run.window) if run.window else None, "tile": run.tile, "padding": run.pad,
        "block_size": int(block_size), "tta": run.tta, "predict_background": run.predict_background,
        "probabilities": run.prob_path is not None, "backend": run.choice["backend"],
        "engine": run.choice.get("engine"),
    }
    open_work(run.work, manifest, resume, overwrite)
    return _start(run, block_size)


def _summary(run: _Run, t_start: float, t_blocks: float, t_assembly: float, output: Path) -> str:
    """The run's final line: size, speed, backend, threads, tiling and where the time went."""
    t_end = time.perf_counter()
    seconds, mp = t_end - t_start, run.grid.width * run.grid.height / 1e6
    threads_text = run.split.describe() if run.split else "the cluster's threads"
    return (f"classified {run.grid.width} x {run.grid.height} px ({mp:.1f} MP) in {seconds:.1f} s: "
            f"{mp / seconds:.2f} MP/s ({run.choice['backend']}, {threads_text}, {run.plan.tile_count} tiles of "
            f"{run.plan.rows.tile} px, padding {run.pad}; setup {t_blocks - t_start:.1f} s, blocks "
            f"{t_assembly - t_blocks:.1f} s, assembly {t_end - t_assembly:.1f} s) -> {output}")


#: model_arguments of arcgis.learn's pixel classifiers that landcover honours, and how their strings are read
MODEL_ARGUMENTS = {"padding": whole, "batch_size": whole, "predict_background": flag,
                   "test_time_augmentation": flag, "tile_size": whole}


def _arcgis_arguments(given: dict) -> dict:
    """classify_pixels' arguments from ``given`` (the call's arguments), arcgis.learn's forms merged in."""
    check_seed_only(given["seed_options"], "classify_pixels",
                    ("gis", "process_all_raster_items", "future", "tiles_only"))
    if isinstance(given["output"], dict):
        raise LandcoverError("output: got a dict; give arcgis.learn's model arguments by name, "
                             "classify_pixels(raster, model, output, model_arguments={...})")
    a = dict(given)
    if isinstance(given["model"], dict):  # arcgis's Model JSON: {"uri": ...} or {"url": ...} of a local file
        where = next((given["model"][k] for k in ("uri", "url", "path") if k in given["model"]), None)
        if not isinstance(where, (str, os.PathLike)) or str(where).startswith(("http:", "https:")):
            raise LandcoverError(f"model={given['model']!r}: give the path of a .emd, a .dlpk or a package folder "
                                 "on this machine")
        a["model"] = where
    name = given["output_name"]
    if name is not None and Path(name).suffix.lower() not in (".tif", ".tiff"):
        name = f"{name}.tif"  # arcgis's output_name is a layer name: "kent.2019" is a name, not an extension
    a["output"] = merge("output", given["output"], name, "output_name")
    if a["output"] is None:
        raise LandcoverError("classify_pixels: give the output file (output='classified.tif')")
    arguments = given["model_arguments"] or {}
    if not isinstance(arguments, dict):
        raise LandcoverError(f"model_arguments={arguments!r}: give a dict such as {{'padding': '64'}}")
    for key, value in arguments.items():
        if key not in MODEL_ARGUMENTS:
            raise LandcoverError(f"model_arguments['{key}']: not an argument of landcover's U-Net (it takes "
                                 f"{', '.join(MODEL_ARGUMENTS)})")
        a[key] = merge(key, given[key], MODEL_ARGUMENTS[key](value, f"model_arguments['{key}']"),
                       f"model_arguments['{key}']")
    ctx = read_context(given["context"], ("cellSize", "extent", "processorType", "batch_size"), "classify_pixels")
    if "batch_size" in ctx:  # where arcgis.learn's 2019 land-cover guide put it
        # a batch size from model_arguments counts as given, as one from the call does
        a["batch_size"] = merge("batch_size", a["batch_size"], whole(ctx["batch_size"], "context['batch_size']"),
                                "context['batch_size']", stated=True if "batch_size" in arguments else None)
    a.update(grid_context(ctx, given))
    if "processorType" in ctx:
        kind, said = str(ctx["processorType"]).strip().upper(), f"context['processorType']={ctx['processorType']!r}"
        if kind not in ("CPU", "GPU"):
            raise LandcoverError(f"{said}: give 'CPU' or 'GPU'")
        if kind == "GPU" and not cuda_available():
            raise LandcoverError(f"{said}: torch sees no CUDA GPU here; give 'CPU' (or install a CUDA build of "
                                 "torch)")
        fits = ("auto", "cuda") if kind == "GPU" else ("auto", "cpu", *CPU_BACKENDS)
        if given["backend"] not in fits:
            raise LandcoverError(f"backend={given['backend']!r} and {said}: give one of them")
        # A CPU backend given by name stays; auto becomes the device asked for.
        a["backend"] = "cuda" if kind == "GPU" else ("cpu" if given["backend"] == "auto" else given["backend"])
    return a


def _check_cell_size(grid: Grid, pkg, name: str) -> None:
    """Warn when the imagery's cell size is far from the model's training cell size: a model sees objects at the
    scale it learned them (a 1 m model on 10 m imagery mostly sees textures it never met). Only compared when
    both CRSs measure in metres (geographic imagery has no single cell size in metres)."""
    if not pkg.cell_size or not pkg.crs_wkt:
        return
    try:
        model_crs = rasterio.crs.CRS.from_wkt(pkg.crs_wkt)
        units = [c.linear_units_factor for c in (grid.crs, model_crs)]
    except (rasterio.errors.CRSError, ValueError, AttributeError):
        return  # geographic, or a CRS without linear units
    (_, f_img), (_, f_model) = units
    image = abs(grid.transform.a) * f_img
    model = float(pkg.cell_size[0]) * f_model
    if image > 0 and model > 0 and max(image / model, model / image) >= CELL_SIZE_RATIO:
        warn(f"{name}: cell size {image:g} m, the model was trained at {model:g} m; classify with "
             f"{arg('cell_size', round(model / f_img, 6))} to resample to it",
             CellSizeWarning)


def _start(run: _Run, block_size: int) -> Job:
    """The run's job description, with the run's own copy of the exported model (if any)."""
    # The run keeps its own copy of an exported model, so a resumed run (or a remote worker) uses the same one.
    choice, work, grid = run.choice, run.work, run.grid
    artifact = work / choice["engine"] if choice.get("engine") else None
    if artifact is not None and not artifact.exists():
        if not choice.get("artifact"):
            raise LandcoverError(f"{artifact}: missing from the unfinished run; remove {work} to start again")
        _link_or_copy(Path(choice["artifact"]), artifact)
    return Job(
        imagery=_absolute(run.source), crs_wkt=grid.crs.to_wkt(), transform=tuple(grid.transform)[:6],
        width=grid.width, height=grid.height, model=str(Path(run.model).resolve()), model_hash=run.model_hash,
        backend=choice["backend"], artifact=str(artifact) if artifact else None, tile=run.tile, padding=run.pad,
        block_size=int(block_size), batch_size=run.batch_size, tta=run.tta,
        predict_background=run.predict_background, probabilities=run.prob_path is not None, work=str(work),
        threads=run.split.threads if run.split else None,
        raw_classes=has_room(work, 3 * grid.width * grid.height), window=run.window,
    )


def _absolute(source: Imagery) -> Imagery:
    """``source`` with local paths made absolute: Dask workers and a resumed run may start elsewhere."""
    def fix(p: str) -> str:
        return p if p.startswith("/vsi") else os.path.abspath(p)

    return Imagery(source.kind, tuple(type(b)(fix(b.path), b.band, b.name) for b in source.bands),
                   tuple(fix(t) for t in source.tiles), source.name, source.raw)


def _trained_bands(input_raster, pkg) -> list[str] | None:
    """A STAC Item given without bands is read with the bands the model was trained on, by their names."""
    if pkg.band_names and looks_like_stac_item(input_raster):
        return list(pkg.band_names)
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to the cached model file where the file system allows one (free, where a copy of the
    ~50 MB compiled model takes ~0.1 s and as much disk), else a copy. The cache is never modified in place
    (its files are replaced by rename), so the link keeps this run's version for --resume."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_imagery(ds, pkg, name: str) -> None:
    """The raster must be georeferenced and have the bands and the pixel type the model was trained on."""
    require_crs(ds, name)
    need = max(pkg.extract_bands) + 1
    if ds.count < need:
        reads = ", ".join(str(b + 1) for b in pkg.extract_bands)
        raise LandcoverError(
            f"{name}: has {ds.count} band(s) but the model reads band(s) {reads} of the imagery it was trained "
            f"on; give that imagery's (at least {need}) bands in their order, as one file or one file per band")
    _check_alpha(ds, pkg, name)
    if pkg.input_dtype and ds.dtypes[0] != pkg.input_dtype:  # "": not recorded (an arcgis.learn package)
        raise LandcoverError(
            f"{name}: pixels are {ds.dtypes[0]} but the model was trained on {pkg.input_dtype}; give imagery of "
            "the same type (e.g. the same product and processing level)")


def _check_alpha(ds, pkg, name: str) -> None:
    """A band GDAL tags alpha that the model reads is read as data, never as the validity mask (rasterio tags
    band 4 of every 4-band uint8 raster alpha: NAIP's NIR). Warned when it looks like a real transparency mask
    (only 0 and 255 in a coarse read), i.e. an RGBA file given to a model trained on four bands of data."""
    band = alpha_read_as_data(ds, [b + 1 for b in pkg.extract_bands])
    if band is None:
        return
    with pixel_errors(name):
        values = _sampled_values(ds, band)
    if set(values.tolist()) <= {0, 255}:
        warn(f"{name}: band {band} holds only 0 and 255 and GDAL tags it alpha (transparency), but the model "
             f"reads it as data (its band {pkg.extract_bands.index(band - 1) + 1}); it is read as data, not "
             "as a mask: check that the imagery has the bands the model was trained on", ImageryWarning)


#: windows of ``_sampled_values`` per side and their edge in pixels: 16 windows of 64², 64 K pixels in all
SAMPLE_GRID, SAMPLE_WINDOW = 4, 64


def _sampled_values(ds, band: int) -> np.ndarray:
    """The distinct values of a coarse sample of ``band``: its overview when it has one, else ``SAMPLE_GRID``²
    windows spread over the raster. A decimated read of a raster without overviews decodes every block of the
    band (1.1 s of a 100 MP run's setup, 4 s at 400 MP); the windows decode a few blocks whatever its size."""
    if (ds.width <= 256 and ds.height <= 256) or ds.overviews(band):
        side = min(256, ds.width), min(256, ds.height)
        return np.unique(ds.read(band, out_shape=(side[1], side[0])))
    w, h = min(SAMPLE_WINDOW, ds.width), min(SAMPLE_WINDOW, ds.height)
    rows = np.linspace(0, ds.height - h, SAMPLE_GRID).astype(int)
    cols = np.linspace(0, ds.width - w, SAMPLE_GRID).astype(int)
    return np.unique(np.concatenate([ds.read(band, window=Window(int(c), int(r), w, h)).ravel()
                                     for r in rows for c in cols]))


def _block_size_for(plan: TilePlan, client) -> int:
    """The default block size: 4096 in this process; on a cluster shrunk (in whole tiles) until every worker
    thread gets at least two blocks and the blocks divide evenly among them (or there are many), so that no
    worker is left running a last block alone."""
    if client is None:
        return DEFAULT_BLOCK
    slots = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()) or 1
    stride = max(1, plan.rows.tile - 2 * plan.rows.padding)
    for tiles in range(max(1, -(-DEFAULT_BLOCK // stride)), 0, -1):
        size = tiles * stride
        n = len(plan.reblocked(size).blocks)
        if n >= 2 * slots and (n % slots == 0 or n >= 6 * slots):
            return size
    return stride


@contextlib.contextmanager
def _executor(scheduler: str | None, workers: int | None):
    """A Dask client when asked for one, else None (blocks run in this process)."""
    if not (scheduler or workers):
        yield None
        return
    from .cluster import dask_client

    with dask_client(scheduler, workers) as client:
        yield client


def _run_blocks(job: Job, plan: TilePlan, client, progress: bool, pkg=None) -> None:
    """Run the blocks not yet done. A run that fails (or is interrupted) before finishing any block leaves
    nothing behind; one that finished some keeps them for ``resume``, and says so when it can be resumed."""
    work = Path(job.work)
    try:
        _each_block(job, plan, client, progress, pkg)
    except BaseException as exc:
        forget_contexts()  # nothing this run read stays cached for the next run in this process
        kept = any(done_path(work, b).exists() for b in plan.blocks)
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
        if kept and isinstance(exc, NetworkError):
            raise LandcoverError(f"{exc}; add {arg('resume', True)} to continue from the finished blocks") from None
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise LandcoverError(f"{work.parent}: the disk is full; free some space"
                                 f"{', then rerun with ' + arg('resume', True) if kept else ''}") from None
        raise


def _each_block(job: Job, plan: TilePlan, client, progress: bool, pkg=None) -> None:
    from tqdm.auto import tqdm

    blocks = plan.blocks
    pending = [b for b in blocks if not done_path(job.work, b).exists()]
    # Largest blocks first, so that parallel workers do not end with one big block running alone.
    pending.sort(key=lambda b: -len(plan.block_tiles(b)))
    t0 = time.perf_counter()
    done_px = 0
    bar = tqdm(total=len(blocks), initial=len(blocks) - len(pending), unit="block", desc="classify",
               disable=not progress, dynamic_ncols=True)

    def on_done(stats: dict) -> None:
        nonlocal done_px
        done_px += stats["pixels"]
        bar.update(1)
        bar.set_postfix_str(f"{done_px / 1e6 / max(time.perf_counter() - t0, 1e-9):.2f} MP/s")

    try:
        if client is not None:
            from .cluster import run_blocks

            run_blocks(client, job, pending, on_done)
        else:
            for block in pending:
                on_done(run_block(job, block, pkg))
    finally:
        bar.close()
