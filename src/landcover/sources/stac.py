"""STAC Items as imagery: an Item's raster assets, chosen by asset key or ``eo:bands`` name, as bands to stack.

A STAC Item is the JSON a catalogue (Earth Search, Planetary Computer, a static catalogue on disk) publishes for
one scene: its assets are the scene's files, most often one COG per band, each describing its bands in
``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) with a ``name`` ("B04") and a ``common_name`` ("red").
:func:`item_bands` turns the bands a user asks for (``--bands red green blue nir``) into :class:`BandRef` s that
GDAL opens, local or remote (:mod:`.remote`). pystac parses the Item and resolves relative asset hrefs against
the Item's own location; the JSON itself is read here, with the same short timeout as every remote read.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import pystac
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from ..errors import LandcoverError
from .refs import BandRef
from .remote import REMOTE_GDAL_ENV, TIMEOUT_S, check_remote, gdal_path, open_url, remote_error

#: media types of assets GDAL reads as rasters (a missing type is judged by the href's extension)
_RASTER_TYPES = ("image/tiff", "image/jp2", "image/vnd.", "application/x-hdf", "application/x-netcdf")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
#: the largest Item JSON read (an Item is a few kB; a 100 MB "item" is a mistake, not a scene)
_MAX_JSON_BYTES = 32 * 2**20

_cache: dict[str, dict] = {}


def is_stac_item(spec: str) -> bool:
    """Whether ``spec`` is the local path or http(s) URL of a STAC Item's JSON: it ends in ``.json`` and holds a
    GeoJSON Feature with a ``stac_version``. Only ``.json`` names are read. A local ``.json`` that does not exist
    or is not JSON is not an Item (the caller reports it as imagery it cannot read); a ``.json`` URL that cannot
    be fetched raises the one-line :class:`LandcoverError` of :func:`.remote.check_remote`, since nothing else
    could read it either."""
    s = str(spec)
    path_part = s.split("?", 1)[0].split("#", 1)[0] if _is_url(s) else s
    if not path_part.lower().endswith(".json"):
        return False
    if not _is_url(s) and not os.path.isfile(s):
        return False
    try:
        doc = _load(s)
    except LandcoverError:
        if _is_url(s):
            raise
        return False
    return _is_item(doc)


def item_bands(href: str, bands: Sequence[str] | None = None) -> list[BandRef]:
    """The bands of the STAC Item at ``href`` (a local path or http(s) URL) to stack, in order.

    ``bands`` names each band by asset key (``"B04"``), ``eo:bands`` common name (``"red"``) or band name; in
    that order of precedence. A name several assets carry goes to the asset most likely meant: role ``data``
    first, then a single-band asset over a band of a multi-band one (``red`` is ``B04``, not the first band of
    the ``visual`` true-colour image), then a GeoTIFF over another format, then the Item's order. Each
    :class:`BandRef` is named as the user asked, except that the key of a multi-band asset gives all its bands,
    named as below.

    Without ``bands``: every asset with role ``data`` and a GeoTIFF media type, in the Item's order, each band of
    a multi-band asset as its own :class:`BandRef` (named by its ``eo:bands`` common name or name).

    Paths are what GDAL opens (``/vsicurl/https://…`` for a URL, :func:`.remote.gdal_path`); relative asset
    hrefs are resolved against the Item's location. Scale and offset are left to GDAL, which reads them from
    each COG.
    """
    item = _item(href)
    assets = [(key, asset) for key, asset in item.assets.items()]
    if not bands:
        refs = [ref for key, asset in assets if "data" in (asset.roles or []) and _is_tiff(asset)
                for ref in _asset_refs(href, key, asset)]
        if not refs:
            raise LandcoverError(f"{href}: the STAC Item has no GeoTIFF asset with role 'data'; name the bands "
                                 f"to use (it has: {_inventory(assets)})")
        return refs
    refs: list[BandRef] = []
    for wanted in bands:
        refs += _pick(href, assets, str(wanted))
    return refs


def _pick(href: str, assets: list[tuple[str, pystac.Asset]], wanted: str) -> list[BandRef]:
    """The band(s) ``wanted`` names: an asset key, else an ``eo:bands`` common name or name."""
    for exact in (True, False):
        for key, asset in assets:
            if key == wanted if exact else key.lower() == wanted.lower():
                if not _is_raster(asset):
                    raise LandcoverError(f"{href}: asset '{key}' is {asset.media_type or 'not a raster'}, not "
                                         f"imagery; it has: {_inventory(assets)}")
                refs = _asset_refs(href, key, asset)
                return [BandRef(refs[0].path, refs[0].band, wanted)] if len(refs) == 1 else refs
    w = wanted.lower()
    matches = [(key, asset, i, len(meta)) for key, asset in assets if _is_raster(asset)
               for i, meta in enumerate(_band_meta(asset))
               if w in (str(meta["common_name"] or "").lower(), str(meta["name"] or "").lower())]
    if not matches:
        raise LandcoverError(f"{href}: no asset or eo:bands common name '{wanted}'; it has: {_inventory(assets)}")
    order = {key: n for n, (key, _) in enumerate(assets)}
    key, asset, i, _ = min(matches, key=lambda m: ("data" not in (m[1].roles or []), m[3] > 1,
                                                   not _is_tiff(m[1]), order[m[0]]))
    return [BandRef(_asset_path(href, asset), i + 1, wanted)]


def _asset_refs(href: str, key: str, asset: pystac.Asset) -> list[BandRef]:
    """Every band of an asset: named by its eo:bands common name or name, else the key (``key.N`` for band N of
    a multi-band asset without band names)."""
    path = _asset_path(href, asset)
    meta = _band_meta(asset)
    count = len(meta) or _open_count(path, href, key)
    if count == 1:
        return [BandRef(path, 1, key)]
    meta = meta + [{"name": None, "common_name": None}] * (count - len(meta))
    names = [str(m["common_name"] or m["name"] or f"{key}.{i + 1}") for i, m in enumerate(meta[:count])]
    if len(set(names)) < count:  # names must tell the bands apart in a package
        names = [f"{key}.{i + 1}" for i in range(count)]
    return [BandRef(path, i + 1, names[i]) for i in range(count)]


def _band_meta(asset: pystac.Asset) -> list[dict[str, Any]]:
    """The asset's per-band descriptions: STAC 1.0 ``eo:bands`` or STAC 1.1 ``bands`` (``eo:common_name``), as
    dicts with ``name`` and ``common_name``."""
    fields = asset.extra_fields
    if isinstance(fields.get("eo:bands"), list):
        raw = fields["eo:bands"]
    elif isinstance(fields.get("bands"), list):
        raw = fields["bands"]
    else:
        return []
    out = []
    for b in raw:
        b = b if isinstance(b, dict) else {}
        out.append({"name": b.get("name"), "common_name": b.get("common_name") or b.get("eo:common_name")})
    return out


def _open_count(path: str, href: str, key: str) -> int:
    """The band count of an asset whose metadata does not say: opened with GDAL (a header read)."""
    check_remote(path)
    try:
        with rasterio.Env(**REMOTE_GDAL_ENV), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.count
    except RasterioIOError as exc:
        if path.startswith("/vsi"):
            raise remote_error(path, str(exc), f"asset '{key}' of {href}") from None
        raise LandcoverError(f"{path}: asset '{key}' of {href} is not a readable raster "
                             f"({str(exc).splitlines()[0]})") from None


def _asset_path(href: str, asset: pystac.Asset) -> str:
    return gdal_path(asset.get_absolute_href() or asset.href)


def _is_raster(asset: pystac.Asset) -> bool:
    mt = (asset.media_type or "").lower()
    if mt:
        return mt.startswith(_RASTER_TYPES)
    return asset.href.split("?", 1)[0].lower().endswith(_RASTER_SUFFIXES)


def _is_tiff(asset: pystac.Asset) -> bool:
    mt = (asset.media_type or "").lower()
    return mt.startswith("image/tiff") if mt else asset.href.split("?", 1)[0].lower().endswith((".tif", ".tiff"))


def _inventory(assets: list[tuple[str, pystac.Asset]]) -> str:
    """``B02 (blue), B03 (green), visual (red, green, blue)``: the raster assets and their common names."""
    parts = []
    for key, asset in assets:
        if not _is_raster(asset):
            continue
        names = [m["common_name"] or m["name"] for m in _band_meta(asset)]
        names = [str(n) for n in names if n and str(n) != key]
        parts.append(f"{key} ({', '.join(names)})" if names else key)
    return ", ".join(parts) or "no raster assets"


# -- reading the Item ------------------------------------------------------------------------------------------
def _item(href: str) -> pystac.Item:
    doc = _load(href)
    if not _is_item(doc):
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise LandcoverError(f"{href}: not a STAC Item (JSON of type {kind!r}, an Item is a 'Feature' with "
                             "'stac_version'); give the path or URL of one Item")
    location = href if _is_url(href) else os.path.abspath(href)
    try:
        return pystac.Item.from_dict(doc, href=location, migrate=True, preserve_dict=True)
    except (pystac.STACError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LandcoverError(f"{href}: not a valid STAC Item ({type(exc).__name__}: {exc})") from None


def _is_item(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("type") == "Feature" and "stac_version" in doc


def _is_url(s: str) -> bool:
    return s.lower().startswith(("http://", "https://"))


def _load(href: str) -> Any:
    """The JSON at ``href`` (local path or http(s) URL); an Item at a URL is fetched once per process."""
    if href in _cache:
        return _cache[href]
    if _is_url(href):
        text = _fetch(href)
    else:
        try:
            with open(href, "rb") as f:
                text = f.read(_MAX_JSON_BYTES + 1)
        except OSError as exc:
            raise LandcoverError(f"{href}: cannot read the STAC Item ({exc.strerror or exc})") from None
    if len(text) > _MAX_JSON_BYTES:
        raise LandcoverError(f"{href}: over {_MAX_JSON_BYTES // 2**20} MB, too large for a STAC Item")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LandcoverError(f"{href}: not JSON ({exc}); give the path or URL of a STAC Item") from None
    if _is_url(href) and _is_item(doc):  # a local file may change between calls in a notebook; a fetch costs
        _cache[href] = doc
    return doc


def _fetch(url: str) -> bytes:
    headers = {"Accept": "application/geo+json, application/json"}
    with open_url(url, "STAC Item", headers=headers) as resp:
        try:
            return resp.read(_MAX_JSON_BYTES + 1)
        except TimeoutError:
            raise LandcoverError(f"{url}: the server stopped answering within {TIMEOUT_S} s while sending the "
                                 "STAC Item; check the address or your network") from None
        except OSError as exc:
            raise LandcoverError(f"{url}: the connection failed while reading the STAC Item ({exc}); try "
                                 "again") from None
