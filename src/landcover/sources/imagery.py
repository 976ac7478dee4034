"""Imagery as users hold it, opened as one dataset: a raster, band files to stack, scene tiles to mosaic.

:class:`Imagery` is a resolved description (hashable, picklable: it travels to Dask workers and into a run's
manifest); :meth:`Imagery.open` gives the rasterio dataset every step reads window by window:

- one north-up raster without scale/offset: the file itself (no VRT in the way of the fast path);
- band files (``kind="stack"``): a VRT of their bands in order, on the finest grid among them, in a common
  working type, each band's nodata honoured (see :mod:`.vrt` for the rules);
- scene tiles (``kind="mosaic"``): a VRT mosaic, tiles later in the list painted over earlier ones;
- a raster with GDAL scale/offset: a VRT reading physical values;
- a raster with a rotated geotransform or only GCPs: warped on the fly to a north-up grid (GDAL's suggested
  warp output, bilinear). Label rasters on a rotated grid are warped onto the chip grid with nearest neighbour,
  as label rasters on any other grid are; band files and mosaic tiles on one are refused in one line (warp
  them first), since a VRT places its sources on a north-up grid.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT

from ..errors import LandcoverError
from ..raster import open_raster
from .refs import BandRef
from .vrt import Source, build_vrt


@dataclass(frozen=True)
class Imagery:
    """Resolved imagery: what to open, and how (see the module docstring)."""

    kind: str  # "file", "stack" or "mosaic"
    bands: tuple[BandRef, ...] = ()  # stack: the bands in order
    tiles: tuple[str, ...] = ()  # file: one path; mosaic: the tiles
    name: str = "imagery"  # how messages name it (the first file, the item, the folder)
    #: read raw counts, ignoring GDAL scale/offset (for a model trained on integer counts: see classify)
    raw: bool = False

    @property
    def paths(self) -> list[str]:
        """Every file it reads."""
        return list(self.tiles) if self.kind != "stack" else list(dict.fromkeys(b.path for b in self.bands))

    def describe(self) -> dict:
        """A JSON-able description (a run's manifest compares it on --resume)."""
        return {"kind": self.kind, "tiles": list(self.tiles), "bands": [[b.path, b.band, b.name] for b in self.bands],
                "raw": self.raw}

    def open(self):
        """The dataset to read (a rasterio dataset, possibly over a VRT or a WarpedVRT); the caller closes it."""
        if self.kind == "file":
            return _open_file(self.tiles[0], self.name, self.raw)
        if self.kind == "stack":
            return _open_stack(self.bands, self.name, self.raw)
        return _open_mosaic(self.tiles, self.name, self.raw)


# --- one file ------------------------------------------------------------------------------------------------

def is_odd_grid(ds) -> bool:
    """A rotated (or sheared) geotransform, or only ground control points: not a north-up grid."""
    t = ds.transform
    if ds.gcps[0] and t == Affine.identity():
        return True
    return t.b != 0 or t.d != 0


def _open_file(path: str, name: str, raw: bool = False):
    ds = open_raster(path, "imagery")
    try:
        if is_odd_grid(ds):
            return _north_up(ds, path)
        if not raw and any(s != 1 or o != 0 for s, o in zip(ds.scales, ds.offsets, strict=True)):
            sources = [_source(ds, path, b) for b in range(1, ds.count + 1)]
            return _open_xml(_xml_on_own_grid(ds, [[s] for s in sources], list(ds.descriptions), False), name)
    except BaseException:
        ds.close()
        raise
    return ds


def _north_up(ds, path: str):
    """A WarpedVRT of a rotated or GCP-only raster onto GDAL's suggested north-up grid (same CRS)."""
    crs = ds.crs if ds.crs is not None else ds.gcps[1]
    if crs is None:
        raise LandcoverError(f"{path}: imagery has ground control points but no CRS; assign one "
                             "(gdal_edit -a_srs EPSG:...)")
    kw = {"src_crs": crs} if ds.crs is None else {}
    if ds.nodata is not None:
        kw.update(src_nodata=ds.nodata, nodata=ds.nodata)
    return WarpedVRT(ds, crs=crs, resampling=rasterio.enums.Resampling.bilinear, **kw)


def _source(ds, path: str, band: int, raw: bool = False) -> Source:
    nodata = ds.nodatavals[band - 1]
    scale, offset = (1.0, 0.0) if raw else (float(ds.scales[band - 1]), float(ds.offsets[band - 1]))
    return Source(path=path, band=band, width=ds.width, height=ds.height, transform=ds.transform,
                  dtype=ds.dtypes[band - 1], nodata=None if nodata is None else float(nodata), scale=scale,
                  offset=offset)


def _xml_on_own_grid(ds, bands, names, any_band: bool) -> str:
    xml, _, _ = build_vrt(ds.width, ds.height, ds.transform, ds.crs.to_wkt() if ds.crs else "", bands, names,
                          any_band=any_band)
    return xml


def _open_xml(xml: str, name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(xml)
    except rasterio.errors.RasterioIOError as exc:
        raise LandcoverError(f"{name}: cannot be read as one raster ({str(exc).splitlines()[0]})") from None


# --- band stacks ---------------------------------------------------------------------------------------------

def _open_stack(bands: tuple[BandRef, ...], name: str, raw: bool = False):
    infos = _describe_files([b.path for b in bands], "band file", raw)
    sources, names = [], []
    for ref in bands:
        info = infos[ref.path]
        if not 1 <= ref.band <= info["count"]:
            raise LandcoverError(f"{ref.path}: has {info['count']} band(s), no band {ref.band}")
        sources.append(info["sources"][ref.band - 1])
        names.append(ref.name)
    first = bands[0].path
    crs = infos[first]["crs"]
    for ref in bands[1:]:
        other = infos[ref.path]["crs"]
        if other != crs:
            raise LandcoverError(f"{ref.path} and {first}: band files are on different CRSs ({_crs_name(other)} and "
                                 f"{_crs_name(crs)}); reproject one onto the other's, e.g. gdalwarp -t_srs")
    # The finest grid among the files, over the area every band covers.
    finest = min((infos[p] for p in dict.fromkeys(b.path for b in bands)), key=lambda i: abs(i["transform"].a))
    left = max(s.bounds[0] for s in sources)
    bottom = max(s.bounds[1] for s in sources)
    right = min(s.bounds[2] for s in sources)
    top = min(s.bounds[3] for s in sources)
    if left >= right or bottom >= top:
        lone = next(r.path for r in bands if not _overlaps(infos[r.path], infos[first]))
        raise LandcoverError(f"{lone} and {first}: band files do not overlap; give files of the same area")
    width, height, transform = _snap(finest["transform"], (left, bottom, right, top))
    xml, _, _ = build_vrt(width, height, transform, crs.to_wkt(), [[s] for s in sources], names, any_band=True)
    return _open_xml(xml, name)


def _describe_files(paths, what: str, raw: bool = False) -> dict:
    """Per distinct file: CRS, transform, size, band count and its bands as VRT sources (files opened once)."""
    infos = {}
    for path in dict.fromkeys(paths):
        with open_raster(path, "imagery") as ds:
            if ds.crs is None:
                raise LandcoverError(f"{path}: {what} has no CRS; assign one (gdal_edit -a_srs EPSG:...)")
            if is_odd_grid(ds):
                raise LandcoverError(f"{path}: {what} has a rotated grid or only ground control points; warp it to "
                                     "a north-up grid first (gdalwarp -t_srs <its CRS> in.tif out.tif)")
            infos[path] = {"crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
                           "count": ds.count, "bounds": tuple(ds.bounds),
                           "sources": [_source(ds, path, b, raw) for b in range(1, ds.count + 1)],
                           "names": list(ds.descriptions)}
    return infos


def _overlaps(a: dict, b: dict) -> bool:
    (l1, b1, r1, t1), (l2, b2, r2, t2) = a["bounds"], b["bounds"]
    return l1 < r2 and l2 < r1 and b1 < t2 and b2 < t1


def _snap(ref: Affine, bounds) -> tuple[int, int, Affine]:
    """The cells of ``ref``'s grid (its cell size and corners) that cover ``bounds``."""
    left, bottom, right, top = bounds
    c0 = math.floor((left - ref.c) / ref.a + 1e-6)
    c1 = math.ceil((right - ref.c) / ref.a - 1e-6)
    r0 = math.floor((top - ref.f) / ref.e + 1e-6)
    r1 = math.ceil((bottom - ref.f) / ref.e - 1e-6)
    transform = Affine(ref.a, 0, ref.c + c0 * ref.a, 0, ref.e, ref.f + r0 * ref.e)
    return max(1, c1 - c0), max(1, r1 - r0), transform


def _crs_name(crs) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:40] if crs is not None else "none")


# --- mosaics -------------------------------------------------------------------------------------------------

def _open_mosaic(tiles: tuple[str, ...], name: str, raw: bool = False):
    infos = _describe_files(tiles, "mosaic tile", raw)
    first = tiles[0]
    ref = infos[first]
    for path in tiles[1:]:
        info = infos[path]
        if info["crs"] != ref["crs"]:
            raise LandcoverError(f"{path} and {first}: mosaic tiles are on different CRSs ({_crs_name(info['crs'])} "
                                 f"and {_crs_name(ref['crs'])}); reproject them to one CRS first (gdalwarp -t_srs)")
        if info["count"] != ref["count"]:
            raise LandcoverError(f"{path} and {first}: mosaic tiles have different band counts ({info['count']} and "
                                 f"{ref['count']}); a mosaic's tiles hold the same bands")
    finest = min(infos.values(), key=lambda i: abs(i["transform"].a))
    bounds = [i["bounds"] for i in infos.values()]
    union = (min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds),
             max(b[3] for b in bounds))
    width, height, transform = _snap(finest["transform"], union)
    covered = sum(i["width"] * i["height"] * (i["transform"].a / transform.a) ** 2 for i in infos.values())
    gaps = covered < width * height or len(tiles) > 1  # tiles rarely fill their bounding box exactly
    bands = [[infos[p]["sources"][b] for p in tiles] for b in range(ref["count"])]
    names = [n or None for n in ref["names"]]
    xml, _, _ = build_vrt(width, height, transform, ref["crs"].to_wkt(), bands, names, any_band=False, gaps=gaps)
    return _open_xml(xml, name)


def stem(path: str) -> str:
    """A band's default name: the file name without its extension (URLs and /vsi paths too)."""
    base = os.path.basename(path.split("?")[0].rstrip("/"))
    return base.split(".")[0] or base
