"""The embedded sample scene of ``landcover demo``: a 1 m, 4-band orthophoto and its land cover, no download.

:func:`make_scene` draws a procedural landscape (:mod:`landcover.demo.landscape`: river, lake and ponds, woods
and hedgerows, fields, a town, roads and farmsteads) as a NAIP-like R, G, B, NIR GeoTIFF in NAD83 / UTM 18N, west
of Dover, Delaware. The land-cover truth is drawn on the imagery grid at 1 m and published, as real reference
data is, on a *different* grid: Web Mercator (EPSG:3857) at 2 m, nearest-neighbour warped, 0 = no data, with the
Chesapeake Conservancy class values, names and colours. The right-most quarter is held out: :class:`Scene` gives
the training and test extents in both CRSs.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as transform_points

from ..classes import CHESAPEAKE_CLASSES, ClassInfo, write_class_table
from ..errors import LandcoverError, arg
from ..raster import Grid, atomic_output, check_writable_dir
from .landscape import MATERIAL_CLASS, render_landscape

#: Imagery CRS: NAD83 / UTM zone 18N, as NAIP over Delaware and Maryland.
SCENE_CRS = "EPSG:26918"
#: Upper-left corner of the scene: farmland west of Dover, Kent County, Delaware (Chesapeake Bay watershed).
SCENE_ORIGIN = (441000.0, 4338000.0)
#: The labels' grid: another CRS and another resolution (2 m Web Mercator is about 1.55 m on the ground here).
LABEL_CRS = "EPSG:3857"
LABEL_CELL_SIZE = 2.0
BAND_NAMES = ("Red", "Green", "Blue", "NearInfrared")
#: The Chesapeake classes that occur in the scene.
SCENE_CLASS_VALUES = (1, 3, 5, 6, 7, 9)
#: Share of the scene (on the right) that export and training never see.
TEST_FRACTION = 0.25
MIN_SIZE, MAX_SIZE = 256, 4096  # 4096² needs about 3 GB of memory


@dataclass(frozen=True)
class Scene:
    """The files and facts of a generated sample scene.

    Extents are (xmin, ymin, xmax, ymax). ``train_extent`` / ``test_extent`` split the scene at
    ``split_column``: the test block (the right-most quarter) is never seen by export or training. The
    ``*_3857`` extents are axis-aligned Web Mercator rectangles that lie inside the corresponding imagery-CRS
    extent, so an export given ``train_extent_3857`` cannot reach into the test block.
    """

    imagery: Path
    labels: Path
    truth: Path
    classes_json: Path
    metadata: Path
    classes: tuple[ClassInfo, ...]
    size: int
    seed: int
    crs: str
    label_crs: str
    label_cell_size: float
    bounds: tuple[float, float, float, float]
    split_column: int
    train_extent: tuple[float, float, float, float]
    test_extent: tuple[float, float, float, float]
    train_extent_3857: tuple[float, float, float, float]
    test_extent_3857: tuple[float, float, float, float]
    class_fractions: dict[int, float]
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready metadata (paths as strings, classes as Esri ``Value/Name/Color`` entries)."""
        d = asdict(self)
        d.update({k: str(v) for k, v in d.items() if isinstance(v, Path)})
        d["classes"] = [c.to_esri() for c in self.classes]
        d["class_fractions"] = {str(k): v for k, v in self.class_fractions.items()}
        return d


def make_scene(out_dir: str | os.PathLike, size: int = 2048, seed: int = 0) -> Scene:
    """Generate the sample scene into ``out_dir`` and return its :class:`Scene`.

    Writes ``imagery.tif`` (size x size, 1 m, 4-band uint8, EPSG:26918, tiled and compressed), ``labels.tif``
    (the land cover on the EPSG:3857 2 m grid, 0 = no data, colour table and class table), ``truth_1m.tif``
    (the same land cover on the imagery grid), ``classes.json`` and ``scene.json``.
    """
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise LandcoverError(f"{arg('size', size)}: the sample scene is {MIN_SIZE} to {MAX_SIZE} pixels a side")
    size, seed = int(size), int(seed)
    out = check_writable_dir(out_dir)
    start = time.perf_counter()
    image, truth = render_scene(size, seed)
    grid = Grid(CRS.from_user_input(SCENE_CRS), from_origin(*SCENE_ORIGIN, 1.0, 1.0), size, size)
    classes = tuple(c for c in CHESAPEAKE_CLASSES if c.value in SCENE_CLASS_VALUES)

    imagery = out / "imagery.tif"
    with atomic_output(imagery) as tmp:
        profile = grid.profile(count=4, dtype="uint8", photometric="RGB", predictor=2)
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(image)
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
            for band, name in enumerate(BAND_NAMES, start=1):
                ds.set_band_description(band, name)
            ds.update_tags(SOURCE="landcover demo: procedural sample scene", SEED=str(seed))

    truth_path = out / "truth_1m.tif"
    with atomic_output(truth_path) as tmp:
        with rasterio.open(tmp, "w", **grid.profile(count=1, dtype="uint8", nodata=0)) as ds:
            ds.write(truth, 1)
    labels = out / "labels.tif"
    label_grid = _label_grid(grid)
    with atomic_output(labels) as tmp:
        warped = np.zeros((label_grid.height, label_grid.width), dtype=np.uint8)
        reproject(truth, warped, src_transform=grid.transform, src_crs=grid.crs, dst_transform=label_grid.transform,
                  dst_crs=label_grid.crs, resampling=Resampling.nearest, dst_nodata=0)
        with rasterio.open(tmp, "w", **label_grid.profile(count=1, dtype="uint8", nodata=0)) as ds:
            ds.write(warped, 1)
    # Class tables go on the final paths: the QGIS style is named after the file, not the temporary one.
    for path in (truth_path, labels):
        write_class_table(path, list(classes))

    classes_json = out / "classes.json"
    doc = {str(c.value): {"name": c.name, "color": "#{:02x}{:02x}{:02x}".format(*c.color)} for c in classes}
    _write_text(classes_json, json.dumps(doc, indent=2) + "\n")

    split = round(size * (1 - TEST_FRACTION))
    left, top = SCENE_ORIGIN
    bounds = (left, top - size, left + size, top)
    train = (left, top - size, left + split, top)
    test = (left + split, top - size, left + size, top)
    values, counts = np.unique(truth, return_counts=True)
    scene = Scene(
        imagery=imagery, labels=labels, truth=truth_path, classes_json=classes_json, metadata=out / "scene.json",
        classes=classes, size=size, seed=seed, crs=SCENE_CRS, label_crs=LABEL_CRS,
        label_cell_size=LABEL_CELL_SIZE, bounds=bounds, split_column=split, train_extent=train, test_extent=test,
        train_extent_3857=inner_extent(train, SCENE_CRS, LABEL_CRS),
        test_extent_3857=inner_extent(test, SCENE_CRS, LABEL_CRS),
        class_fractions={int(v): round(float(c) / truth.size, 4) for v, c in zip(values, counts, strict=True)},
        seconds=round(time.perf_counter() - start, 2),
    )
    _write_text(scene.metadata, json.dumps(scene.to_dict(), indent=2) + "\n")
    return scene


def inner_extent(extent, src_crs, dst_crs, margin: float = LABEL_CELL_SIZE) -> tuple[float, float, float, float]:
    """The largest axis-aligned rectangle in ``dst_crs`` inside ``extent`` (given in ``src_crs``), less a margin.

    A plain bounding box of the reprojected extent is larger than the extent (the grids are rotated against each
    other by the meridian convergence), so reprojecting it back would leak into neighbouring areas.
    """
    xmin, ymin, xmax, ymax = extent
    xs, ys = transform_points(src_crs, dst_crs, [xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
    # Corners: 0 lower-left, 1 lower-right, 2 upper-right, 3 upper-left; edges are straight at this scale.
    return (max(xs[0], xs[3]) + margin, max(ys[0], ys[1]) + margin, min(xs[1], xs[2]) - margin,
            min(ys[2], ys[3]) - margin)


def _label_grid(grid: Grid) -> Grid:
    """The Web Mercator grid covering the scene, snapped to whole label cells."""
    left, bottom, right, top = transform_bounds(grid.crs, LABEL_CRS, *grid.bounds, densify_pts=21)
    cell = LABEL_CELL_SIZE
    left, bottom = math.floor(left / cell) * cell, math.floor(bottom / cell) * cell
    right, top = math.ceil(right / cell) * cell, math.ceil(top / cell) * cell
    return Grid(CRS.from_user_input(LABEL_CRS), from_origin(left, top, cell, cell),
                round((right - left) / cell), round((top - bottom) / cell))


def write_preview(scene: Scene, path: str | os.PathLike, max_pixels: int = 1024) -> Path:
    """A PNG quick-look of the scene: natural colour, false colour (NIR, R, G) and the published labels.

    The rasters are read decimated to at most ``max_pixels`` a side, never at full resolution.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(scene.imagery) as ds:
        m = min(max_pixels, ds.width)
        image = ds.read(out_shape=(ds.count, m, m), resampling=Resampling.average)
    with rasterio.open(scene.labels) as ds:
        scale = max(ds.width, ds.height) / min(max_pixels, max(ds.width, ds.height))
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        labels = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    lut = np.zeros((256, 4), dtype=np.uint8)
    for c in scene.classes:
        lut[c.value] = (*c.color, 255)
    fig = Figure(figsize=(16, 6), dpi=100, layout="constrained")
    panels = [(image[:3].transpose(1, 2, 0), "Natural colour (R, G, B), 1 m, EPSG:26918"),
              (image[[3, 0, 1]].transpose(1, 2, 0), "False colour (NIR, R, G)"),
              (lut[labels], f"Labels, {scene.label_cell_size:g} m, {scene.label_crs} (0 = no data)")]
    axes = fig.subplots(1, 3)
    for ax, (data, title) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    # The held-out block: training never sees the imagery right of this line.
    for ax in axes[:2]:
        ax.axvline(scene.split_column * m / scene.size, color="white", lw=1.2, ls="--")
    axes[2].legend(handles=[Patch(color=np.array(c.color) / 255, label=f"{c.value} {c.name}") for c in scene.classes],
                   loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def render_scene(size: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The scene as arrays: imagery (4, size, size) uint8 R, G, B, NIR and land cover (size, size) uint8."""
    image, materials = render_landscape(int(size), int(seed), test_column=round(size * (1 - TEST_FRACTION)))
    return image, MATERIAL_CLASS[materials]
