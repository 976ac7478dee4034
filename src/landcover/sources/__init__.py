"""Where imagery comes from: files, band stacks, mosaics, cloud COGs and STAC Items, as one dataset.

Every step that reads imagery (export, classify, maps) takes the same forms:

- ``"scene.tif"``, a ``.vrt``, or a URL (``https://…/scene.tif``, ``s3://…``, ``gs://…``): one raster;
- ``["B4.tif", "B3.tif", "B2.tif", "B8.tif"]`` (``--imagery B4.tif B3.tif …``): band files stacked in order, every
  band of each file; they may differ in type, nodata, block layout, compression and resolution;
- :func:`mosaic` (``--mosaic``): scene tiles that together cover an area, as files, a folder or a glob;
- :func:`stac_item` (``--imagery item.json --bands red green blue nir``), or just the Item's path or URL: its
  assets chosen by key or ``eo:bands`` common name.

:func:`resolve` turns any of them into an :class:`Imagery` (what to open; it travels to Dask workers and into a
run's manifest) and :func:`open_imagery` opens it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import LandcoverError, arg
from .imagery import Imagery, stem
from .refs import BandRef

__all__ = ["BandRef", "Imagery", "Mosaic", "StacItem", "looks_like_stac_item", "mosaic", "open_imagery", "resolve",
           "stac_item"]

#: files a folder given as a mosaic contributes
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Mosaic:
    """Scene tiles to mosaic (see :func:`mosaic`)."""

    tiles: tuple[str, ...]


@dataclass(frozen=True)
class StacItem:
    """A STAC Item and the bands to take from it (see :func:`stac_item`)."""

    href: str
    bands: tuple[str, ...] | None = None


def mosaic(tiles: str | os.PathLike | Sequence[str | os.PathLike]) -> Mosaic:
    """Imagery as a mosaic of scene tiles: a list of files or URLs, a folder (its rasters, sorted by name) or a
    glob pattern (``"tiles/*.tif"``). Tiles later in the list are drawn over earlier ones where they overlap."""
    items = [tiles] if isinstance(tiles, (str, os.PathLike)) else list(tiles)
    found: list[str] = []
    for item in items:
        p = str(item)
        if any(ch in p for ch in "*?[") and not Path(p).exists():
            matches = sorted(glob.glob(p))
            if not matches:
                raise LandcoverError(f"{p}: no file matches this pattern")
            found.extend(matches)
        elif Path(p).is_dir():
            inside = sorted(str(f) for f in Path(p).iterdir() if f.suffix.lower() in RASTER_SUFFIXES)
            if not inside:
                raise LandcoverError(f"{p}: the folder holds no raster ({', '.join(RASTER_SUFFIXES)})")
            found.extend(inside)
        else:
            found.append(p)
    if not found:
        raise LandcoverError(f"{arg('mosaic')}: give at least one tile")
    return Mosaic(tuple(found))


def stac_item(href: str | os.PathLike, bands: Sequence[str] | None = None) -> StacItem:
    """Imagery from a STAC Item (a local path or URL of its JSON): the assets named by key or ``eo:bands``
    common name in ``bands``, in that order (e.g. ``["red", "green", "blue", "nir"]``); default its data
    assets."""
    return StacItem(str(href), tuple(str(b) for b in bands) if bands else None)


def resolve(spec, argument: str = "imagery", bands: Sequence[str] | None = None, raw: bool = False) -> Imagery:
    """The :class:`Imagery` that ``spec`` (any form in the module docstring) describes; ``bands`` picks a STAC
    Item's bands. ``argument``: the API argument that gave it (messages). ``raw``: read raw counts, ignoring GDAL
    scale/offset (default: physical values)."""
    if isinstance(spec, Imagery):
        return spec if spec.raw == raw else replace(spec, raw=raw)
    if isinstance(spec, Mosaic):
        _check_remote(spec.tiles)
        return Imagery("mosaic", tiles=tuple(_local_or_gdal(t) for t in spec.tiles), name=spec.tiles[0], raw=raw)
    if isinstance(spec, StacItem) or looks_like_stac_item(spec):
        from .stac import item_bands

        href = spec.href if isinstance(spec, StacItem) else str(spec)
        wanted = bands or (spec.bands if isinstance(spec, StacItem) else None)
        refs = item_bands(href, wanted)
        _check_remote([r.path for r in refs])
        return Imagery("stack", bands=tuple(refs), name=href, raw=raw)
    if bands:
        raise LandcoverError(f"{arg('bands', list(bands))}: picks the bands of a STAC Item; give the Item's JSON "
                             f"as {arg(argument)}, or give band files in order")
    items = _as_list(spec, argument)
    _check_remote(items)
    paths = [_local_or_gdal(p) for p in items]
    if len(paths) == 1:
        return Imagery("file", tiles=(paths[0],), name=items[0], raw=raw)
    refs = []
    for path, item in zip(paths, items, strict=True):
        count = _band_count(path)
        name = stem(item)
        refs.extend(BandRef(path, b, name if count == 1 else f"{name}_{b}") for b in range(1, count + 1))
    return Imagery("stack", bands=tuple(refs), name=items[0], raw=raw)


def open_imagery(spec, argument: str = "imagery", bands: Sequence[str] | None = None):
    """Open imagery given in any form :func:`resolve` takes; returns a rasterio dataset (the caller closes it)."""
    return resolve(spec, argument, bands).open()


def _as_list(spec, argument: str) -> list[str]:
    if isinstance(spec, (str, os.PathLike)):
        items = [spec]
    elif isinstance(spec, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in spec):
        items = list(spec)
    else:
        kind = type(spec).__name__
        raise LandcoverError(f"{arg(argument)}: got a {kind}; give a raster's path or URL, a list of band files, "
                             "landcover.mosaic(...) or landcover.stac_item(...) (an array has no CRS or transform: "
                             "write it to a GeoTIFF first)")
    if not items:
        raise LandcoverError(f"{arg(argument)}: give at least one raster")
    return [str(p) for p in items]


def looks_like_stac_item(spec) -> bool:
    """Whether ``spec`` is the path or URL of a STAC Item's JSON (read only when it ends in .json)."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).split("?")[0].lower().endswith(".json"):
        return False
    from .stac import is_stac_item

    return is_stac_item(str(spec))


def _maybe_remote(item: str) -> bool:
    return "://" in item or item.startswith("/vsi")


def _check_remote(items) -> None:
    """A URL that does not answer, or is not there, is one line within seconds (before any output exists)."""
    remote = [p for p in dict.fromkeys(items) if _maybe_remote(p)]
    if remote:
        from .remote import check_remote, is_remote

        for item in remote:
            if is_remote(item):
                check_remote(item)


def _local_or_gdal(item: str) -> str:
    if not _maybe_remote(item):
        return item
    from .remote import gdal_path

    return gdal_path(item)


def _band_count(path: str) -> int:
    from ..raster import open_raster

    with open_raster(path, "imagery") as ds:
        return ds.count
