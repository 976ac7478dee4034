"""arcgis.learn's keyword forms, turned into the plain arguments landcover's steps take.

Notebooks written for arcgis.learn give sizes as ``{"x": 256, "y": 256}``, settings in a ``context`` dict
(``cellSize``, ``extent`` as an Esri envelope, ``exportAllTiles``, ``startIndex``, ``processorType``) and a
model's inference arguments as strings (``{"padding": "64", "predict_background": "True"}``). These helpers
translate them, and refuse in one line what landcover cannot honour, so such a notebook runs unchanged or says
exactly which argument to change.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import LandcoverError, arg, warn

#: Esri's well-known ids of Web Mercator that EPSG spells 3857.
WEB_MERCATOR_WKIDS = (102100, 102113, 900913)
#: context keys of ArcGIS's environments that only tune ArcGIS's own servers: accepted, without effect here.
NO_EFFECT_KEYS = ("parallelProcessingFactor", "scratchWorkspace", "workspace", "gpuID")
#: context keys that would change the output's grid in ways landcover does not do.
REFUSED_KEYS = {
    "outSR": "the output keeps the input's CRS; reproject the result afterwards (e.g. gdalwarp -r near)",
    "outputCoordinateSystem": "the output keeps the input's CRS; reproject the result afterwards "
                              "(e.g. gdalwarp -r near)",
    "snapRaster": "give the extent and cell size of the grid to snap to instead",
    "geographicTransformations": "landcover uses PROJ's best transformation",
}


def square_size(value: Any, name: str) -> Any:
    """A tile or stride size: an int as it is, or arcgis's ``{"x": n, "y": n}`` as ``n`` (landcover's chips
    are square, so ``x`` and ``y`` must agree)."""
    if not isinstance(value, Mapping):
        return value
    keys = {str(k).lower(): v for k, v in value.items()}
    if set(keys) != {"x", "y"}:
        raise LandcoverError(f"{name}={dict(value)}: give a number or {{'x': n, 'y': n}}")
    if _number(keys["x"], name) != _number(keys["y"], name):
        raise LandcoverError(f"{name}={dict(value)}: landcover's tiles are square; give x equal to y")
    return keys["x"]


def esri_extent(value: Any) -> tuple[tuple[float, float, float, float], str | None]:
    """``(xmin, ymin, xmax, ymax)`` and its CRS (None: the raster's) from an Esri envelope dict
    (``{"xmin": …, "spatialReference": {"wkid": 3857}}``, as arcgis's ``layer.extent``), the arcpy string
    ``"xmin ymin xmax ymax"`` or a sequence of four numbers."""
    if isinstance(value, Mapping):
        keys = {str(k).lower(): v for k, v in value.items()}
        missing = [k for k in ("xmin", "ymin", "xmax", "ymax") if k not in keys]
        if missing:
            raise LandcoverError(f"extent: the envelope lacks {', '.join(missing)}; give xmin, ymin, xmax, ymax "
                                 "(and spatialReference)")
        bounds = tuple(_number(keys[k], "extent") for k in ("xmin", "ymin", "xmax", "ymax"))
        sr = keys.get("spatialreference")
        return bounds, (esri_crs(sr) if sr else None)  # type: ignore[return-value]
    parts = value.split() if isinstance(value, str) else value
    try:
        bounds = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        bounds = ()
    if len(bounds) != 4:
        raise LandcoverError(f"extent {value!r}: give xmin, ymin, xmax, ymax (four numbers, an Esri envelope "
                             "dict or the string 'xmin ymin xmax ymax')")
    return bounds, None  # type: ignore[return-value]


def esri_crs(sr: Any) -> str:
    """A CRS string for pyproj/rasterio from an Esri spatial reference (``latestWkid``, ``wkid`` or ``wkt``);
    Esri-only ids (Web Mercator's 102100, the 5xxxx/10xxxx projections) are looked up in the ESRI authority."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if isinstance(sr, (int, str)):
        sr = {"wkid": sr}
    if not isinstance(sr, Mapping):
        raise LandcoverError(f"spatialReference {sr!r}: give {{'wkid': code}} or {{'wkt': text}}")
    keys = {str(k).lower(): v for k, v in sr.items()}
    if keys.get("wkt"):
        return str(keys["wkt"])
    code = keys.get("latestwkid") or keys.get("wkid")
    try:
        code = int(code)
    except (TypeError, ValueError):
        raise LandcoverError(f"spatialReference {dict(sr)}: give {{'wkid': code}} or {{'wkt': text}}") from None
    if code in WEB_MERCATOR_WKIDS:
        return "EPSG:3857"
    for authority in ("EPSG", "ESRI"):
        try:
            CRS.from_authority(authority, code)
            return f"{authority}:{code}"
        except CRSError:
            continue
    raise LandcoverError(f"spatialReference wkid {code}: not an EPSG or ESRI code")


def read_context(context: Mapping | None, honoured: tuple[str, ...], step: str) -> dict[str, Any]:
    """The keys of an arcgis ``context`` dict that ``step`` honours, by their arcgis names; keys that only
    tune ArcGIS servers are dropped with a warning, keys that would change the output otherwise are refused."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise LandcoverError(f"context={context!r}: give a dict such as {{'cellSize': 2, 'extent': …}}")
    out = {}
    for key, value in context.items():
        if key in honoured:
            out[key] = value
        elif key in NO_EFFECT_KEYS:
            warn(f"context['{key}'] tunes ArcGIS's servers and has no effect in landcover")
        elif key in REFUSED_KEYS:
            raise LandcoverError(f"context['{key}']: not supported by {step}; {REFUSED_KEYS[key]}")
        else:
            raise LandcoverError(f"context['{key}']: not a setting {step} knows (it honours "
                                 f"{', '.join(honoured)})")
    return out


def grid_context(ctx: Mapping, given: Mapping) -> dict[str, Any]:
    """``cell_size``, ``extent`` and ``extent_crs`` from a context's ``cellSize`` and ``extent``, merged with
    those in ``given`` (the call's arguments)."""
    out = {}
    if "cellSize" in ctx:
        out["cell_size"] = merge("cell_size", given["cell_size"], cell_size_value(ctx["cellSize"]),
                                 "context['cellSize']")
    if "extent" in ctx:
        bounds, crs = esri_extent(ctx["extent"])
        out["extent"] = merge("extent", given["extent"], bounds, "context['extent']")
        out["extent_crs"] = merge("extent_crs", given["extent_crs"], crs, "context['extent']")
    return out


_GIVEN: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("landcover_given_arguments",
                                                                               default=None)


def records_given_arguments(func: Callable) -> Callable:
    """Decorate an API step so that :func:`merge` knows which arguments its call gave by name or position: one
    given at its default value (``all_tiles=False``) still contradicts arcgis's form of it."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            names = frozenset(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:  # a wrong call: the step's own TypeError says what is wrong
            names = None
        token = _GIVEN.set(names)
        try:
            return func(*args, **kwargs)
        finally:
            _GIVEN.reset(token)

    return wrapper


def merge(name: str, given: Any, arcgis_value: Any, arcgis_name: str, stated: bool | None = None) -> Any:
    """The value of one argument given in landcover's form (``given``) and maybe in arcgis's (``arcgis_value``,
    None when absent); refused when both are given and differ. Whether the call gave ``name`` comes from
    :func:`records_given_arguments` (an argument given at its default value counts), or from ``stated`` when
    ``given`` came from another arcgis form; outside a decorated step any value but None counts as given."""
    if arcgis_value is None:
        return given
    if stated is None:
        names = _GIVEN.get()
        stated = names is None or name in names
    if given is not None and stated and not _same(given, arcgis_value):
        raise LandcoverError(f"{name}={given!r} and {arcgis_name}={arcgis_value!r}: give it once")
    return arcgis_value


def _same(a: Any, b: Any) -> bool:
    """Equal as arguments: paths by where they point, sequences by their items."""
    import os

    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


#: Keywords of arcgis.learn's export_training_data / classify_pixels that landcover accepts at their defaults
#: only, with why another value is refused.
SEED_ONLY_DEFAULTS = {
    "input_mask_polygons": (None, "clip the imagery or labels to the mask polygons first"),
    "rotation_angle": (0, "landcover augments with flips and rotations at training time (prepare_data)"),
    "reference_system": ("MAP_SPACE", "chips are always in map space"),
    "process_all_raster_items": (False, "give each raster as its own input"),
    "blacken_around_feature": (False, "it applies to Labeled_Tiles, not Classified_Tiles"),
    "fix_chip_size": (True, "it applies to Labeled_Tiles, not Classified_Tiles"),
    "additional_input_raster": (None, "change detection is not a landcover task"),
    "input_instance_data": (None, "panoptic segmentation is not a landcover task"),
    "instance_class_value_field": (None, "panoptic segmentation is not a landcover task"),
    "min_polygon_overlap_ratio": (0, "every labelled pixel is kept"),
    "future": (False, "landcover runs here and returns when done"),
    "estimate": (False, "landcover runs here; there are no credits to estimate"),
    "tiles_only": (None, "the output is a file"),
    "gis": (None, "it runs on this machine, not on an ArcGIS server; drop gis="),
}


def check_seed_only(options: dict, step: str, accepted: tuple[str, ...]) -> None:
    """Accept arcgis.learn keywords of ``step`` that landcover has no use for at their defaults; refuse other
    values, and names that are no keyword of ``step`` at all, in one line."""
    for key, value in options.items():
        if key not in accepted:
            raise LandcoverError(f"{step}() got an unexpected keyword argument {key!r}")
        default, why = SEED_ONLY_DEFAULTS[key]
        if not _same(value, default) and not (default in (0, False, None) and not value):
            raise LandcoverError(f"{key}={value!r}: not supported by landcover ({why})")


def cell_size_value(value: Any) -> float:
    """``context['cellSize']``: a number (ArcGIS's ``MAXOF``/``MINOF`` choose among several inputs; landcover
    has one grid, so they are refused)."""
    if isinstance(value, str) and value.strip().upper() in ("MAXOF", "MINOF", "MAXOFINPUTS", "MINOFINPUTS"):
        raise LandcoverError(f"context['cellSize']={value!r}: give the cell size as a number in the raster's "
                             "units (without it the imagery's own cell size is used)")
    number = _number(value, "context['cellSize']")
    if number <= 0:
        raise LandcoverError(f"context['cellSize']={value!r}: must be > 0")
    return number


def flag(value: Any, name: str) -> bool:
    """A bool from arcgis's string forms (``"True"``, ``"false"``, ``"1"``, ``"no"``…) or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "t"):
        return True
    if text in ("false", "0", "no", "n", "f", ""):
        return False
    raise LandcoverError(f"{name}={value!r}: give True or False")


def whole(value: Any, name: str) -> int:
    """An int from arcgis's string forms (``"64"``, ``"64.0"``); ``name`` is the argument that gave it: an API
    argument (``tile_size``, named as the user wrote it, see :func:`~landcover.errors.arg`) or an entry such as
    ``context['startIndex']``."""
    shown = arg(name, value) if name.isidentifier() else f"{name}={value!r}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LandcoverError(f"{shown}: give a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise LandcoverError(f"{shown}: give a whole number")
    return int(number)


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LandcoverError(f"{name}={value!r}: give a number") from None
    if not math.isfinite(number):
        raise LandcoverError(f"{name}={value!r}: give a finite number")
    return number
