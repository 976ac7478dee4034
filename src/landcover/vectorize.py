"""Polygons from a classified raster, with a minimum mapping unit, written to a GeoPackage.

How memory stays bounded without cutting polygons at window seams: the raster is copied window by window into a
disk-backed :class:`numpy.memmap`, and GDAL's sieve filter and polygonizer (through
:func:`rasterio.features.sieve` / :func:`~rasterio.features.shapes`) walk it scanline by scanline. Their memory
grows with the number of polygons being built, not with the raster size, and the operating system pages the
memmap in and out as needed. Because the whole raster is processed at once, a field that crosses any window
boundary stays one polygon — no dissolve step is needed. Polygons are written in batches.

Minimum mapping unit: connected patches smaller than ``min_area`` are merged into their largest neighbouring
class (GDAL's sieve with no data masked out, repeated until nothing changes, since one pass leaves clusters of
small patches whose neighbours were small too). Patches still smaller than the unit then touch no class at all
(specks inside no data) and are removed; no-data pixels themselves are never turned into a class. So no
polygon is smaller than the unit, and every pixel of a class either stays or joins a neighbouring class.

With connectivity 8, GDAL's polygons of patches that touch themselves at a corner are invalid rings; they are
made valid (as multipolygons, the layer's type then) so that overlays in QGIS and ArcGIS work.

The module is called ``polygons`` rather than ``vectorize`` so that ``landcover.vectorize`` stays the function
(importing a submodule of that name would replace the lazily exported attribute).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .areas import PixelAreas, as_class_values, check_classified, class_strips, strips
from .classes import read_class_table
from .errors import LandcoverError, arg
from .raster import Grid, atomic_output, check_output, check_writable_dir, open_raster

#: Features written per GeoPackage append.
BATCH = 20000

#: Field names match what ArcGIS's Export Training Data looks for, so the output can be used as labels again.
VALUE_FIELD, NAME_FIELD = "classvalue", "classname"

_GDAL_INT_TYPES = {"uint8", "uint16", "int16", "int32"}


def min_area_pixels(min_area: float | None, grid: Grid, what: str = "raster") -> int:
    """The minimum mapping unit in pixels (rounded up).

    ``min_area`` is in CRS units² for planar CRSs; for a geographic or Mercator CRS it is in m², converted with the
    geodesic area of a pixel in the raster's middle row.
    """
    if min_area is not None and not (math.isfinite(min_area) and min_area >= 0):
        raise LandcoverError(f"{arg('min_area', min_area)}: must be a number >= 0")
    if min_area is None or min_area == 0:
        return 1
    areas = PixelAreas(grid, what)
    pixel = areas.mean()
    pixels = max(1, math.ceil(min_area / pixel - 1e-9))
    if pixels >= grid.width * grid.height:  # GDAL's sieve needs patches smaller than the raster
        unit = "m²" if areas.unit == "m²" else "CRS units²"
        raise LandcoverError(f"{arg('min_area', min_area)}: not smaller than the whole raster "
                             f"({grid.width * grid.height * pixel:g} {unit}); give a smaller minimum mapping unit")
    return pixels


def vectorize(raster: str | os.PathLike, out: str | os.PathLike, min_area: float | None = None,
              connectivity: int = 4, layer: str | None = None) -> dict:
    """Polygons per class of a classified raster, in its CRS, with fields ``classvalue`` and ``classname``.

    Args:
        raster: single-band classified raster (class values; 0 or its nodata = no data).
        out: output GeoPackage (.gpkg), written to a temporary file and renamed when complete.
        min_area: minimum mapping unit in CRS units² (m² for a geographic or Mercator CRS); smaller patches are merged into
            their largest neighbour before polygonizing. None or 0: keep every pixel.
        connectivity: 4 (edge neighbours, GDAL's default) or 8 (corners too), for sieve and polygons alike.
        layer: layer name (default: the output file's stem).

    Returns:
        ``{"path", "layer", "features", "min_area_pixels", "per_class": {value: feature count}}``.
    """
    from rasterio.features import shapes

    if connectivity not in (4, 8):
        raise LandcoverError(f"{arg('connectivity', connectivity)}: use 4 or 8")
    out = check_output(out, (".gpkg",), "polygon layer (GeoPackage)", [raster])
    check_writable_dir(out.parent)
    path = str(raster)
    with open_raster(path, "classified raster") as ds:
        names = {c.value: c.name for c in read_class_table(path)}
        check_classified(ds, path)
        if ds.crs is None:
            raise LandcoverError(f"{path}: the raster has no CRS, so its polygons would have none; assign one "
                                 "(gdal_edit -a_srs EPSG:...)")
        grid = Grid.of(ds)
        min_pixels = min_area_pixels(min_area, grid, path)
        dtype = ds.dtypes[0] if ds.dtypes[0] in _GDAL_INT_TYPES else "int32"
        # The work rasters live beside the output: same disk, and removed whatever happens.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".landcover-vectorize-") as tmpdir:
            classes = np.memmap(Path(tmpdir) / "classes.raw", dtype=dtype, mode="w+",
                                shape=(grid.height, grid.width))
            any_class = _copy_classes(ds, classes)
            if not any_class:
                raise LandcoverError(f"{path}: every pixel is no data (0 or nodata); nothing to vectorize")
            if min_pixels > 1:
                classes = _sieve(classes, min_pixels, connectivity, Path(tmpdir))
            counts: dict[int, int] = {}
            layer = layer or out.stem
            with atomic_output(out) as tmp:
                batches = 0
                batch_geoms, batch_values = [], []
                for geom, value in shapes(classes, connectivity=connectivity, transform=grid.transform):
                    if value != 0:
                        batch_geoms.append(geom)
                        batch_values.append(int(value))
                    if len(batch_geoms) >= BATCH:
                        _count(counts, _write(tmp, layer, grid, batch_geoms, batch_values, names,
                                              append=batches > 0, multi=connectivity == 8))
                        batches, batch_geoms, batch_values = batches + 1, [], []
                if batch_geoms or batches == 0:
                    _count(counts, _write(tmp, layer, grid, batch_geoms, batch_values, names, append=batches > 0,
                                          multi=connectivity == 8))
            written = sum(counts.values())
    return {"path": str(out), "layer": layer, "features": written, "min_area_pixels": min_pixels,
            "per_class": dict(sorted(counts.items()))}


#: Masked sieve passes at most (each walks the whole raster; two or three reach a fixed point in practice).
SIEVE_PASSES = 8


def _sieve(classes: np.memmap, min_pixels: int, connectivity: int, folder: Path) -> np.memmap:
    """``classes`` with every patch smaller than ``min_pixels`` merged into its largest neighbouring class, or
    removed (set to 0) when it touches no class; no data (0) stays no data."""
    from rasterio.features import sieve

    shape, dtype = classes.shape, classes.dtype
    rows = [slice(int(w.row_off), int(w.row_off + w.height)) for w in strips(shape[1], shape[0])]
    mask = np.memmap(folder / "mask.raw", dtype=np.uint8, mode="w+", shape=shape)
    for r in rows:
        mask[r] = classes[r] != 0
    buffers = [np.memmap(folder / f"sieved{i}.raw", dtype=dtype, mode="w+", shape=shape) for i in (0, 1)]
    current = classes
    for i in range(SIEVE_PASSES):
        out = buffers[i % 2]
        # Masked: no data is neither merged nor a neighbour to merge into.
        sieve(current, min_pixels, out=out, mask=mask, connectivity=connectivity)
        done = all(np.array_equal(out[r], current[r]) for r in rows)
        current = out
        if done:
            break
    # What is still too small touches no class: unmasked, its only neighbour is no data, which takes it; no data
    # that the same pass merged into a class is given back below.
    out = buffers[1] if current is buffers[0] else buffers[0]
    sieve(current, min_pixels, out=out, connectivity=connectivity)
    for r in rows:
        out[r][classes[r] == 0] = 0
    return out


def _copy_classes(ds, dest: np.memmap) -> bool:
    """Copy the class values into ``dest`` with every kind of no data as 0; True if any pixel has a class."""
    found = False
    for win, data, valid in class_strips(ds, ds.name):
        block = np.where(valid, as_class_values(data), 0)
        if block.dtype != dest.dtype:
            info = np.iinfo(dest.dtype)
            if valid.any() and (block.min() < info.min or block.max() > info.max):
                raise LandcoverError(f"{ds.name}: class values outside the {dest.dtype} range cannot be "
                                     "vectorized; recode them")
            block = block.astype(dest.dtype)
        dest[int(win.row_off):int(win.row_off + win.height)] = block
        found = found or bool(valid.any())
    dest.flush()
    return found


def _write(path: Path, layer: str, grid: Grid, geoms: list, values: list[int],
           names: dict[int, str], append: bool, multi: bool = False) -> np.ndarray:
    """Append polygons to the layer; invalid ones are made valid, as multipolygons when ``multi`` (one feature
    per patch) and split into their parts otherwise. Returns the class value of each feature written."""
    import shapely
    from pyogrio.raw import write

    shapes_ = np.array([shapely.geometry.shape(g) for g in geoms], dtype=object)
    vals = np.array(values, dtype=np.int32)
    bad = ~shapely.is_valid(shapes_) if len(shapes_) else np.zeros(0, bool)
    if bad.any():
        shapes_[bad] = [_polygonal(g) for g in shapely.make_valid(shapes_[bad])]
    if multi:
        shapes_ = np.array([g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in shapes_],
                           dtype=object)
    else:
        shapes_, index = shapely.get_parts(shapes_, return_index=True)
        vals = vals[index]
    field_data = [vals, np.array([names.get(int(v), str(v)) for v in vals], dtype=object)]
    write(str(path), shapely.to_wkb(shapes_), field_data, [VALUE_FIELD, NAME_FIELD], layer=layer, driver="GPKG",
          geometry_type="MultiPolygon" if multi else "Polygon", crs=grid.crs.to_wkt() if grid.crs else None,
          append=append)
    return vals


def _count(counts: dict[int, int], values: np.ndarray) -> None:
    for v, n in zip(*np.unique(values, return_counts=True), strict=True):
        counts[int(v)] = counts.get(int(v), 0) + int(n)


def _polygonal(geom):
    """The polygons of a geometry made valid (a collection may also hold the lines of collapsed corners)."""
    import shapely

    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
