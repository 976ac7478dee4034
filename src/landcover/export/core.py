"""``export_training_data``: imagery + labels → Classified Tiles chips and metadata.

The chip grid is the imagery grid (or the grid that ``extent``/``cell_size`` make of it, in the imagery CRS).
Chips of ``tile_size`` start every ``stride`` pixels from the grid origin; the last row and column of chips are
shifted inward so they end at the grid edge (no padding, no labelled pixel dropped). A grid smaller than one tile
gives one chip padded with the imagery nodata value (0 when it has none) and label 0.

The grid is processed in blocks of whole chip rows and columns (about 1024 rows, a bounded number of bytes):
each block is read once from the imagery and the labels and the chips are cut from it in numpy, so overlapping
chips (stride < tile) do not read pixels twice and memory stays flat whatever the raster size.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..arcgis_keywords import (
    check_seed_only,
    flag,
    grid_context,
    merge,
    read_context,
    records_given_arguments,
    square_size,
    whole,
)
from ..classes import ClassInfo, generated_color, load_classes_json
from ..errors import LandcoverError, arg
from ..raster import (
    GDAL_ENV,
    Grid,
    GridReader,
    check_writable_dir,
    every_band_valid,
    iter_windows,
    require_crs,
    target_grid,
    whole_grid,
)
from ..sources import resolve
from .chips import ESRI_FORMAT_NAMES, FORMAT_ALIASES, FORMATS, ChipWriter, chip_paths
from .labels import open_labels
from .metadata import ExportMetadata, cell_size_entry, chip_indices, holds_export, read_export
from .stats import BandAccumulator, ClassCounts

log = logging.getLogger("landcover")

#: The metadata format written (ArcGIS's name), the one pixel classification trains on.
METADATA_FORMAT = "Classified_Tiles"
#: ArcGIS's other metadata formats (Export Training Data For Deep Learning), named in the refusal.
OTHER_METADATA_FORMATS = ("KITTI_rectangles", "PASCAL_VOC_rectangles", "RCNN_Masks", "Labeled_Tiles",
                          "MultiLabeled_Tiles", "Export_Tiles", "CycleGAN", "Imagenet", "Panoptic_Segmentation")

#: Rows of chips read together (pixels; at least one tile), and the most bytes of imagery per block read.
BLOCK_ROWS = 1024
BLOCK_BYTES = 64 * 2**20


@dataclass
class ExportSummary:
    """What an export wrote (this run only; the folder's totals are in its metadata)."""

    out: Path
    chips: int
    first_index: int
    next_index: int
    classes: list[ClassInfo]
    pixels_per_class: dict[int, int]
    seconds: float
    megapixels: float
    appended: bool = False
    tile_size: int = 0
    chip_format: str = "tif"

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        names = {c.value: c.name for c in self.classes}
        per_class = ", ".join(f"{names.get(v, v)}={n}" for v, n in self.pixels_per_class.items())
        verb = "appended" if self.appended else "exported"
        return (f"{verb} {self.chips} chips {self.tile_size}x{self.tile_size} {self.chip_format} "
                f"(indices {self.first_index}..{self.next_index - 1}) to {self.out}: "
                f"{len(self.pixels_per_class)} classes, pixels per class {per_class}; "
                f"{self.seconds:.1f} s, {self.mp_per_s:.1f} MP/s")


@records_given_arguments
def export_training_data(
    imagery: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    labels: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    class_field: str | None = None,
    buffer_radius: float = 0.0,
    classes: str | os.PathLike | Sequence[ClassInfo] | None = None,
    tile_size: int = 256,
    stride: int | None = None,
    chip_format: str = "tif",
    cell_size: float | tuple[float, float] | None = None,
    extent: Sequence[float] | None = None,
    extent_crs: str | None = None,
    all_tiles: bool = False,
    start_index: int | None = None,
    resampling: str = "bilinear",
    workers: int | None = None,
    progress: bool = True,
    metadata_format: str | None = None,
    bands: Sequence[str] | None = None,
    input_raster: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    input_class_data: str | os.PathLike | None = None,
    output_location: str | os.PathLike | None = None,
    classvalue_field: str | None = None,
    stride_size: int | dict | None = None,
    context: dict | None = None,
    **seed_options,
) -> ExportSummary:
    """Export training chips in ArcGIS's Classified Tiles layout (``images/``, ``labels/``, metadata).

    Args:
        imagery: one raster (any band count and dtype, a VRT, or a URL: ``https://``, ``s3://``, ``gs://``),
            band files stacked in the given order (they may differ in type, nodata and resolution: see
            :mod:`landcover.sources`), :func:`landcover.mosaic` of scene tiles, or a STAC Item (its JSON's path
            or URL, or :func:`landcover.stac_item`).
        labels: a classified raster (class values 1..255, 0 and its nodata = no data; any CRS and resolution,
            resampled with nearest neighbour) or a vector layer (GeoPackage, Shapefile, GeoJSON...).
        out: output folder.
        class_field: integer class field of a vector layer; default ``classvalue`` or ``value`` (case-insensitive)
            as in ArcGIS, else every feature is class 1.
        buffer_radius: buffer for point and line features, in the units of the label layer's CRS.
        classes: a classes JSON file (see :func:`landcover.classes.load_classes_json`) or a list of classes,
            for names and colours; default the label raster's attribute/colour table, the layer's name field
            (``classname``/``class_name``/``name``), or generated.
        tile_size: chip size in pixels. stride: step between chips; 0 = the tile size (no overlap); default
            half the tile size (ArcGIS's 256/128).
        chip_format: ``tif``, ``png`` or ``jpg`` (PNG/JPEG: 8-bit imagery with 1 or 3 bands; JPEG exports write
            their label chips as PNG, which is lossless).
        cell_size: resample the imagery to this cell size (imagery CRS units), from its upper-left corner;
            extent: (xmin, ymin, xmax, ymax) in ``extent_crs`` (default the imagery CRS) limits the area, snapped
            outward to whole cells (so exports of adjacent extents share one grid).
        all_tiles: also write chips without labelled pixels (chips that are all imagery nodata never are).
        start_index: index of the first chip; appends to an export already in ``out`` (statistics merged).
        resampling: imagery resampling when ``cell_size``/``extent`` move off the imagery grid.
        workers: chip-writing threads (default: up to 4). progress: show a progress bar on stderr.
        metadata_format: ArcGIS's metadata format keyword: None or ``"Classified_Tiles"`` (any case), the one
            format written (pixel classification); any other is refused.
        bands: a STAC Item's bands, by asset key or ``eo:bands`` common name (``["red", "green", "blue"]``).

    arcgis.learn's spellings are accepted as well, so its notebooks run unchanged: ``input_raster``,
    ``input_class_data``, ``output_location``, ``classvalue_field``, ``stride_size``, ``tile_size`` and
    ``stride_size`` as ``{"x": n, "y": n}`` (square), and ``context={"exportAllTiles": …, "startIndex": …,
    "cellSize": …, "extent": …}`` with the extent as an Esri envelope (``{"xmin": …, "spatialReference":
    {"wkid": 3857}}``). ``gis`` must be None: the export runs here, not on an ArcGIS server. arcgis.learn's
    other keywords (``rotation_angle``, ``reference_system``, ``process_all_raster_items``, ``future``, ...)
    are accepted at their defaults and refused in one line otherwise.

    Returns:
        an :class:`ExportSummary`. Raises :class:`~landcover.errors.LandcoverError` for bad input; nothing that
        looks like a complete export is left behind when it fails.
    """
    t0 = time.perf_counter()
    a = _arcgis_arguments(locals())
    imagery, labels, out, class_field, tile_size, stride = (a[k] for k in ("imagery", "labels", "out", "class_field",
                                                                           "tile_size", "stride"))
    cell_size, extent, extent_crs, all_tiles, start_index = (a[k] for k in ("cell_size", "extent", "extent_crs",
                                                                            "all_tiles", "start_index"))
    check_metadata_format(metadata_format)
    fmt = FORMAT_ALIASES.get(str(chip_format or "tif").lower().lstrip("."))
    if fmt is None:
        raise LandcoverError(f"{arg('chip_format', chip_format)}: use tif, png or jpg")
    tile, step = _check_tiling(tile_size, stride)
    if start_index is not None and int(start_index) < 0:
        raise LandcoverError(f"{arg('start_index', start_index)}: must be >= 0")
    try:
        radius = float(buffer_radius or 0)
    except (TypeError, ValueError):
        raise LandcoverError(f"{arg('buffer_radius', buffer_radius)}: give a number >= 0") from None
    if not math.isfinite(radius) or radius < 0:
        raise LandcoverError(f"{arg('buffer_radius', buffer_radius)}: must be >= 0")
    try:
        resample = Resampling[str(resampling).lower()]
    except KeyError:
        raise LandcoverError(f"{arg('resampling', resampling)}: use nearest, bilinear, cubic or average") from None
    user_classes = _user_classes(classes)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LandcoverError(f"{out}: {arg('out')} exists and is not a folder")

    previous = _previous_export(out, start_index)
    first = int(start_index) if start_index is not None else 0
    with rasterio.Env(**GDAL_ENV):
        source = resolve(imagery, "imagery", bands)
        img = source.open()
        lab = None
        try:
            name = source.name
            _check_imagery(img, name, fmt)
            grid = target_grid(Grid.of(img), extent, extent_crs, cell_size)
            lab = open_labels(labels, grid, class_field, radius)
            if previous is not None:
                _check_compatible(previous, out, img, tile, fmt)
            taken = [i for i in chip_indices(out) if i >= first]
            if taken:
                raise LandcoverError(f"{out}: {arg('start_index', first)} would overwrite chip {taken[0]:09d}; use "
                                     f"{arg('start_index', max(chip_indices(out)) + 1)}")
            created = not out.exists()
            check_writable_dir(out)
            within = whole_grid(Grid.of(img), cell_size)
            _check_tile_fits(tile, grid, img)
            return _run(img, lab, grid, within, out, created, previous, user_classes, tile=tile, step=step, fmt=fmt,
                        first=first, all_tiles=all_tiles, resample=resample, workers=workers,
                        progress=progress, t0=t0, name=name, extent_given=extent is not None)
        finally:
            if lab is not None:
                lab.close()
            img.close()


def _arcgis_arguments(given: dict) -> dict:
    """landcover's arguments of an export from ``given`` (the call's arguments), arcgis.learn's forms merged in."""
    check_seed_only(given["seed_options"], "export_training_data", EXPORT_SEED_KEYWORDS)
    out = given["out"]
    if (isinstance(out, str) and given["output_location"] is not None
            and out.lower().lstrip(".") in (*FORMAT_ALIASES, "mrf")):
        raise LandcoverError(f"out={out!r}: arcgis.learn's third positional argument is chip_format, landcover's "
                             f"is the output folder; give chip_format={out!r} by name")
    a = dict(given)
    for ours, theirs in (("imagery", "input_raster"), ("labels", "input_class_data"), ("out", "output_location"),
                         ("class_field", "classvalue_field")):
        a[ours] = merge(ours, given[ours], given[theirs], theirs)
    for ours in ("imagery", "labels", "out"):
        if a[ours] is None:
            raise LandcoverError(f"export_training_data: give {ours}")
    a["tile_size"] = square_size(given["tile_size"], "tile_size")
    a["stride"] = merge("stride", given["stride"], square_size(given["stride_size"], "stride_size"),
                        "stride_size")
    ctx = read_context(given["context"], ("exportAllTiles", "startIndex", "cellSize", "extent"),
                       "export_training_data")
    if "exportAllTiles" in ctx:
        a["all_tiles"] = merge("all_tiles", given["all_tiles"],
                               flag(ctx["exportAllTiles"], "context['exportAllTiles']"), "context['exportAllTiles']")
    if "startIndex" in ctx:
        a["start_index"] = merge("start_index", given["start_index"],
                                 whole(ctx["startIndex"], "context['startIndex']"), "context['startIndex']")
    a.update(grid_context(ctx, given))
    return a


#: arcgis.learn keywords of export_training_data accepted at their defaults only.
EXPORT_SEED_KEYWORDS = ("gis", "input_mask_polygons", "rotation_angle", "reference_system", "process_all_raster_items",
                        "blacken_around_feature", "fix_chip_size", "additional_input_raster", "input_instance_data",
                        "instance_class_value_field", "min_polygon_overlap_ratio", "future", "estimate")


def check_metadata_format(metadata_format: str | None) -> None:
    """Refuse, in one line, a metadata format other than Classified_Tiles (None means Classified_Tiles)."""
    if metadata_format is None:
        return
    name = metadata_format.strip().replace(" ", "_") if isinstance(metadata_format, str) else None
    if name is not None and name.lower() == METADATA_FORMAT.lower():
        return
    known = next((f for f in OTHER_METADATA_FORMATS if name is not None and f.lower() == name.lower()), None)
    what = f"{known} is an ArcGIS format landcover does not write" if known else "not a metadata format"
    raise LandcoverError(f"{arg('metadata_format', metadata_format)}: {what}; landcover exports {METADATA_FORMAT} only "
                         "(chips for pixel classification)")


def _check_tiling(tile_size, stride) -> tuple[int, int]:
    tile = whole(tile_size, "tile_size") if tile_size is not None else 256
    step = whole(stride, "stride") if stride is not None else max(1, tile // 2)
    if tile <= 0:
        raise LandcoverError(f"{arg('tile_size', tile_size)}: must be > 0")
    if step < 0:
        raise LandcoverError(f"{arg('stride', stride)}: must be >= 0 (0 = the tile size)")
    step = step or tile  # ArcGIS's samples pass stride 0 for "no overlap"
    if step > tile:
        raise LandcoverError(f"{arg('stride', stride)}: must not exceed {arg('tile_size', tile)} (pixels would be "
                             "skipped)")
    return tile, step


#: the most memory one imagery chip may take (a block of chips is read at once, and chips are written in threads)
MAX_CHIP_BYTES = 256 * 2**20


def _check_tile_fits(tile: int, grid: Grid, img) -> None:
    """A tile larger than the raster only pads it with nodata; one whose chips cannot be held in memory cannot be
    exported at all. Both are refused in one line with the largest size that works."""
    side = max(grid.width, grid.height)
    if tile > side and tile > 256:
        raise LandcoverError(f"{arg('tile_size', tile)}: larger than the imagery's {grid.width} x {grid.height} px "
                             f"grid (chips would be mostly padding); give at most {arg('tile_size', side)}")
    per_pixel = img.count * np.dtype(img.dtypes[0]).itemsize
    if tile * tile * per_pixel > MAX_CHIP_BYTES:
        most = int(math.sqrt(MAX_CHIP_BYTES / per_pixel))
        raise LandcoverError(f"{arg('tile_size', tile)}: a chip of {img.count} band(s) would take "
                             f"{tile * tile * per_pixel / 2**30:.1f} GiB of memory; give at most "
                             f"{arg('tile_size', most)}")


def _user_classes(classes) -> dict[int, ClassInfo]:
    if classes is None:
        return {}
    if isinstance(classes, (str, os.PathLike)):
        return {c.value: c for c in load_classes_json(classes)}
    return {int(c.value): c for c in classes}


def _previous_export(out: Path, start_index: int | None) -> ExportMetadata | None:
    if not out.is_dir():
        return None
    if holds_export(out):
        existing = read_export(out)
        if start_index is None:
            raise LandcoverError(f"{out}: already holds an export ({existing.num_tiles} chips); choose another "
                                 f"{arg('out')}, or append with {arg('start_index', existing.next_index)}")
        return existing
    if start_index is None and chip_indices(out):
        raise LandcoverError(f"{out}: holds chips without metadata (an interrupted export?); remove them or "
                             f"choose another {arg('out')}")
    return None


def _check_imagery(img, name: str, fmt: str) -> None:
    require_crs(img, name)
    if fmt in ("png", "jpg"):
        label = {"png": "PNG", "jpg": "JPEG"}[fmt]
        if img.count not in (1, 3):
            raise LandcoverError(f"{name}: {label} chips hold 1 or 3 bands but the imagery has {img.count}; "
                                 f"use {arg('chip_format', 'tif')}")
        if img.dtypes[0] != "uint8":
            raise LandcoverError(f"{name}: {label} chips are 8-bit but the imagery is {img.dtypes[0]}; use "
                                 f"{arg('chip_format', 'tif')}")


def _check_compatible(prev: ExportMetadata, out: Path, img, tile: int, fmt: str) -> None:
    problems = []
    if prev.num_bands != img.count:
        problems.append(f"{prev.num_bands} bands, not {img.count}")
    if (prev.tile_x, prev.tile_y) != (tile, tile):
        problems.append(f"tile size {prev.tile_x}x{prev.tile_y}, not {tile}")
    if prev.chip_format != ESRI_FORMAT_NAMES[fmt]:
        problems.append(f"{prev.chip_format} chips, not {ESRI_FORMAT_NAMES[fmt]}")
    if prev.data_type and prev.data_type != img.dtypes[0]:
        problems.append(f"{prev.data_type} imagery, not {img.dtypes[0]}")
    if problems:
        raise LandcoverError(f"{out}: cannot append, the export there has {'; '.join(problems)}")
    names = band_names(img)
    if any(prev.band_names) and prev.band_names != names:
        log.warning("%s: appending bands named %s to an export with bands %s", out, names, prev.band_names)


def band_names(ds) -> list[str]:
    """Band names for ``InputRastersProps``: descriptions, else colour interpretation, else Band_<n>."""
    names = []
    for i, (desc, ci) in enumerate(zip(ds.descriptions, ds.colorinterp, strict=True), start=1):
        if desc:
            names.append(desc)
        elif ci.name in ("red", "green", "blue"):
            names.append(ci.name.capitalize())
        else:
            names.append(f"Band_{i}")
    return names


def _groups(starts: list[int], tile: int, span: int) -> list[list[int]]:
    """Consecutive chip offsets grouped so one group's windows fit in ``span`` pixels (at least one tile)."""
    groups: list[list[int]] = []
    for s in starts:
        if groups and s + tile - groups[-1][0] <= max(span, tile):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


class _ImageryReader:
    """Imagery windows on the chip grid with their validity mask (imagery nodata, masks, outside the grid)."""

    def __init__(self, ds, grid: Grid, resample: Resampling, within: Grid | None = None):
        # Read within the whole resampled imagery: chips of adjacent extents get the same pixels.
        self.reader = GridReader(ds, grid, resample, within=within)
        self.nodata = ds.nodata
        self.fill = 0 if self.nodata is None else self.nodata
        # With a nodata value, validity comes from the pixels already read; GDAL's dataset mask would read (or
        # warp) every band a second time. Without one, only a mask band (internal or .msk) needs the dataset
        # mask. An alpha band is exported as a band and not used as a mask: 4-band NAIP is often tagged RGBA,
        # and taking its near-infrared band for transparency would drop every pixel where NIR is 0.
        flags = [set(f.name for f in band) for band in ds.mask_flag_enums]
        self.use_mask = self.nodata is None and any("per_dataset" in f and "alpha" not in f for f in flags)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """``(data, valid)`` for ``window``; ``valid`` is None when every pixel is valid."""
        data, valid = self.reader.read(window, fill=self.fill, masked=self.use_mask)
        if self.nodata is not None:
            if self.reader.every_band:
                # Stacked band files: nodata where any band is. Such pixels are written nodata in every band,
                # so the chips read back (GDAL's rule: every band nodata) with the same mask.
                has_data = every_band_valid(data, self.nodata)
                data[:, ~has_data] = self.nodata
            elif isinstance(self.nodata, float) and math.isnan(self.nodata):
                has_data = ~np.isnan(data).all(axis=0)
            else:
                has_data = (data != self.nodata).any(axis=0)
            valid = has_data if valid is None else valid & has_data
        if valid is not None and valid.all():
            valid = None
        return data, valid

    def close(self) -> None:
        self.reader.close()


def _run(img, lab, grid: Grid, within: Grid, out: Path, created: bool, previous: ExportMetadata | None,
         user_classes: dict[int, ClassInfo], *, tile: int, step: int, fmt: str, first: int, all_tiles: bool,
         resample: Resampling, workers: int | None, progress: bool, t0: float, name: str = "imagery",
         extent_given: bool = False) -> ExportSummary:
    from tqdm import tqdm

    # Chip offsets along each axis (one row and one column of iter_windows: no list of every window).
    cols = [int(w.col_off) for w in iter_windows(grid.width, tile, tile, step)]
    rows = [int(w.row_off) for w in iter_windows(tile, grid.height, tile, step)]
    n_windows = len(rows) * len(cols)
    itemsize = np.dtype(img.dtypes[0]).itemsize
    row_groups = _groups(rows, tile, BLOCK_ROWS)
    block_rows = max(len(g) for g in row_groups) * step + tile
    col_groups = _groups(cols, tile, BLOCK_BYTES // max(1, block_rows * img.count * itemsize))

    reader = _ImageryReader(img, grid, resample, within)
    counts = ClassCounts.empty()
    bands = BandAccumulator(img.count, img.dtypes[0])
    writer = ChipWriter(out, fmt, grid.crs, img.dtypes[0], img.count, img.nodata,
                        workers if workers is not None else min(4, os.cpu_count() or 1))
    index = first
    bar = tqdm(total=n_windows, unit="chip", file=sys.stderr, disable=not progress, dynamic_ncols=True,
               desc="export")
    imagery_seen = False  # whether any imagery pixel of the area is valid
    try:
        done = 0
        for rg in row_groups:
            for cg in col_groups:
                r0, c0 = rg[0], cg[0]
                block = Window(c0, r0, cg[-1] + tile - c0, rg[-1] + tile - r0)
                data, valid = reader.read(block)
                imagery_seen = imagery_seen or valid is None or bool(valid.any())
                labels = lab.read(block)
                if valid is not None:
                    labels[~valid] = 0  # no label where there is no imagery
                for r in rg:
                    for c in cg:
                        sl = (slice(r - r0, r - r0 + tile), slice(c - c0, c - c0 + tile))
                        v = None if valid is None else valid[sl]
                        if v is not None and not v.any():
                            continue
                        lchip = labels[sl]
                        if not all_tiles and not lchip.any():
                            continue
                        chip = data[(slice(None), *sl)]
                        counts.add(np.bincount(lchip.ravel(), minlength=256))
                        bands.add(chip, None if v is None or v.all() else v)
                        writer.submit(index, chip, lchip, grid.window_transform(Window(c, r, tile, tile)))
                        index += 1
                done += len(rg) * len(cg)
                bar.update(len(rg) * len(cg))
                mp = grid.width * grid.height * done / n_windows / 1e6
                bar.set_postfix(written=index - first, MPs=f"{mp / max(time.perf_counter() - t0, 1e-9):.1f}",
                                refresh=False)
        writer.close()
        bar.close()
        if not imagery_seen:
            nd = "" if img.nodata is None else f" {img.nodata:g}"
            raise LandcoverError(f"{name}: every imagery pixel of the export's area is nodata{nd}; check the "
                                 f"imagery's nodata value (gdalinfo -stats){' and the ' + arg('extent') if extent_given else ''}")
        if index == first:
            raise LandcoverError(f"{lab.path}: no chip holds labelled pixels inside the imagery's valid area"
                                 + ("" if all_tiles else f" (use {arg('all_tiles', True)} to export unlabelled chips)"))
        new = _metadata(img, grid, lab, user_classes, counts, bands, tile=tile, fmt=fmt, first=first,
                        next_index=index)
        merged = previous.merge(new) if previous is not None else new
        merged.write(out)  # last: only now does the folder look like a complete export
    except BaseException:
        bar.close()
        writer.abort()
        _remove_empty_dirs(out, created)
        raise
    finally:
        reader.close()

    seen = counts.values()
    return ExportSummary(
        out=out, chips=index - first, first_index=first, next_index=index,
        classes=[c for c in merged.classes if c.value in seen],
        pixels_per_class={v: int(counts.pixels[v]) for v in seen}, seconds=time.perf_counter() - t0,
        megapixels=grid.width * grid.height / 1e6, appended=previous is not None, tile_size=tile, chip_format=fmt,
    )


def _metadata(img, grid: Grid, lab, user_classes: dict[int, ClassInfo], counts: ClassCounts,
              bands: BandAccumulator, *, tile: int, fmt: str, first: int, next_index: int) -> ExportMetadata:
    # Names and colours: --classes, else what the labels carry, else generated. The classes listed are those
    # given explicitly plus every value that occurs in the chips.
    carried = lab.classes()
    classes = []
    for v in sorted(set(user_classes) | set(counts.values())):
        c = user_classes.get(v) or carried.get(v) or ClassInfo(v, str(v), generated_color(v))
        classes.append(c)
    _, img_ext, lab_ext = FORMATS[fmt]
    map_lines = []
    for i in range(first, next_index):
        img_path, lab_path = chip_paths(Path(""), i, fmt)
        map_lines.append(f"images\\{img_path.name}  labels\\{lab_path.name} ")
    cell = cell_size_entry(grid.res[0], grid.res[1], grid.crs)
    return ExportMetadata(
        num_bands=img.count, tile_x=tile, tile_y=tile, chip_format=ESRI_FORMAT_NAMES[fmt],
        data_type=img.dtypes[0], nodata=img.nodata, band_names=band_names(img), classes=classes, counts=counts,
        bands=bands.result(), min_cell=cell, max_cell=cell, next_index=next_index, map_lines=map_lines,
    )


def _remove_empty_dirs(out: Path, created: bool) -> None:
    for sub in ("images", "labels"):
        try:
            (out / sub).rmdir()
        except OSError:
            pass
    if created:
        try:
            out.rmdir()
        except OSError:
            pass
