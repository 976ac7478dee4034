"""A finished job as map layers: XYZ PNG tiles (classes in their colours, the input imagery in RGB), the class
at a point, TileJSON and WMTS capabilities — the tile maths is rio-tiler's (Web Mercator quad tiles).

Class tiles are read with nearest neighbour (class values are never blended); no data (0) is transparent.
Imagery tiles show the first three bands the model reads (R, G, B for NAIP), 8-bit as is, other types stretched
between the 2nd and 98th percentiles of an overview read.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from html import escape
from pathlib import Path

import numpy as np

from .security import ApiError

TILE = 256
#: deepest zoom served (about 2 cm per pixel): a bound on the work a request can ask for
MAX_ZOOM = 24


def _reader(path_or_dataset):
    from rio_tiler.io import Reader

    if isinstance(path_or_dataset, (str, Path)):
        return Reader(str(path_or_dataset))
    return Reader(None, dataset=path_or_dataset)


def _check_zxy(z: int, x: int, y: int) -> None:
    if not (0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z):
        raise ApiError(404, f"tile {z}/{x}/{y}: not a tile of the Web Mercator grid (zoom 0-{MAX_ZOOM})")


def class_tile(cog: Path, colormap: dict[int, tuple[int, int, int, int]], z: int, x: int, y: int) -> bytes:
    """The PNG of tile z/x/y of a classified COG, in the class colours (no data transparent)."""
    from rio_tiler.errors import TileOutsideBounds

    _check_zxy(z, x, y)
    try:
        with _reader(cog) as r:
            img = r.tile(x, y, z, tilesize=TILE, indexes=1, resampling_method="nearest",
                         reproject_method="nearest")
    except TileOutsideBounds:
        raise ApiError(404, f"tile {z}/{x}/{y}: outside the layer") from None
    return img.render(img_format="PNG", colormap=colormap)


def imagery_tile(imagery, indexes: tuple[int, ...], z: int, x: int, y: int) -> bytes:
    """The PNG of tile z/x/y of the job's input imagery (an :class:`~landcover.sources.Imagery`)."""
    from rio_tiler.errors import TileOutsideBounds

    _check_zxy(z, x, y)
    try:
        with imagery.open() as ds, _reader(ds) as r:
            img = r.tile(x, y, z, tilesize=TILE, indexes=indexes, resampling_method="bilinear",
                         reproject_method="bilinear")
            stretch = _stretch(imagery, indexes) if ds.dtypes[0] != "uint8" else None
    except TileOutsideBounds:
        raise ApiError(404, f"tile {z}/{x}/{y}: outside the layer") from None
    if stretch is not None:
        img.rescale(in_range=stretch)
    return img.render(img_format="PNG")


_STRETCH_LOCK = threading.Lock()


@lru_cache(maxsize=64)
def _stretch_of(imagery, indexes: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    with imagery.open() as ds:
        scale = max(1, max(ds.width, ds.height) // 1024)
        data = ds.read(list(indexes), out_shape=(len(indexes), max(1, ds.height // scale),
                                                 max(1, ds.width // scale)), masked=True)
    ranges = []
    for band in data:
        values = band.compressed()
        lo, hi = (np.percentile(values, (2, 98)) if values.size else (0.0, 1.0))
        ranges.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return tuple(ranges)


def _stretch(imagery, indexes):
    with _STRETCH_LOCK:
        return _stretch_of(imagery, indexes)


def value_at(cog: Path, lon: float, lat: float) -> int | None:
    """The class value at a WGS84 point (None outside the layer or on no data)."""
    from rio_tiler.errors import PointOutsideBounds

    try:
        with _reader(cog) as r:
            point = r.point(lon, lat, indexes=1)
    except PointOutsideBounds:
        return None
    value = int(point.data[0])
    masked = point.mask is not None and not bool(np.asarray(point.mask).ravel()[0])
    return None if value == 0 or masked else value


def layer_info(cog: Path) -> dict:
    """Bounds (WGS84), native zoom range of a COG."""
    with _reader(cog) as r:
        bounds = r.get_geographic_bounds(r.tms.rasterio_geographic_crs)
        return {"bounds": [float(b) for b in bounds], "minzoom": int(r.minzoom), "maxzoom": int(r.maxzoom)}


def tilejson(name: str, tiles_url: str, info: dict, description: str = "") -> dict:
    """A TileJSON 3.0 document for an XYZ layer."""
    w, s, e, n = info["bounds"]
    return {"tilejson": "3.0.0", "name": name, "description": description, "version": "1.0.0",
            "scheme": "xyz", "tiles": [tiles_url], "minzoom": 0, "maxzoom": min(MAX_ZOOM, info["maxzoom"] + 2),
            "bounds": [w, s, e, n], "center": [(w + e) / 2, (s + n) / 2, info["maxzoom"]]}


def wmts_capabilities(title: str, layers: list[tuple[str, str, str]], info: dict) -> str:
    """WMTS 1.0.0 capabilities (RESTful) for ``layers`` ``(identifier, title, url template)``, on Web Mercator
    (the GoogleMapsCompatible scale set QGIS and ArcGIS Pro know)."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    w, s, e, n = info["bounds"]
    maxzoom = min(MAX_ZOOM, info["maxzoom"] + 2)
    matrices = []
    for z in range(maxzoom + 1):
        m = tms.matrix(z)
        x0, y0 = m.pointOfOrigin
        matrices.append(
            f"<TileMatrix><ows:Identifier>{z}</ows:Identifier><ScaleDenominator>{m.scaleDenominator!r}"
            f"</ScaleDenominator><TopLeftCorner>{x0!r} {y0!r}</TopLeftCorner><TileWidth>{m.tileWidth}</TileWidth>"
            f"<TileHeight>{m.tileHeight}</TileHeight><MatrixWidth>{m.matrixWidth}</MatrixWidth>"
            f"<MatrixHeight>{m.matrixHeight}</MatrixHeight></TileMatrix>")
    layer_xml = "".join(
        f"<Layer><ows:Title>{escape(t)}</ows:Title><ows:Identifier>{escape(i)}</ows:Identifier>"
        f"<ows:WGS84BoundingBox><ows:LowerCorner>{w!r} {s!r}</ows:LowerCorner><ows:UpperCorner>{e!r} {n!r}"
        f"</ows:UpperCorner></ows:WGS84BoundingBox><Style isDefault=\"true\"><ows:Identifier>default"
        f"</ows:Identifier></Style><Format>image/png</Format><TileMatrixSetLink><TileMatrixSet>WebMercatorQuad"
        f"</TileMatrixSet></TileMatrixSetLink><ResourceURL format=\"image/png\" resourceType=\"tile\" "
        f"template=\"{escape(url)}\"/></Layer>"
        for i, t, url in layers)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'version="1.0.0">'
        f"<ows:ServiceIdentification><ows:Title>{escape(title)}</ows:Title><ows:ServiceType>OGC WMTS"
        "</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion></ows:ServiceIdentification>"
        f"<Contents>{layer_xml}<TileMatrixSet><ows:Identifier>WebMercatorQuad</ows:Identifier>"
        "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>"
        "<WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>"
        f"{''.join(matrices)}</TileMatrixSet></Contents></Capabilities>")
