"""Maps of a classified raster: a static PNG (matplotlib) or a self-contained interactive HTML page.

Both read the rasters decimated to display size (from overviews when the files have them — build them with
``gdaladdo`` for rasters of several GB), so memory depends on the output size, not on the raster size.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LandcoverError, arg
from ..raster import check_output
from .layers import read_classes, read_imagery

__all__ = ["MapResult", "render_map"]


@dataclass
class MapResult:
    """What :func:`render_map` wrote: the file, its format, the legend entries and details of the drawing."""

    path: Path
    format: str
    legend: list[str]
    title: str
    details: dict = field(default_factory=dict)


def fitted_size(grid, height: int = 1000) -> tuple[int, int]:
    """A PNG size whose map area follows the raster's ground shape, with room for the legend on the right."""
    left, bottom, right, top = grid.bounds
    ratio = (right - left) / max(top - bottom, 1e-12)
    if grid.crs is not None and grid.crs.is_geographic:
        ratio *= math.cos(math.radians((bottom + top) / 2))
    map_width = 0.87 * height * ratio  # the map axes take 87 % of the height
    return int(min(2400, max(700, map_width / 0.95 + 340))), height


def render_map(classified: str | os.PathLike, imagery=None, bands: list[int] | None = None,
               out: str | os.PathLike = "map.png", title: str | None = None, opacity: float = 0.6,
               size: tuple[int, int] | None = None, max_size: int | None = None,
               clip: tuple[float, float] = (2.0, 98.0)) -> MapResult:
    """Render a classified raster, optionally over imagery, to a PNG or an interactive HTML page.

    Args:
        classified: single-band classified raster with a class table (names and colours; generated otherwise).
        imagery: raster path, or a list of single-band files stacked in order, drawn underneath.
        bands: imagery bands to show, numbered from 1 (three for red, green, blue, or one for grey);
            default 1 2 3 (or 1 for single-band imagery). Example: 4 1 2 for colour infrared from NAIP.
        out: ``.png`` for a static map, ``.html``/``.htm`` for an interactive page (works offline).
        title: map title (default: the classified file's name).
        opacity: opacity of the classes over the imagery, 0..1.
        size: PNG size in pixels (width, height); default: 1000 pixels high and as wide as the raster's shape
            plus the legend needs (a tall, narrow area does not float in white space).
        max_size: longest side of the layers read, in pixels (default: the PNG's longer side, 2048 for HTML).
        clip: percentiles of the imagery stretch.
    """
    inputs = [classified, *([imagery] if isinstance(imagery, (str, os.PathLike)) else imagery or [])]
    out = check_output(out, (".png", ".html", ".htm"), "map", inputs)
    fmt = out.suffix.lower().lstrip(".")
    if not 0.0 <= float(opacity) <= 1.0:
        raise LandcoverError(f"{arg('opacity', opacity)}: must be between 0 and 1")
    if fmt == "png" and size is not None and (len(size) != 2 or min(size) < 100 or max(size) > 20000):
        raise LandcoverError(f"{arg('size', size)}: give width and height between 100 and 20000 pixels")
    if not 0 <= clip[0] < clip[1] <= 100:
        raise LandcoverError(f"{arg('clip', clip)}: percentiles must satisfy 0 <= low < high <= 100")
    title = title if title is not None else Path(classified).stem
    limit = _max_size(max_size) or (max(size or (2000,)) if fmt == "png" else 2048)
    classes = read_classes(str(classified), limit)
    if fmt == "png" and size is None:
        size = fitted_size(classes.grid)
    layer = read_imagery(imagery, bands, classes.grid, limit, clip) if imagery else None
    if fmt == "png":
        from .static import render_png

        details = render_png(out, classes, layer, title, float(opacity), size)
    else:
        from .interactive import render_html

        details = render_html(out, classes, layer, title, float(opacity))
    return MapResult(out, "png" if fmt == "png" else "html", details["legend"], title, details)


def _max_size(value) -> int | None:
    """``max_size`` as a pixel count, or None for the default. 0 is not a quiet synonym of the default, and a
    negative or fractional size would draw a one-pixel (or rounded) map: both are refused."""
    if value is None:
        return None
    whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value) and value > 0
    if not whole:
        raise LandcoverError(f"{arg('max_size', value)}: must be a whole number greater than 0 (pixels along the "
                             "longer side of the layers drawn), or leave it out for the default")
    return int(value)
