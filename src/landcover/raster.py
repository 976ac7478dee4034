"""Raster helpers shared by every step: opening inputs, target grids, windowed reads, safe outputs.

All raster IO goes through rasterio. Inputs are opened once and read window by window; a target grid (an
extent in any CRS and a cell size) is served by a :class:`rasterio.vrt.WarpedVRT` when it differs from the
source grid and by plain window reads when it is a pixel-aligned subset of it.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL's errors (rasterio.errors does not re-export them)
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .errors import LandcoverError, NetworkError, arg

#: GDAL settings for windowed work: a 128 MiB block cache, which holds the block rows that overlapping windows
#: share (rasterio takes GDAL_CACHEMAX in bytes: a value of 512 gives a 512-byte cache, and then every
#: overlapping read decodes its blocks again, twice the decode time for classify's tiles), and no sidecar
#: listing of every file in the folder.
#: GDAL's virtual file systems that read over the network
VSI_NETWORK = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsioss/", "/vsiswift/", "/vsiadls/")
#: seconds a server may take to accept a connection or to send its next byte before a read gives up on it
TIMEOUT_S = 5

#: GDAL settings for reading COGs over HTTP and from object stores; merged into GDAL_ENV. Measured on
#: a loopback server with 30 ms added per request (``bench/bench_remote.py``, tests/http_server.py; see landcover.sources.remote):
REMOTE_GDAL_ENV: dict[str, str] = {
    # No sidecar probes: without it GDAL sends ~10 requests for .aux.xml, .ovr, .msk, ... at every open, each a
    # round trip that 404s (26 requests and 5.8 s for a windowed read, against 16 and 2.9 s).
    # CPL_VSIL_CURL_ALLOWED_EXTENSIONS is left unset: with EMPTY_DIR it saved no request, and a URL whose
    # extension is not listed (.dat, .cog, .geotiff) then fails as "does not exist" without a request sent.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Adjacent tiles in one request; parallel range requests multiplexed on one HTTP/2 connection. "2TLS" asks
    # for HTTP/2 where servers offer it (https: S3, GCS, CDNs); "2" would also send h2c upgrade headers on plain
    # http, which some proxies refuse.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2TLS",
    # Fetched bytes kept per open file (bounded: a band stack opens one handle per band file, per worker).
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),
    # Fail fast on a server that is down or hangs: connecting, and any stretch of TIMEOUT_S seconds with no byte
    # received. GDAL_HTTP_TIMEOUT bounds a whole request (curl's CURLOPT_TIMEOUT), so it must leave room for a
    # merged range of several MB on a slow link; the stall limit is what catches a silent server.
    "GDAL_HTTP_CONNECTTIMEOUT": str(TIMEOUT_S),
    "GDAL_HTTP_LOW_SPEED_TIME": str(TIMEOUT_S),
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    "GDAL_HTTP_TIMEOUT": "120",
    # A few quick retries of 429/5xx answers (object stores throttle with 503); GDAL doubles the delay each time.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
}


#: GDAL_ENV's CPL_LOG: GDAL's default error handler (threads where rasterio installed none, e.g. GDAL's own
#: worker threads and our reader threads) writes there instead of stderr; rasterio still raises the errors.
GDAL_ENV = {"CPL_LOG": os.devnull, "GDAL_CACHEMAX": 128 * 2**20, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_NUM_THREADS": "ALL_CPUS",
            **{k: v for k, v in REMOTE_GDAL_ENV.items() if k != "GDAL_DISABLE_READDIR_ON_OPEN"}}


#: URL schemes and the GDAL virtual file systems that read them
URL_SCHEMES = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/"}


def gdal_path(spec: str) -> str:
    """The path GDAL opens for ``spec``: ``https://h/k`` → ``/vsicurl/https://h/k``, ``s3://b/k`` → ``/vsis3/b/k``,
    ``gs://b/k`` → ``/vsigs/b/k``; anything else (a local path, a GDAL virtual path) unchanged."""
    s = str(spec)
    low = s.lower()
    for scheme, prefix in URL_SCHEMES.items():
        if low.startswith(scheme):
            # /vsicurl/ takes the whole URL; the object-store handlers take bucket/key
            return prefix + (s if prefix == "/vsicurl/" else s[len(scheme):])
    return s


def open_raster(path: str | os.PathLike, what: str = "raster"):
    """Open a raster for reading (a path, a GDAL virtual path or a URL: see :func:`gdal_path`), or raise a
    one-line :class:`LandcoverError` naming the file."""
    p = gdal_path(str(path))
    if not p.startswith(("/vsi", "<VRTDataset")) and not Path(p).exists():
        raise LandcoverError(f"{p}: {what} file not found")
    try:
        with warnings.catch_warnings():
            # A raster without georeferencing: callers that need a CRS say so in one line of their own.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except RasterioIOError as exc:
        raise LandcoverError(f"{p}: not a readable {what} ({str(exc).splitlines()[0]})") from None


def require_crs(ds, name: str) -> None:
    """Imagery must be georeferenced: its outputs (chips, classified rasters) carry its CRS."""
    if ds.crs is None:
        raise LandcoverError(f"{name}: imagery has no CRS; assign one (gdal_edit -a_srs EPSG:...)")


@contextlib.contextmanager
def pixel_errors(name: str, remote: bool = False) -> Iterator[None]:
    """Reading pixels of ``name``: GDAL's read errors (a truncated or corrupt file, whose header opens but whose
    pixels do not; ``remote``: a network that failed) become one line naming the file."""
    try:
        yield
    except (RasterioIOError, CPLE_BaseError) as exc:
        # GDAL's own words are in the cause ("IReadBlock failed at X offset 0, Y offset 12"); rasterio's say
        # "see previous exception".
        why = str(exc.__cause__ or exc).splitlines()[0]
        if remote:
            # A connection cut mid-read says "IReadBlock failed": the network failed, not the file. (Reader
            # threads do not see the command line's spelling: classify adds how to resume.)
            raise NetworkError(f"{name}: reading its pixels over the network failed ({why}); check your "
                               "network and run again") from None
        raise LandcoverError(f"{name}: cannot read its pixels ({why}); the file may be truncated or corrupt "
                             "(check it with gdalinfo -checksum)") from None


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in pixels (GDAL's geotransform plus dimensions)."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds) -> Grid:
        """The grid of an open dataset."""
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        t = self.transform
        xs, ys = (t.c, t.c + self.width * t.a), (t.f, t.f + self.height * t.e)
        return (min(xs), min(ys), max(xs), max(ys))

    def overlaps(self, bounds: Sequence[float]) -> bool:
        """Whether (left, bottom, right, top) bounds in the grid's CRS share any area with the grid."""
        left, bottom, right, top = self.bounds
        return bounds[0] < right and bounds[2] > left and bounds[1] < top and bounds[3] > bottom

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    def window_transform(self, window: Window) -> Affine:
        return rasterio.windows.transform(window, self.transform)

    def profile(self, **kw) -> dict:
        """A GeoTIFF profile for this grid (tiled, compressed); keyword arguments override."""
        prof = {
            "driver": "GTiff", "crs": self.crs, "transform": self.transform, "width": self.width,
            "height": self.height, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "deflate", "BIGTIFF": "IF_SAFER",
        }
        prof.update(kw)
        return prof


def parse_crs(text: str | CRS | None, argument: str = "extent_crs") -> CRS | None:
    """A CRS from 'EPSG:3857', a WKT string or a PROJ string (``argument``: the argument that gave it)."""
    if text is None or isinstance(text, CRS):
        return text
    try:
        return CRS.from_user_input(text)
    except Exception:
        raise LandcoverError(f"{arg(argument, text)}: not a CRS (use for example EPSG:3857)") from None


#: How many times finer than the source's a cell size may be (beyond, resampling only multiplies pixels).
MAX_UPSAMPLING = 10


def target_grid(
    source: Grid,
    extent: Sequence[float] | None = None,
    extent_crs: str | CRS | None = None,
    cell_size: float | Sequence[float] | None = None,
    name: str = "imagery",
) -> Grid:
    """The grid to work on: the source grid, resampled to ``cell_size`` and limited to ``extent``.

    ``extent`` is (xmin, ymin, xmax, ymax) in ``extent_crs`` (default: the source CRS); it is reprojected into the
    source CRS, intersected with the source bounds and snapped outward to whole cells of the source's grid, or,
    with ``cell_size``, of the source resampled to that cell size from its upper-left corner. Either way the result
    is a window of :func:`whole_grid` (what ArcGIS does with the input as snap raster), so grids of adjacent
    extents line up. The output CRS is always the source CRS, as in ArcGIS where extent and cell size are
    environment settings of the input.
    """
    base = whole_grid(source, cell_size, name)
    if extent is None:
        return base
    left, bottom, right, top = source.bounds
    xmin, ymin, xmax, ymax = _four_numbers(extent)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise LandcoverError(f"{arg('extent', (xmin, ymin, xmax, ymax))}: give four finite numbers")
    if xmin >= xmax or ymin >= ymax:
        raise LandcoverError(f"{arg('extent', (xmin, ymin, xmax, ymax))}: xmin must be < xmax and ymin < ymax")
    ecrs = parse_crs(extent_crs) or source.crs
    if ecrs != source.crs:
        # Clip the extent to the raster's footprint in the extent's CRS first: a large extent (the whole
        # world in degrees) cannot be projected into a local CRS such as a UTM zone.
        fxmin, fymin, fxmax, fymax = transform_bounds(source.crs, ecrs, *source.bounds, densify_pts=21)
        xmin, ymin, xmax, ymax = max(xmin, fxmin), max(ymin, fymin), min(xmax, fxmax), min(ymax, fymax)
        if xmin >= xmax or ymin >= ymax:
            raise LandcoverError(f"{name}: the extent {tuple(extent)} does not overlap the raster")
        xmin, ymin, xmax, ymax = transform_bounds(ecrs, source.crs, xmin, ymin, xmax, ymax, densify_pts=21)
    left, bottom, right, top = max(left, xmin), max(bottom, ymin), min(right, xmax), min(top, ymax)
    if left >= right or bottom >= top:
        raise LandcoverError(f"{name}: the extent {tuple(extent)} does not overlap the raster")
    # Snap outward to whole cells of the base grid.
    inv = ~base.transform
    cols, rows = zip(*(inv @ (x, y) for x, y in ((left, top), (right, bottom))), strict=True)
    c0, c1 = math.floor(min(cols) + 1e-6), math.ceil(max(cols) - 1e-6)
    r0, r1 = math.floor(min(rows) + 1e-6), math.ceil(max(rows) - 1e-6)
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, base.width), min(r1, base.height)
    c0, r0 = min(c0, base.width - 1), min(r0, base.height - 1)
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    win = Window(c0, r0, c1 - c0, r1 - r0)
    return Grid(source.crs, base.window_transform(win), int(win.width), int(win.height))


def _four_numbers(extent) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) from what the user gave, or a one-line error naming it."""
    try:
        if isinstance(extent, (str, bytes, dict)):
            raise TypeError
        values = tuple(float(v) for v in extent)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4:
        raise LandcoverError(f"{arg('extent', extent)}: give four numbers, xmin ymin xmax ymax")
    return values


def whole_grid(source: Grid, cell_size: float | Sequence[float] | None = None, name: str = "imagery") -> Grid:
    """The source grid, or the source resampled to ``cell_size`` from its upper-left corner (as many cells as
    cover it)."""
    if cell_size is None:
        return source
    csx, csy = (float(cell_size), float(cell_size)) if np.isscalar(cell_size) else map(float, cell_size)
    if not (math.isfinite(csx) and math.isfinite(csy) and csx > 0 and csy > 0):
        raise LandcoverError(f"{arg('cell_size', cell_size)}: must be a number > 0, in the units of the raster's CRS")
    own = min(abs(source.transform.a), abs(source.transform.e))
    if max(own / csx, own / csy) > MAX_UPSAMPLING:
        raise LandcoverError(f"{arg('cell_size', cell_size)}: {own / min(csx, csy):.0f} times finer than {name}'s cell size "
                             f"{own:g}, which adds no detail; give a cell size of at least {own / MAX_UPSAMPLING:g}")
    left, bottom, right, top = source.bounds
    # Enough cells to cover the raster (the last may reach past it): none of it is dropped.
    width = max(1, math.ceil((right - left) / csx - 1e-6))
    height = max(1, math.ceil((top - bottom) / csy - 1e-6))
    return Grid(source.crs, Affine(csx, 0, left, 0, -csy, top), width, height)


def grid_window(base: Grid, grid: Grid) -> tuple[int, int, int, int] | None:
    """``(row, col, base height, base width)`` when ``grid`` is a window of ``base``'s cells, else None."""
    offset = _aligned_offset(base, grid)
    if offset is None:
        return None
    col, row = offset
    if row < 0 or col < 0 or row + grid.height > base.height or col + grid.width > base.width:
        return None
    return row, col, base.height, base.width


class GridReader:
    """Reads windows of a dataset on a target grid, honouring nodata.

    A grid on the source's pixels (the same CRS, cell size and pixel corners; it may reach past the source)
    reads the source directly (fast path); any other grid goes through a WarpedVRT. Windows may extend past the
    grid, and the grid past the source: the outside is filled and marked invalid, which is much faster than
    GDAL's boundless reads.

    With ``within`` (a larger grid of which ``grid`` is a window, e.g. :func:`whole_grid`), the pixels are
    those of ``within`` (resampled on it); with ``beyond`` too, windows past ``grid``'s edges read ``within``
    there (the context beyond an extent) instead of being outside.
    """

    def __init__(self, ds, grid: Grid, resampling: Resampling = Resampling.bilinear, indexes=None,
                 within: Grid | None = None, beyond: bool = False):
        # Windows on a window of a larger grid are read on that grid (a shift), so every window of it reads the
        # same pixels whichever window of it a run covers (GDAL's warp of a window depends on the window).
        self.shift = (0, 0)
        limit = None
        if within is not None and within != grid:
            place = grid_window(within, grid)
            if place is None:
                raise ValueError("the grid is not a window of the grid it is read within")
            row, col = self.shift = place[:2]
            limit = None if beyond else (row, col, row + grid.height, col + grid.width)
            grid = within
        self.ds, self.grid = ds, grid
        # How read errors name the imagery: its file or URL (a stacked VRT's XML is no name).
        self.name = ds.name if not ds.name.lstrip().startswith("<") else "imagery"
        self.remote = any(v in ds.name for v in VSI_NETWORK)
        self.indexes = list(indexes) if indexes is not None else list(range(1, ds.count + 1))
        self.offset = _aligned_offset(Grid.of(ds), grid)
        # The part of the grid the source covers, (row0, col0, row1, col1): all of it through a WarpedVRT.
        self._covered = (0, 0, grid.height, grid.width)
        if self.offset is not None:
            col, row = self.offset
            self._covered = (max(0, -row), max(0, -col), min(grid.height, ds.height - row),
                             min(grid.width, ds.width - col))
        if limit is not None:  # the run's own grid ends the coverage
            self._covered = (max(self._covered[0], limit[0]), max(self._covered[1], limit[1]),
                             min(self._covered[2], limit[2]), min(self._covered[3], limit[3]))
        self._vrt = None
        if self.offset is None:
            kw = {}
            if ds.nodata is not None:
                kw.update(src_nodata=ds.nodata, nodata=ds.nodata)
            self._vrt = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                  height=grid.height, resampling=resampling, **kw)
        # Stacked band files: a pixel is nodata where any band is (their VRT says so; see landcover.sources).
        self.every_band = ds.tags().get("LANDCOVER_NODATA") == "any_band"
        self._mask_band = _mask_from_data(ds, self.indexes) if self._vrt is None else None
        if alpha_read_as_data(ds, self.indexes) is not None:
            # GDAL's dataset mask would come from that band: its zeros (NIR 0 over water) would become holes.
            # Nodata decides instead (any band read not nodata), or, without a nodata value, nothing does.
            self._mask_band = -1 if _nodata_comparable(ds) else NO_MASK

    @property
    def source(self):
        return self._vrt if self._vrt is not None else self.ds

    @property
    def nodata(self):
        return self.ds.nodata

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()

    def __enter__(self) -> GridReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, window: Window, fill: float = 0, masked: bool = True):
        """``(data, valid)`` for ``window`` on the grid: data (bands, h, w) and a boolean validity mask (h, w).

        Pixels outside the grid, or nodata in every band (GDAL's dataset mask), are invalid and set to ``fill``.
        """
        if self.shift != (0, 0):
            row, col = self.shift
            window = Window(window.col_off + col, window.row_off + row, window.width, window.height)
        with pixel_errors(self.name, self.remote):
            return self._read(window, fill, masked)

    def _read(self, window: Window, fill: float, masked: bool):
        h, w = int(window.height), int(window.width)
        r0, c0 = int(window.row_off), int(window.col_off)
        top, left, bottom, right = self._covered
        rr0, cc0 = max(r0, top), max(c0, left)
        rr1, cc1 = min(r0 + h, bottom), min(c0 + w, right)
        data = np.full((len(self.indexes), h, w), fill, dtype=self.ds.dtypes[0])
        valid = np.zeros((h, w), dtype=bool)
        if rr1 <= rr0 or cc1 <= cc0:
            return data, valid
        inner = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        if self.offset is not None:
            inner = Window(inner.col_off + self.offset[0], inner.row_off + self.offset[1], inner.width, inner.height)
        src = self.source
        sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
        if (rr1 - rr0, cc1 - cc0) == (h, w):  # the window is inside the grid: read straight into data
            block = src.read(self.indexes, window=inner, out=data)
        else:
            block = src.read(self.indexes, window=inner)
            data[(slice(None), *sl)] = block
        if not masked:
            valid[sl] = True
            return data, valid
        if self.every_band:
            m = every_band_valid(block, self.source.nodata)
        elif self._mask_band == NO_MASK:
            m = np.ones(block.shape[1:], bool)
        elif self._mask_band is not None:
            # The mask follows from the pixels just read: no second read (and decode) of the window.
            m = _nodata_mask(block, self.ds.nodata, self._mask_band)
        else:
            with warnings.catch_warnings():
                # A 4-band uint8 raster with a nodata value (NAIP RGBN) makes GDAL call band 4 "alpha"; nodata
                # decides the mask, which is what we want, so rasterio's warning about it is noise.
                warnings.simplefilter("ignore", NodataShadowWarning)
                m = src.dataset_mask(window=inner) > 0
        valid[sl] = m
        if not m.all():
            data[(slice(None), *sl)][:, ~m] = fill
        return data, valid


#: GridReader's mask rule for "every pixel the source covers is valid"
NO_MASK = -2


def alpha_read_as_data(ds, indexes: list[int]) -> int | None:
    """The 1-based band that GDAL tags as alpha but that is read as data (``indexes``), else None.

    rasterio writes 4-band uint8 rasters as RGBA unless told ``photometric``: NAIP's near-infrared band is then
    "alpha" to GDAL. Which bands are data is for the model package to say, not the colour interpretation.
    """
    alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == rasterio.enums.ColorInterp.alpha]
    return next((b for b in alpha if b in indexes), None)


def _nodata_comparable(ds) -> bool:
    """Whether validity can follow from comparing pixels with the nodata value (integers, one value)."""
    return (np.issubdtype(np.dtype(ds.dtypes[0]), np.integer) and ds.nodata is not None
            and len(set(ds.nodatavals)) == 1)


def every_band_valid(block: np.ndarray, nodata) -> np.ndarray:
    """Valid where no band is nodata (or NaN)."""
    if block.dtype.kind == "f":
        bad = np.isnan(block).any(axis=0)
        if nodata is not None and not math.isnan(nodata):
            bad |= (block == block.dtype.type(nodata)).any(axis=0)
        return ~bad
    info = np.iinfo(block.dtype)
    if nodata is None or not info.min <= nodata <= info.max:
        return np.ones(block.shape[1:], bool)
    return ~(block == block.dtype.type(nodata)).any(axis=0)


def _mask_from_data(ds, indexes: list[int]) -> int | None:
    """How GDAL's dataset mask follows from the bands we read, where it does: -1 when it is "any band is not
    nodata" (integer bands whose only mask is the nodata value, no alpha band, all of them read), or the
    position in ``indexes`` of the alpha band whose nodata mask GDAL uses (a 4-band byte raster with a
    nodata value); None when the mask must be read from GDAL (mask bands, alpha values, floats, a subset)."""
    if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer) or ds.nodata is None or len(set(ds.nodatavals)) > 1:
        return None  # floats (GDAL compares them its own way), no nodata, or one nodata value per band
    if any(list(flags) != [rasterio.enums.MaskFlags.nodata] for flags in ds.mask_flag_enums):
        return None
    alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == rasterio.enums.ColorInterp.alpha]
    if alpha:
        return indexes.index(alpha[0]) if alpha[0] in indexes else None
    return -1 if sorted(indexes) == list(range(1, ds.count + 1)) else None


def _nodata_mask(block: np.ndarray, nodata, band: int) -> np.ndarray:
    info = np.iinfo(block.dtype)
    if not info.min <= nodata <= info.max or nodata != int(nodata):  # a value no pixel can take
        return np.ones(block.shape[1:], bool)
    nodata = block.dtype.type(nodata)
    if band >= 0:
        return block[band] != nodata
    return (block != nodata).any(axis=0)


def _aligned_offset(src: Grid, dst: Grid) -> tuple[int, int] | None:
    """(col, row) offset of ``dst`` inside ``src`` when it is a pixel-aligned window of it, else None."""
    if src.crs != dst.crs:
        return None
    a, b = src.transform, dst.transform
    if not (math.isclose(a.a, b.a, rel_tol=1e-9) and math.isclose(a.e, b.e, rel_tol=1e-9) and a.b == b.b == 0
            and a.d == b.d == 0):
        return None
    col, row = (~a) @ (b.c, b.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(col)), int(round(row))


def iter_windows(width: int, height: int, size: int, stride: int | None = None) -> Iterator[Window]:
    """Windows of ``size`` every ``stride`` pixels covering a width x height grid, row by row.

    The last row and column are shifted inward so they end at the edge (when the grid is at least one
    window big); smaller grids get one window starting at 0 that extends past the edge.
    """
    stride = stride or size
    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, stride))
        if s[-1] + size < n:
            s.append(n - size)
        return s
    for r in starts(height):
        for c in starts(width):
            yield Window(c, r, size, size)


# --- safe outputs --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block completes.

    Nothing half-written is ever left at ``path``. Sidecars written next to the temporary file are moved along
    and renamed to match: ``<tmp>.tif.aux.xml`` / ``.ovr`` (GDAL) and ``<tmp stem>.qml`` (QGIS style).
    """
    path = Path(path)
    check_writable_dir(path.parent)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield tmp
        for side in tmp.parent.glob(glob.escape(tmp.stem) + ".*"):
            if side != tmp:
                os.replace(side, path.with_name(path.stem + side.name[len(tmp.stem):]))
        os.replace(tmp, path)
    finally:
        for leftover in tmp.parent.glob(glob.escape(tmp.stem) + ".*"):
            leftover.unlink(missing_ok=True)



def check_output(path: str | os.PathLike, suffixes: tuple[str, ...], what: str,
                 inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """``path`` as an output: a file name ending in one of ``suffixes`` (lower case, with the dot) that is not
    one of the ``inputs`` it is made from (replacing those would lose them); else a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise LandcoverError(f"{path}: is a folder; give the {what} a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        names = " or ".join(suffixes)
        raise LandcoverError(f"{path}: the {what} is written as {names}; give it a {names} name")
    for source in inputs:
        try:
            same = source is not None and path.exists() and os.path.samefile(path, source)
        except OSError:
            same = False
        if same:
            raise LandcoverError(f"{path}: the {what} would replace {source}, which it is made from; choose "
                                 "another name")
    return path


def check_writable_dir(folder: str | os.PathLike, create: bool = True) -> Path:
    """Make sure ``folder`` exists (creating it) and is writable, or raise a one-line error."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == folder else f", so the output folder {folder} cannot be made"
        raise LandcoverError(f"{blocker}: is a file, not a folder{where}; choose another output path")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".landcover-write-test"):
            pass
    except OSError as exc:
        raise LandcoverError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None
    return folder


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
