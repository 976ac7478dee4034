"""How much of each class a classified raster holds: pixels, area, hectares and percent per class.

The raster is read in strips of whole rows, so any size works in bounded memory. Areas come from the pixel
size in the CRS's linear unit (metres, US survey feet, ...). A geographic CRS (degrees) or a Mercator
projection (Web Mercator's planar areas are 1/cos²(latitude) too large) gets geodesic pixel areas on the CRS's
ellipsoid (:class:`pyproj.Geod`): all pixels of a row of such a north-up grid have the same area, so one
polygon-area computation per row is exact and cheap — more useful than refusing such rasters, and more honest
than a degree² area.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from .classes import read_class_table
from .errors import LandcoverError, warn
from .raster import Grid, atomic_output, check_output, open_raster, pixel_errors

#: Pixels per strip read at once (about 8 MB per int64 work array); larger strips were no faster.
STRIP_PIXELS = 1 << 20


def strips(width: int, height: int, pixels: int | None = None):
    """Full-width windows of about ``pixels`` (default :data:`STRIP_PIXELS`) pixels, top to bottom."""
    rows = max(1, (pixels or STRIP_PIXELS) // max(1, width))
    for r in range(0, height, rows):
        yield Window(0, r, width, min(rows, height - r))


def class_mask(data: np.ndarray, nodata) -> np.ndarray:
    """Pixels that hold a class: not 0 (no data in every classified raster here), not nodata, not NaN."""
    valid = data != 0
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= data != nodata
    if data.dtype.kind == "f":
        valid &= np.isfinite(data)
    return valid


def read_band(ds, window: Window, path: str) -> np.ndarray:
    """Band 1 of ``window``; a file whose pixels cannot be read (truncated, corrupt) is one line naming it."""
    with pixel_errors(path):
        return ds.read(1, window=window)


def check_classified(ds, path: str, what: str = "classified raster") -> None:
    """Refuse what cannot be a classified raster: more than one band, or a dtype other than integer/float."""
    if ds.count != 1:
        raise LandcoverError(f"{path}: a classified raster has one band, this one has {ds.count}")
    dtype = np.dtype(ds.dtypes[0])
    if dtype.kind not in "uif":
        raise LandcoverError(f"{path}: the {what} is {dtype}; class values must be integers (0 = no data)")


#: Largest class value a float raster may hold (class values are counted as int64, colour tables stop far lower).
MAX_CLASS_VALUE = 2**31 - 1


def check_class_values(data: np.ndarray, valid: np.ndarray, path: str, what: str = "class value") -> None:
    """Refuse valid pixels of a float raster that are not whole numbers (rounding would invent classes)."""
    if data.dtype.kind != "f":
        return
    values = data[valid]
    bad = values != np.round(values)
    if bad.any():
        raise LandcoverError(f"{path}: {what} {values[bad][0]:g} is not an integer; class values must be integers "
                             "(0 or the raster's nodata = no data): reclassify the raster or set its nodata")
    big = np.abs(values) > MAX_CLASS_VALUE
    if big.any():
        raise LandcoverError(f"{path}: {what} {values[big][0]:g} is too large for a class value; reclassify the "
                             "raster or set its nodata")


def class_strips(ds, path: str):
    """``(window, band 1, pixels with a class)`` strip by strip over a classified raster, each strip read and its
    class values checked (read errors and non-whole float values are one line naming ``path``)."""
    for win in strips(ds.width, ds.height):
        data = read_band(ds, win, path)
        valid = class_mask(data, ds.nodata)
        check_class_values(data, valid, path)
        yield win, data, valid


def as_class_values(data: np.ndarray) -> np.ndarray:
    """Class values as int64 (float rasters holding whole numbers are rounded, not truncated)."""
    if data.dtype.kind == "f":
        return np.rint(np.nan_to_num(data)).astype(np.int64)
    return data.astype(np.int64, copy=False)


def sum_by_value(values: np.ndarray, weights: np.ndarray | None = None) -> dict[int, float]:
    """``{value: count or weight sum}`` of an int64 array; bincount when the values are small, else unique."""
    if values.size == 0:
        return {}
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi < 65536:
        sums = np.bincount(values, weights=weights, minlength=hi + 1)
        keys = np.flatnonzero(np.bincount(values, minlength=hi + 1))
        return {int(k): sums[k] for k in keys}
    keys, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=weights)
    return {int(k): s for k, s in zip(keys, sums, strict=True)}


class PixelAreas:
    """Area of one pixel per row of a grid: geodesic where the CRS distorts areas by row, planar otherwise.

    A geographic CRS (degrees) and the Mercator projections (Web Mercator, EPSG:3857, the CRS of web tiles,
    inflates areas by 1/cos² of the latitude: +61 % at 38°) give every pixel of a row of a north-up grid the same
    area, so one geodesic polygon area per row on the CRS's ellipsoid is exact and cheap. Other projected CRSs
    get the planar pixel area in their unit; where that is more than :data:`PLANAR_TOLERANCE` off the geodesic
    area at the grid's centre (a projection used far from its zone), an :class:`AreaWarning` says so.
    ``unit`` names what :meth:`rows` returns ("m²" for metre, geographic and Mercator CRSs, else the CRS unit
    squared); ``to_m2`` converts it to square metres.
    """

    def __init__(self, grid: Grid, what: str = "raster"):
        crs, t = grid.crs, grid.transform
        if crs is None:
            raise LandcoverError(f"{what}: the raster has no CRS, so pixel areas are unknown; assign one "
                                 "(gdal_edit.py -a_srs EPSG:...)")
        self.grid = grid
        self._cache: dict[int, float] = {}
        proj = _pyproj_crs(crs)  # parsed once for the ellipsoid, the projection method and the way to lon/lat
        self._geod = geod_for(proj)
        self._to_lonlat = None if crs.is_geographic else _lonlat_transformer(proj)
        self.per_row = bool(crs.is_geographic) or (self._to_lonlat is not False and _is_mercator(proj))
        if self.per_row:
            if t.b != 0 or t.d != 0:
                raise LandcoverError(f"{what}: rotated grids in a geographic or Mercator CRS are not supported; "
                                     "warp the raster to a north-up grid first (gdalwarp)")
            self.unit, self.to_m2, self.method = "m²", 1.0, "geodesic"
            return
        name, factor = crs.linear_units_factor
        self.constant = abs(t.a * t.e - t.b * t.d)
        self.unit = "m²" if factor == 1.0 else f"{name}²"
        self.to_m2 = factor * factor
        self.method = "planar"
        self._check_planar(what)

    def rows(self, row_start: int, nrows: int) -> np.ndarray:
        """Area of a pixel in each of ``nrows`` rows from ``row_start`` (in :attr:`unit`)."""
        if not self.per_row:
            return np.full(nrows, self.constant)
        return np.array([self._row_area(r) for r in range(row_start, row_start + nrows)])

    def mean(self) -> float:
        """The area of a pixel in the middle row (the exact area for planar CRSs)."""
        return float(self.rows(self.grid.height // 2, 1)[0])

    def _row_area(self, row: int) -> float:
        area = self._cache.get(row)
        if area is None:
            t = self.grid.transform
            area = self._geodesic_area(t.c, t.f + row * t.e, t.a, t.e)
            self._cache[row] = area
        return area

    def _geodesic_area(self, x0: float, y0: float, dx: float, dy: float) -> float:
        """Geodesic area (m²) of the north-up rectangle from (x0, y0) spanning (dx, dy) in the grid CRS."""
        lons, lats = self._lonlat(np.array([x0, x0 + dx]), np.array([y0, y0]))
        # Edges along parallels are not geodesics: densify them (every 0.1°) so wide pixels stay exact.
        n = int(min(64, max(1, math.ceil(abs(lons[1] - lons[0]) / 0.1))))
        xs = x0 + np.linspace(0.0, dx, n + 1)
        ring_x = np.concatenate([xs, xs[::-1]])
        ring_y = np.concatenate([np.full(n + 1, y0), np.full(n + 1, y0 + dy)])
        lons, lats = self._lonlat(ring_x, ring_y)
        return abs(self._geod.polygon_area_perimeter(lons, lats)[0])

    def _lonlat(self, x: np.ndarray, y: np.ndarray):
        return (x, y) if self._to_lonlat is None else self._to_lonlat.transform(x, y)

    def _check_planar(self, what: str) -> None:
        """Warn when planar areas are far from true ones at the grid's centre (a 100-pixel square there)."""
        g, t = self.grid, self.grid.transform
        k = min(100, g.width, g.height)
        x0, y0 = t @ ((g.width - k) // 2, (g.height - k) // 2)
        if self._to_lonlat is False:
            return
        try:
            true = self._geodesic_area(x0, y0, k * t.a, k * t.e) if t.b == t.d == 0 else None
        except Exception:  # a CRS PROJ cannot take to longitude/latitude: nothing to compare with
            true = None
        if not true or not math.isfinite(true):
            return
        ratio = k * k * self.constant * self.to_m2 / true
        if abs(ratio - 1) > PLANAR_TOLERANCE:
            warn(f"{what}: areas are planar in {g.crs.to_string()}, which here are {100 * (ratio - 1):+.1f} % "
                 "off the true (geodesic) area; reproject to an equal-area CRS for exact areas",
                 AreaWarning)


class ClassTally:
    """Pixels and area of each class value, added strip by strip (row by row geodesic areas where the CRS needs
    them, see :class:`PixelAreas`; pixels only when ``areas`` is None)."""

    def __init__(self, areas: PixelAreas | None):
        self.areas = areas
        self.pixels: dict[int, int] = {}
        self._area: dict[int, float] = {}

    def add(self, win: Window, values: np.ndarray, valid: np.ndarray) -> None:
        """Count ``values``, the class values of the ``valid`` pixels of strip ``win`` (in their order)."""
        for k, n in sum_by_value(values).items():
            self.pixels[k] = self.pixels.get(k, 0) + int(n)
        if self.areas is not None and self.areas.per_row:
            row_area = np.broadcast_to(self.areas.rows(int(win.row_off), int(win.height))[:, None], valid.shape)
            for k, a in sum_by_value(values, row_area[valid]).items():
                self._area[k] = self._area.get(k, 0.0) + a

    def area(self) -> dict[int, float]:
        """Area of each class, in ``areas.unit``."""
        if self.areas.per_row:
            return dict(self._area)
        return {k: n * self.areas.constant for k, n in self.pixels.items()}


class AreaWarning(UserWarning):
    """Planar areas in the raster's CRS are far from true areas (``landcover areas`` prints it in one line)."""


#: Relative difference between planar and geodesic areas above which a planar CRS is warned about.
PLANAR_TOLERANCE = 0.02


def _pyproj_crs(crs):
    """The pyproj CRS of a rasterio CRS (or a pyproj one, as it is)."""
    from pyproj import CRS as ProjCRS

    return crs if isinstance(crs, ProjCRS) else ProjCRS.from_user_input(crs.to_wkt())


def _is_mercator(proj) -> bool:
    """Normal-aspect Mercator (Web Mercator and variants A/B): area scale varies with latitude only."""
    op = proj.coordinate_operation
    name = (op.method_name if op is not None else "").lower()
    return "mercator" in name and "transverse" not in name and "oblique" not in name


def _lonlat_transformer(proj):
    """Projected coordinates → longitude, latitude on the CRS's own datum; False when PROJ has no way there
    (an engineering CRS)."""
    from pyproj import Transformer

    try:
        return Transformer.from_crs(proj, proj.geodetic_crs, always_xy=True)
    except Exception:
        return False


def geod_for(crs):
    """A :class:`pyproj.Geod` on the CRS's ellipsoid (WGS84 when the CRS names none); a rasterio or pyproj CRS."""
    from pyproj import Geod

    ell = _pyproj_crs(crs).ellipsoid
    if ell is None:
        return Geod(ellps="WGS84")
    return Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre)


@dataclass(frozen=True)
class ClassArea:
    """One row of :class:`AreaTable`."""

    value: int
    name: str
    pixels: int
    area: float
    hectares: float
    percent: float


@dataclass(frozen=True)
class AreaTable:
    """Per-class areas of a classified raster. ``area`` is in ``area_unit``; percent is of the classified area."""

    raster: str
    rows: list[ClassArea]
    area_unit: str
    method: str  # "planar" (projected CRS) or "geodesic" (geographic or Mercator CRS)

    @property
    def total_pixels(self) -> int:
        return sum(r.pixels for r in self.rows)

    @property
    def total_hectares(self) -> float:
        return sum(r.hectares for r in self.rows)

    def to_dict(self) -> dict:
        return {"raster": self.raster, "area_unit": self.area_unit, "method": self.method,
                "classes": [asdict(r) for r in self.rows]}

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``value,name,pixels,area,area_unit,hectares,percent`` (one line per class), atomically."""
        path = Path(path)
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["value", "name", "pixels", "area", "area_unit", "hectares", "percent"])
            for r in self.rows:
                w.writerow([r.value, r.name, r.pixels, f"{r.area:.4f}", self.area_unit, f"{r.hectares:.4f}",
                            f"{r.percent:.4f}"])
        return path

    def format_table(self) -> str:
        """A fixed-width table for the terminal."""
        width = max([len("class"), *(len(r.name) for r in self.rows)])
        area_head = f"area ({self.area_unit})"
        lines = [f"{'value':>5}  {'class':<{width}}  {'pixels':>12}  {area_head:>16}  {'hectares':>12}  "
                 f"{'percent':>7}"]
        for r in self.rows:
            lines.append(f"{r.value:>5}  {r.name:<{width}}  {r.pixels:>12,}  {r.area:>16,.1f}  {r.hectares:>12,.2f}  "
                         f"{r.percent:>6.2f}%")
        total_area = sum(r.area for r in self.rows)
        lines.append(f"{'':>5}  {'total':<{width}}  {self.total_pixels:>12,}  {total_area:>16,.1f}  "
                     f"{self.total_hectares:>12,.2f}  {100.0 if self.rows else 0.0:>6.2f}%")
        if self.method == "geodesic":
            lines.append("(geographic or Mercator CRS: geodesic pixel areas on the CRS ellipsoid)")
        return "\n".join(lines)


def class_areas(raster: str | os.PathLike, out: str | os.PathLike | None = None) -> AreaTable:
    """Pixels, area, hectares and percent of each class of a classified raster (nodata and 0 excluded).

    Args:
        raster: single-band classified raster (class values; 0 or the raster's nodata = no data).
        out: optional CSV path for the table.

    Returns:
        An :class:`AreaTable`; class names come from the raster's class table when it has one.
    """
    path = str(raster)
    if out is not None:
        check_output(out, (".csv",), "area table", [raster])
    with open_raster(path, "classified raster") as ds:
        check_classified(ds, path)
        grid = Grid.of(ds)
        areas = PixelAreas(grid, path)
        tally = ClassTally(areas)
        for win, data, valid in class_strips(ds, path):
            tally.add(win, as_class_values(data[valid]), valid)
    pixels, area = tally.pixels, tally.area()
    names = _names(path, pixels)
    total = sum(area.values())
    rows = [ClassArea(k, names[k], int(pixels[k]), float(area[k]), float(area[k] * areas.to_m2 / 1e4),
                      float(100.0 * area[k] / total) if total else 0.0) for k in sorted(pixels)]
    table = AreaTable(path, rows, areas.unit, areas.method)
    if out is not None:
        table.to_csv(out)
    return table


def _names(path: str, values) -> dict[int, str]:
    """Class names from the raster's class table; values it does not name are named after themselves."""
    known = {c.value: c.name for c in read_class_table(path)}
    return {int(v): known.get(int(v), str(int(v))) for v in values}
