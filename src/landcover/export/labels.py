"""Label sources: a classified raster or a vector layer, read as uint8 class values on the chip grid.

Both give ``read(window) -> (h, w) uint8`` on the export grid (0 = no data) and the class names and colours they
carry. Rasters are resampled with nearest neighbour through a WarpedVRT; vector layers are reprojected once into
the grid CRS, indexed with an STRtree and rasterized window by window.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..areas import check_class_values, class_mask
from ..classes import ClassInfo, read_class_table
from ..errors import LandcoverError, arg
from ..raster import Grid, GridReader, gdal_path, open_raster

log = logging.getLogger("landcover")

#: Extensions read as vector layers; anything else is tried as a raster first.
VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite", ".gdb", ".parquet"}
#: Field names ArcGIS looks for when no class field is given (Training Samples Manager schema), case-insensitive.
CLASS_FIELDS = ("classvalue", "value")
NAME_FIELDS = ("classname", "class_name", "name")
#: Transformer error for reprojected label rasters, in output pixels. GDAL's default (0.125) interpolates the
#: reprojection along each requested window, so nearest-neighbour labels would depend on how the grid is cut into
#: windows; an exact transform makes every chip equal a read of the labels on the grid, whatever the window.
EXACT_TOLERANCE = 1e-9
#: Largest class a label chip holds (uint8; 0 is no data).
CHIP_MAX_CLASS = 255


def open_labels(path: str | os.PathLike, grid: Grid, class_field: str | None = None,
                buffer_radius: float = 0.0) -> RasterLabels | VectorLabels:
    """Open ``path`` as raster or vector labels for ``grid``; raises if it does not overlap the grid."""
    p = gdal_path(str(path))  # a URL is read through GDAL's network file systems
    if not p.startswith("/vsi") and not Path(p).exists():
        raise LandcoverError(f"{p}: labels file not found")
    if Path(p).suffix.lower() in VECTOR_SUFFIXES:
        return VectorLabels(p, grid, class_field, buffer_radius)
    try:
        with rasterio.open(p):
            pass
    except rasterio.errors.RasterioIOError:
        return VectorLabels(p, grid, class_field, buffer_radius)
    if class_field is not None:
        raise LandcoverError(f"{p}: {arg('class_field', class_field)} applies to vector labels, but this is a raster "
                             "(its pixel values are the classes)")
    return RasterLabels(p, grid)


def _check_overlap(path: str, grid: Grid, bounds: tuple[float, float, float, float]) -> None:
    if not grid.overlaps(bounds):
        raise LandcoverError(f"{path}: labels do not overlap the imagery (or the {arg('extent')}); "
                             "check both layers' CRS and extent")


def label_values(data: np.ndarray, nodata: float | None, path: str, what: str = "label value") -> np.ndarray:
    """Class values of any numeric dtype as chip values (uint8, 0 = no data).

    0, ``nodata`` (NaN included) and non-finite floats are no data. Whole values 1..255 are classes whatever the
    dtype (float32 with -99999 nodata, int16 with -32768, ...); a non-whole value is refused with the same check
    as evaluate's reference (:func:`~landcover.areas.check_class_values`), and a value chips cannot hold is
    refused rather than wrapped around into another class.
    """
    valid = class_mask(data, nodata)
    check_class_values(data, valid, path, what)
    if data.dtype != np.uint8:
        out = valid & ((data < 0) | (data > CHIP_MAX_CLASS))
        if out.any():
            raise LandcoverError(f"{path}: {what} {data[out][0]:g} is outside 0..{CHIP_MAX_CLASS} (label chips are "
                                 f"8-bit); reclassify to classes 1..{CHIP_MAX_CLASS} or set it as the raster's "
                                 "nodata")
    return np.where(valid, data, 0).astype(np.uint8)


class RasterLabels:
    """A classified raster: integer values 1..255 are classes; 0 and the raster's nodata are no data."""

    kind = "raster"

    def __init__(self, path: str, grid: Grid):
        self.path, self.grid = path, grid
        self.ds = open_raster(path, "labels")
        self._vrt = None
        try:
            if self.ds.crs is None:
                raise LandcoverError(f"{path}: labels have no CRS; assign one (gdal_edit -a_srs EPSG:...)")
            dtype = np.dtype(self.ds.dtypes[0])
            if dtype.kind not in "uif":
                raise LandcoverError(f"{path}: labels are {dtype}; class values must be integers 1..255 "
                                     "(convert with gdal_translate -ot Byte)")
            self.nodata = self.ds.nodatavals[0]
            _check_overlap(path, grid, transform_bounds(self.ds.crs, grid.crs, *self.ds.bounds, densify_pts=21))
            src = self.ds
            if self.ds.crs != grid.crs:
                kw = {} if self.nodata is None else {"src_nodata": self.nodata, "nodata": self.nodata}
                self._vrt = src = WarpedVRT(self.ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                            height=grid.height, resampling=Resampling.nearest,
                                            tolerance=EXACT_TOLERANCE, **kw)
            self.reader = GridReader(src, grid, Resampling.nearest, indexes=[1])
        except BaseException:
            self.close()
            raise

    def read(self, window: Window) -> np.ndarray:
        data, _ = self.reader.read(window, fill=0 if self.nodata is None else self.nodata, masked=False)
        return label_values(data[0], self.nodata, self.path)

    def classes(self) -> dict[int, ClassInfo]:
        """Classes named in the raster (attribute table or landcover tag), else its colour table."""
        named = {c.value: c for c in read_class_table(self.path) if c.name != str(c.value)}
        try:
            cmap = self.ds.colormap(1)
        except ValueError:
            cmap = {}
        out = {}
        for v in range(1, 256):
            if v in named:
                c = named[v]
                color = tuple(cmap[v][:3]) if v in cmap and c.color == (0, 0, 0) else c.color
                out[v] = ClassInfo(v, c.name, color)  # type: ignore[arg-type]
            elif v in cmap:
                out[v] = ClassInfo(v, str(v), tuple(cmap[v][:3]))  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
        self.ds.close()


class VectorLabels:
    """Polygons (or points and lines buffered by ``buffer_radius``) with an integer class field."""

    kind = "vector"

    def __init__(self, path: str, grid: Grid, class_field: str | None, buffer_radius: float):
        import pyogrio
        import shapely

        self.path, self.grid = path, grid
        try:
            layers = [str(name) for name, gtype in pyogrio.list_layers(path) if gtype]
            if not layers:
                raise LandcoverError(f"{path}: no layer with geometries")
            layer = layers[0]
            if len(layers) > 1:
                log.warning("%s: %d layers with geometries; using the first, %r", path, len(layers), layer)
            info = pyogrio.read_info(path, layer=layer)
        except LandcoverError:
            raise
        except Exception as exc:
            raise LandcoverError(f"{path}: not a readable raster or vector layer "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if not info.get("crs"):
            raise LandcoverError(f"{path}: the layer has no CRS; define one (e.g. ogr2ogr -a_srs EPSG:...)")
        crs = CRS.from_user_input(info["crs"])
        fields = [str(f) for f in info["fields"]]
        lower = {f.lower(): f for f in fields}
        if class_field is not None:
            field = lower.get(class_field.lower())
            if field is None:
                raise LandcoverError(f"{path}: no field {class_field!r} (fields: {', '.join(fields) or 'none'}); "
                                     f"choose one with {arg('class_field')}")
        else:
            field = next((lower[f] for f in CLASS_FIELDS if f in lower), None)
            if field is None:
                log.warning("%s: no %s and no %s field; every feature is class 1%s", path, arg("class_field"),
                            "/".join(CLASS_FIELDS),
                            f" (fields: {', '.join(fields)}; choose one with {arg('class_field')})" if fields else "")
        name_field = next((lower[f] for f in NAME_FIELDS if f in lower and lower[f] != field), None)
        columns = [f for f in (field, name_field) if f]

        # Read only the features near the grid (bbox in the layer's CRS, grown by the buffer).
        bbox = transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21)
        grow = max(float(buffer_radius), 0.0)
        bbox = (bbox[0] - grow, bbox[1] - grow, bbox[2] + grow, bbox[3] + grow)
        try:
            meta, _, wkb, field_data = pyogrio.raw.read(path, layer=layer, columns=columns, bbox=bbox)
        except Exception as exc:
            raise LandcoverError(f"{path}: cannot read the layer ({str(exc).splitlines()[0]})") from None
        # Columns come back in the layer's field order, not in the order asked for.
        by_name = dict(zip((str(f) for f in meta["fields"]), field_data, strict=True))
        geoms = shapely.from_wkb(wkb)
        if field:
            values = self._class_values(np.asarray(by_name[field]), field)
        else:
            values = np.ones(len(geoms), dtype=np.int64)
        names = by_name[name_field] if name_field else None

        keep = (values > 0) & ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
        geoms, values = geoms[keep], values[keep]
        if names is not None:
            names = np.asarray(names, dtype=object)[keep]
        if buffer_radius and buffer_radius > 0:
            # Points and lines become areas; polygons keep their outline (ArcGIS buffers point samples only).
            dims = shapely.get_dimensions(geoms)
            small = dims < 2
            geoms[small] = shapely.buffer(geoms[small], float(buffer_radius))
        if crs != grid.crs:
            geoms = _reproject(geoms, crs, grid)
        self.geoms, self.values = geoms, values.astype(np.uint8)
        self.tree = shapely.STRtree(geoms)
        self.names: dict[int, str] = {}
        if names is not None:
            for v, n in zip(self.values, names, strict=True):
                if n is not None and str(n).strip() and int(v) not in self.names:
                    self.names[int(v)] = str(n).strip()
        if len(self.tree.query(shapely.box(*grid.bounds))) == 0:
            raise LandcoverError(f"{path}: labels do not overlap the imagery (or the {arg('extent')}); "
                                 "check both layers' CRS and extent")

    def _class_values(self, raw: np.ndarray, field: str) -> np.ndarray:
        if raw.dtype.kind in "OUS":
            raw = self._parse_text(raw, field)  # e.g. a text field holding "1".."5"
        elif raw.dtype.kind not in "iuf":
            raise LandcoverError(f"{self.path}: field {field!r} is {raw.dtype}; class values must be integers")
        values = raw.astype(np.float64)
        known = np.isfinite(values)  # nulls come back as NaN: such features carry no class and are skipped
        frac = known & (values != np.round(values))
        if frac.any():
            raise LandcoverError(f"{self.path}: field {field!r} holds the non-integer value {values[frac][0]:g}; "
                                 "class values must be integers 1..255")
        out = known & ((values < 0) | (values > 255))
        if out.any():
            raise LandcoverError(f"{self.path}: field {field!r} holds {values[out][0]:g}, outside 0..255; class "
                                 "values must be 1..255 (0 = no data)")
        return np.where(known, values, 0).astype(np.int64)

    def _parse_text(self, raw: np.ndarray, field: str) -> np.ndarray:
        values = np.full(len(raw), np.nan)
        for i, text in enumerate(raw):
            if text is None or not str(text).strip():
                continue
            try:
                values[i] = float(str(text).strip())
            except ValueError:
                raise LandcoverError(f"{self.path}: field {field!r} holds {str(text)!r}, not a class value; "
                                     f"choose an integer field with {arg('class_field')}") from None
        return values

    def read(self, window: Window) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize

        h, w = int(window.height), int(window.width)
        transform = self.grid.window_transform(window)
        left, top = transform.c, transform.f
        box = shapely.box(left, top + h * transform.e, left + w * transform.a, top)
        hits = np.sort(self.tree.query(box))  # file order: later features paint over earlier ones
        if hits.size == 0:
            return np.zeros((h, w), dtype=np.uint8)
        shapes = zip(self.geoms[hits], self.values[hits].tolist(), strict=True)
        return rasterize(shapes, out_shape=(h, w), transform=transform, fill=0, dtype="uint8")

    def classes(self) -> dict[int, ClassInfo]:
        """Class names from the layer's name field (colours are left to the caller)."""
        from ..classes import generated_color

        return {v: ClassInfo(v, n, generated_color(v)) for v, n in self.names.items()}

    def close(self) -> None:
        pass


def _reproject(geoms: np.ndarray, src: CRS, grid: Grid) -> np.ndarray:
    """Geometries from ``src`` into the grid CRS, densified so straight edges can bend with the projection."""
    import shapely
    from pyproj import Transformer

    to_grid = Transformer.from_crs(src, grid.crs, always_xy=True)
    to_src = Transformer.from_crs(grid.crs, src, always_xy=True)
    # Segment length: about 16 grid cells, measured in the source CRS at the grid's centre.
    left, bottom, right, top = grid.bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    (x0, x1), (y0, y1) = to_src.transform([cx, cx + 16 * grid.res[0]], [cy, cy])
    seg = math.hypot(x1 - x0, y1 - y0)
    if math.isfinite(seg) and seg > 0:
        geoms = shapely.segmentize(geoms, seg)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = to_grid.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, project)
