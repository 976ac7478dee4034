"""The reference (ground truth) served window by window on the prediction's grid.

A reference raster is resampled with nearest neighbour (:class:`~landcover.raster.GridReader`: plain window reads
when the grids align, a WarpedVRT otherwise). Reference polygons are read once, reprojected into the
prediction's CRS and burnt per window with :func:`rasterio.features.rasterize`, using an STR-tree to pick the
polygons that touch the window — so a window costs what its own polygons cost.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..areas import MAX_CLASS_VALUE, as_class_values, check_class_values, class_mask
from ..classes import ClassInfo, read_class_table
from ..errors import LandcoverError, arg
from ..raster import Grid, GridReader, open_raster

#: File types read as polygons; anything else is opened as a raster.
VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite", ".gdb", ".parquet"}

#: Class fields looked for (case-insensitively) when none is given, as ArcGIS looks for value/classvalue.
CLASS_FIELDS = ("classvalue", "class_value", "value", "gridcode", "classcode", "class_id", "class")


def is_vector(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def open_reference(path: str | os.PathLike, grid: Grid, class_field: str | None = None,
                   classes: list[ClassInfo] | None = None):
    """A reader with ``read(window) -> (values int64, valid bool)`` on ``grid``, plus ``classes`` and ``kind``."""
    if is_vector(path):
        return PolygonReference(path, grid, class_field, classes or [])
    if class_field is not None:
        raise LandcoverError(f"{arg('class_field', class_field)}: only polygon references have fields; {path} is read "
                             "as a raster")
    return RasterReference(path, grid)


def _check_overlap(path, bounds, crs, grid: Grid) -> None:
    if crs is None or grid.crs is None:
        if (crs is None) != (grid.crs is None):
            raise LandcoverError(f"{path}: one of prediction and reference has no CRS; assign it "
                                 "(gdal_edit.py -a_srs EPSG:...)")
    elif crs != grid.crs:
        bounds = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    if not grid.overlaps(bounds):
        raise LandcoverError(f"{path}: the reference does not overlap the prediction; check that both cover the "
                             "same area (and their CRSs)")


class RasterReference:
    """A reference raster on the prediction grid (nearest neighbour); 0 and nodata are no data.

    Float rasters are read as classes only when their values are whole numbers: a value such as 1.4 is refused
    rather than rounded (or truncated) into a class.
    """

    kind = "raster"

    def __init__(self, path, grid: Grid):
        self.path = str(path)
        self.ds = open_raster(self.path, "reference raster")
        try:
            dtype = np.dtype(self.ds.dtypes[0])
            if self.ds.count != 1:
                raise LandcoverError(f"{self.path}: the reference raster has {self.ds.count} bands; give a one-band "
                                     "raster of class values (e.g. gdal_translate -b 1)")
            if dtype.kind not in "uif":
                raise LandcoverError(f"{self.path}: the reference raster is {dtype}; class values must be integers "
                                     "(0 or the raster's nodata = no data)")
            _check_overlap(self.path, self.ds.bounds, self.ds.crs, grid)
            if self.ds.crs is None and Grid.of(self.ds) != grid:
                raise LandcoverError(f"{self.path}: the reference has no CRS and is not on the prediction's grid; "
                                     "assign a CRS (gdal_edit.py -a_srs EPSG:...)")
            self.reader = GridReader(self.ds, grid, Resampling.nearest, indexes=[1])
        except Exception:
            self.ds.close()
            raise
        self.classes = read_class_table(self.path)
        self.class_field = None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        data, valid = self.reader.read(window)
        valid &= class_mask(data[0], self.ds.nodata)
        check_class_values(data[0], valid, self.path, "reference value")
        return as_class_values(data[0]), valid

    def close(self) -> None:
        self.reader.close()
        self.ds.close()


class PolygonReference:
    """Reference polygons burnt onto the prediction grid; the class comes from an integer (or class-name) field."""

    kind = "polygons"

    def __init__(self, path, grid: Grid, class_field: str | None, classes: list[ClassInfo]):
        import pyogrio
        import shapely

        self.path, self.grid = str(path), grid
        if not Path(self.path).exists():
            raise LandcoverError(f"{self.path}: reference polygons not found")
        try:
            info = pyogrio.read_info(self.path)
        except Exception as exc:
            raise LandcoverError(f"{self.path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
        fields, dtypes = list(info["fields"]), list(info["dtypes"])
        self.class_field = _pick_field(self.path, fields, class_field)
        dtype = dtypes[fields.index(self.class_field)]
        layer_crs = info.get("crs")
        if not layer_crs:
            # Without a CRS the coordinates would silently be taken as the prediction's: refuse, as export does.
            raise LandcoverError(f"{self.path}: the layer has no CRS; define one (e.g. ogr2ogr -a_srs EPSG:...)")
        from rasterio.crs import CRS

        crs = CRS.from_user_input(layer_crs)
        if grid.crs is None:
            raise LandcoverError(f"{self.path}: the prediction raster has no CRS, so these polygons cannot be placed "
                                 "on it; assign the prediction a CRS (gdal_edit.py -a_srs EPSG:...)")
        bbox = tuple(transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21))
        _, _, wkb, field_data = pyogrio.raw.read(self.path, columns=[self.class_field], bbox=bbox)
        geoms = shapely.from_wkb(wkb)
        values = _class_values(self.path, self.class_field, dtype, field_data[0], classes)
        # Class-0 polygons are kept: burnt in the file's order, they unlabel what lies under them.
        keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        geoms, values = geoms[keep], values[keep]
        if not (values != 0).any():
            raise LandcoverError(f"{self.path}: no reference polygon with a class overlaps the prediction; check "
                                 f"the field {self.class_field!r} and that both cover the same area")
        if crs != grid.crs:
            from pyproj import Transformer

            tr = Transformer.from_crs(crs.to_wkt(), grid.crs.to_wkt(), always_xy=True)
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        _check_overlap(self.path, tuple(shapely.total_bounds(geoms)), grid.crs, grid)
        self.geoms, self.values = geoms, values
        self.tree = shapely.STRtree(geoms)
        self.classes: list[ClassInfo] = []

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        import shapely
        from rasterio.features import rasterize

        h, w = int(window.height), int(window.width)
        transform = self.grid.window_transform(window)
        left, top = transform.c, transform.f
        right, bottom = transform @ (w, h)
        hits = np.sort(self.tree.query(shapely.box(min(left, right), min(top, bottom), max(left, right),
                                                   max(top, bottom))))
        if hits.size == 0:
            return np.zeros((h, w), np.int64), np.zeros((h, w), bool)
        # Sorted hits keep the file's order, so where polygons overlap the later one wins, as in a full burn.
        burnt = rasterize(zip(self.geoms[hits], self.values[hits].tolist(), strict=True), out_shape=(h, w),
                          transform=transform, fill=0, dtype="int32")
        return burnt.astype(np.int64), burnt != 0

    def close(self) -> None:
        self.tree = None


def _pick_field(path: str, fields: list[str], wanted: str | None) -> str:
    lower = {f.lower(): f for f in fields}
    if wanted is not None:
        if wanted.lower() not in lower:
            raise LandcoverError(f"{path}: field {wanted!r} not found; fields are {', '.join(fields) or 'none'}")
        return lower[wanted.lower()]
    for name in CLASS_FIELDS:
        if name in lower:
            return lower[name]
    raise LandcoverError(f"{path}: no class field found (looked for {', '.join(CLASS_FIELDS)}); name it with "
                         f"{arg('class_field')} (fields are {', '.join(fields) or 'none'})")


def _class_values(path: str, field: str, dtype: str, raw: np.ndarray, classes: list[ClassInfo]) -> np.ndarray:
    """Integer class values of a field: integers as they are, class names through the prediction's class table."""
    if np.dtype(dtype).kind in "iub":
        return np.asarray(raw, dtype=np.int64)
    if np.dtype(dtype).kind == "f":
        arr = np.asarray(raw, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)  # NULL / NaN: no class
        bad = (arr != np.round(arr)) | (np.abs(arr) > MAX_CLASS_VALUE)
        if bad.any():
            raise LandcoverError(f"{path}: field {field!r} value {arr[bad][0]:g} is not an integer class value; "
                                 "use an integer class field")
        return arr.astype(np.int64)
    by_name = {c.name.strip().lower(): c.value for c in classes}
    out = np.zeros(len(raw), dtype=np.int64)
    unknown = set()
    for i, v in enumerate(raw):
        if v is None:
            continue
        text = str(v).strip()
        if text.lstrip("-").isdigit():
            out[i] = int(text)
        elif text.lower() in by_name:
            out[i] = by_name[text.lower()]
        else:
            unknown.add(text)
    if unknown:
        raise LandcoverError(f"{path}: field {field!r} holds class names the prediction's class table does not "
                             f"know ({', '.join(sorted(unknown)[:5])}); use an integer class field")
    return out
