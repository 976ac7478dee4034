"""The layers of a map, read at display resolution: classes (nearest) and imagery (percent-clip stretch).

Every read is a decimated read (``out_shape=`` on :meth:`DatasetReader.read`), which GDAL serves from overviews
when the file has them, so the memory used depends on the display size, not the raster size. Imagery on another
grid or CRS is read decimated around the map's extent and warped in memory onto the display grid.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from ..areas import check_class_values, check_classified, class_mask
from ..classes import ClassInfo, generated_color, read_class_table
from ..errors import LandcoverError, arg
from ..raster import Grid, open_raster
from ..sources import open_imagery


def display_grid(grid: Grid, max_size: int) -> Grid:
    """``grid``'s extent with at most ``max_size`` pixels along its longer side (never finer than ``grid``)."""
    scale = max(grid.width, grid.height) / max(1, int(max_size))
    if scale <= 1:
        return grid
    width, height = max(1, round(grid.width / scale)), max(1, round(grid.height / scale))
    t = grid.transform @ Affine.scale(grid.width / width, grid.height / height)
    return Grid(grid.crs, t, width, height)


def read_onto(ds, indexes: list[int], dst: Grid, resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
    """``(data (bands, h, w), valid (h, w))`` of ``ds`` on ``dst`` via a decimated read plus an in-memory warp."""
    src_bounds = dst.bounds
    if ds.crs is not None and dst.crs is not None and ds.crs != dst.crs:
        src_bounds = transform_bounds(dst.crs, ds.crs, *src_bounds, densify_pts=21)
    win = from_bounds(*src_bounds, transform=ds.transform)
    full = Window(0, 0, ds.width, ds.height)
    try:
        win = win.round_offsets(op="floor").round_lengths(op="ceil").intersection(full)
    except Exception:  # rasterio raises WindowError when they do not intersect
        win = None
    data = np.zeros((len(indexes), dst.height, dst.width), dtype=np.float32)
    valid = np.zeros((dst.height, dst.width), dtype=bool)
    if win is None or win.width < 1 or win.height < 1:
        return data, valid
    # Twice the display resolution is plenty for the warp below and bounds the read by the display size.
    shape = (min(int(win.height), 2 * dst.height), min(int(win.width), 2 * dst.width))
    block = ds.read(indexes, window=win, out_shape=(len(indexes), *shape), resampling=resampling)
    with warnings.catch_warnings():
        # 4-band imagery with a nodata value (NAIP RGBN) makes GDAL call band 4 "alpha"; nodata decides the
        # mask, which is what we want, so rasterio's warning about it is noise.
        warnings.simplefilter("ignore", NodataShadowWarning)
        mask = ds.dataset_mask(window=win, out_shape=shape, resampling=Resampling.nearest) > 0
    src_t = ds.window_transform(win) @ Affine.scale(win.width / shape[1], win.height / shape[0])
    kw = dict(src_transform=src_t, src_crs=ds.crs or dst.crs, dst_transform=dst.transform, dst_crs=dst.crs or ds.crs)
    for i in range(len(indexes)):
        reproject(block[i].astype(np.float32), data[i], resampling=resampling, **kw)
    warped = np.zeros((dst.height, dst.width), dtype=np.uint8)
    reproject(mask.astype(np.uint8), warped, resampling=Resampling.nearest, **kw)
    return data, warped > 0


def percent_clip(data: np.ndarray, valid: np.ndarray, clip: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """Each band stretched to 0..1 between its ``clip`` percentiles over valid pixels."""
    out = np.zeros_like(data, dtype=np.float32)
    for i, band in enumerate(data):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, clip)
        if hi <= lo:
            hi = lo + 1.0
        out[i] = np.clip((band - lo) / (hi - lo), 0.0, 1.0)
    return out


@dataclass
class ClassLayer:
    """Classes on the display grid: ``index`` (h, w) uint8, 0 = no data, i = ``classes[i - 1]``."""

    grid: Grid
    index: np.ndarray
    classes: list[ClassInfo]
    source_grid: Grid

    def rgba(self, opacity: float = 1.0) -> np.ndarray:
        """(h, w, 4) uint8 image of the classes in their colours; no data is transparent."""
        lut = np.zeros((len(self.classes) + 1, 4), dtype=np.uint8)
        for i, c in enumerate(self.classes, start=1):
            lut[i] = (*c.color, round(255 * opacity))
        return lut[self.index]


def read_classes(path: str, max_size: int) -> ClassLayer:
    """The classified raster at display size (nearest neighbour), with its class table (or generated names).

    Classes listed are the values present on the display grid, named from the raster's class table.
    """
    with open_raster(path, "classified raster") as ds:
        table = {c.value: c for c in read_class_table(path)}
        check_classified(ds, path)
        source = Grid.of(ds)
        grid = display_grid(source, max_size)
        data = ds.read(1, out_shape=(grid.height, grid.width), resampling=Resampling.nearest)
        valid = class_mask(data, ds.nodata)
        check_class_values(data, valid, path)
    values = np.unique(data[valid]).astype(np.int64)
    if values.size > 255:
        raise LandcoverError(f"{path}: more than 255 distinct classes; is this a classified raster?")
    classes = [table.get(int(v), ClassInfo(int(v), str(int(v)), generated_color(int(v)))) for v in values]
    index = np.zeros(data.shape, dtype=np.uint8)
    if values.size:
        index[valid] = (np.searchsorted(values, data[valid].astype(np.int64)) + 1).astype(np.uint8)
    return ClassLayer(grid, index, classes, source)


@dataclass
class ImageryLayer:
    """Stretched imagery on its display grid: ``rgb`` (h, w, 3) float 0..1 and ``valid`` (h, w)."""

    grid: Grid
    rgb: np.ndarray
    valid: np.ndarray
    bands: list[int]

    def rgba8(self) -> np.ndarray:
        """(h, w, 4) uint8, transparent where the imagery has no data."""
        rgba = np.zeros((*self.valid.shape, 4), dtype=np.uint8)
        rgba[..., :3] = np.round(self.rgb * 255).astype(np.uint8)
        rgba[..., 3] = np.where(self.valid, 255, 0)
        return rgba


def read_imagery(paths, bands: list[int] | None, extent: Grid, max_size: int,
                 clip: tuple[float, float] = (2.0, 98.0)) -> ImageryLayer:
    """Imagery bands over ``extent`` (the classes' grid), at its own resolution up to ``max_size`` pixels."""
    with open_imagery(paths if isinstance(paths, (list, tuple)) else [paths]) as ds:
        name = ds.name if len(str(ds.name)) < 200 else "imagery"
        bands = list(bands) if bands else ([1, 2, 3] if ds.count >= 3 else [1])
        if len(bands) not in (1, 3):
            raise LandcoverError(f"{arg('bands', bands)}: give one band (grey) or three (red green "
                                 "blue)")
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise LandcoverError(f"{name}: {arg('bands', bands)}: band{'s' if len(bad) > 1 else ''} "
                                 f"{' '.join(map(str, bad))} out of range; the imagery has "
                                 f"{ds.count} band(s), numbered from 1")
        grid = _imagery_grid(ds, extent, max_size)
        data, valid = read_onto(ds, bands, grid, Resampling.bilinear)
        if not valid.any():
            raise LandcoverError(f"{name}: the imagery has no pixels over the classified raster (they do not "
                                 "overlap, or it is all nodata there); give imagery of the same area, or leave out "
                                 f"{arg('imagery')}")
    stretched = percent_clip(data, valid, clip)
    rgb = np.repeat(stretched, 3, axis=0) if len(bands) == 1 else stretched
    return ImageryLayer(grid, np.moveaxis(rgb, 0, -1), valid, bands)


def _imagery_grid(ds, extent: Grid, max_size: int) -> Grid:
    """The extent of the class grid at the imagery's own resolution (capped at ``max_size`` pixels)."""
    left, bottom, right, top = extent.bounds
    src_res = ds.res
    if ds.crs is not None and extent.crs is not None and ds.crs != extent.crs:
        # Imagery resolution in the map's CRS: its width over its pixel count, after reprojection.
        l2, b2, r2, t2 = transform_bounds(ds.crs, extent.crs, *ds.bounds, densify_pts=21)
        src_res = ((r2 - l2) / ds.width, (t2 - b2) / ds.height)
    width = max(1, math.ceil((right - left) / src_res[0] - 1e-6))
    height = max(1, math.ceil((top - bottom) / src_res[1] - 1e-6))
    native = Grid(extent.crs, Affine((right - left) / width, 0, left, 0, -(top - bottom) / height, top), width, height)
    return display_grid(native, max_size)
