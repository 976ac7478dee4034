"""A print-ready PNG map with matplotlib: imagery, classes at an opacity, legend, scale bar and title."""

from __future__ import annotations

import math
from pathlib import Path

from ..raster import Grid, atomic_output
from .layers import ClassLayer, ImageryLayer


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k that is <= ``target``."""
    if target <= 0:
        return 0.0
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return m * 10**exp
    return 10**exp


def metres_per_unit(grid: Grid) -> float:
    """Ground metres per CRS unit along x at the centre of ``grid`` (1 when there is no CRS)."""
    crs = grid.crs
    if crs is None:
        return 1.0
    if crs.is_geographic:
        from ..areas import geod_for

        _, bottom, _, top = grid.bounds
        lat = (bottom + top) / 2
        return geod_for(crs).inv(0.0, lat, 1.0, lat)[2]
    return crs.linear_units_factor[1]


def pixel_aspect(grid: Grid) -> float:
    """Ground height / ground width of a pixel (non-square pixels; degrees of longitude shrink with latitude)."""
    t = grid.transform
    ratio = math.hypot(t.b, t.e) / max(math.hypot(t.a, t.d), 1e-300)
    if grid.crs is not None and grid.crs.is_geographic:
        _, bottom, _, top = grid.bounds
        ratio /= max(0.01, math.cos(math.radians((bottom + top) / 2)))
    return ratio


def scale_bar(grid: Grid, fraction: float = 0.2) -> tuple[float, str]:
    """``(length in CRS units, label)`` of a scale bar about ``fraction`` of the map's width."""
    left, _, right, _ = grid.bounds
    mpu = metres_per_unit(grid)
    metres = nice_length((right - left) * mpu * fraction)
    if grid.crs is None:
        return metres, f"{metres:g} units"
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    return metres / mpu, label


def render_png(path: Path, classes: ClassLayer, imagery: ImageryLayer | None, title: str, opacity: float,
               size: tuple[int, int], dpi: int = 100) -> dict:
    """Draw and save the map; returns what was drawn (legend texts, scale bar, size) for callers and tests."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    width, height = (int(v) for v in size)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    n = len(classes.classes)
    fontsize = 9 if n <= 14 else 7
    handles = [Patch(facecolor=[v / 255 for v in c.color], edgecolor="0.3", label=c.name) for c in classes.classes]
    legend = fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.99, 0.9), frameon=False,
                        fontsize=fontsize, title="Classes", title_fontsize=fontsize + 1, handlelength=1.2)
    # The legend keeps its natural width on the right; the map gets the rest.
    legend_w = legend.get_window_extent(fig.canvas.get_renderer()).width / width
    ax = fig.add_axes((0.02, 0.03, max(0.2, 0.95 - legend_w - 0.02), 0.87))
    left, bottom, right, top = classes.grid.bounds
    extent = (left, right, bottom, top)
    if imagery is not None:
        ax.imshow(imagery.rgba8(), extent=extent, interpolation="bilinear")
    ax.imshow(classes.rgba(opacity if imagery is not None else 1.0), extent=extent, interpolation="nearest")
    aspect = 1.0
    if classes.grid.crs is not None and classes.grid.crs.is_geographic:
        aspect = 1 / max(0.01, math.cos(math.radians((bottom + top) / 2)))  # degrees of longitude shrink
    ax.set_aspect(aspect)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xticks([])
    ax.set_yticks([])
    length, label = scale_bar(classes.grid)
    bar = AnchoredSizeBar(ax.transData, length, label, loc="lower left", pad=0.4, sep=4, frameon=True,
                          size_vertical=(top - bottom) * 0.006, fontproperties={"size": fontsize})
    bar.patch.set_alpha(0.8)
    ax.add_artist(bar)
    fig.suptitle(title, fontsize=12, y=0.97)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return {"legend": [t.get_text() for t in legend.get_texts()], "scale_bar": label, "scale_bar_length": length,
            "size": (width, height)}
