"""Random training windows from the whole labelled area: the training chips put back together as a mosaic.

``landcover export`` (and ArcGIS) cut the labelled area into chips on a fixed grid, overlapping by the stride.
With a few dozen chips the network would see the same few dozen windows every epoch, each object always at
the same place in its chip. Georeferenced chips on one grid can be put back together, so each epoch draws new
windows anywhere in the labelled area — a window may straddle two chips — which multiplies the distinct views
of a small set for no extra labelling; a third of the windows are centred near a pixel of a class drawn
uniformly, so that rare classes are seen every epoch. The footprint of every validation chip is withheld (its
labels set to no data) in the training mosaic: overlapping chips would otherwise hand validation pixels to
training, and early stopping and the best epoch would be picked on pixels the model learned (:mod:`.split`
chooses validation chips that withhold little).

The mosaic is held in memory, so it is used for small and medium sets only (``MOSAIC_MAX_CHIPS``,
``MOSAIC_MAX_BYTES``); larger sets, chips without georeferencing (PNG/JPEG) or on different grids train on
random crops of the chips themselves, which are already varied enough there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import Dataset

from .loader import ChipDataset, read_chip, read_label
from .transforms import Transform

#: the mosaic is built for at most this many training chips
MOSAIC_MAX_CHIPS = 2000
#: and when its bounding box (imagery, labels and masks) fits in this many bytes
MOSAIC_MAX_BYTES = 1 << 30
#: random positions tried for a window before one is taken inside a random training chip
MAX_TRIES = 50
#: the share of windows drawn around a pixel of a class picked uniformly among the classes present (the rest
#: anywhere): a class with a few hundred pixels in a small set is otherwise seen in a window or two an epoch and
#: never predicted (nnU-Net oversamples foreground patches a third of the time for the same reason)
CLASS_WINDOWS = 1 / 3


@dataclass
class ChipMosaic:
    """The training chips on their common grid.

    ``image`` ``(bands, H, W)`` in the chips' pixel type (the extracted bands); ``label`` ``(H, W)`` class
    indices (0 = no data, not covered by a training chip, or withheld under a validation chip); ``nodata``
    ``(H, W)`` True where there is no imagery; ``origins`` the (row, col) of each training chip;
    ``chip_shape`` (rows, cols) of a chip; ``min_labelled`` the fraction of labelled pixels a window needs
    (half the median of the training chips', so sparse labels still give windows).
    """

    image: np.ndarray
    label: np.ndarray
    nodata: np.ndarray
    origins: list[tuple[int, int]]
    chip_shape: tuple[int, int]
    min_labelled: float


def _grid(path: Path) -> tuple[object, tuple[float, float, float, float], tuple[int, int]] | None:
    """(CRS, (left, top, xres, yres), (rows, cols)) of a north-up georeferenced chip, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            t = ds.transform
            if ds.crs is None or t.is_identity or t.b != 0 or t.d != 0 or t.e >= 0:
                return None
            return ds.crs, (t.c, t.f, t.a, -t.e), (ds.height, ds.width)


@dataclass
class ChipLayout:
    """Where chips sit on their common pixel grid: ``origins`` (row, col) of each, ``shape`` (rows, cols) of a
    chip, and the ``height`` x ``width`` of the box that holds them all."""

    origins: list[tuple[int, int]]
    shape: tuple[int, int]
    height: int
    width: int


def chip_layout(pairs: list[tuple[Path, Path]]) -> ChipLayout | None:
    """The chips' places on one pixel grid (headers only), or None when they are not all georeferenced north-up
    chips of one size, CRS and cell size on a common grid, or are more than ``MOSAIC_MAX_CHIPS``."""
    if not pairs or len(pairs) > MOSAIC_MAX_CHIPS:
        return None
    grids = [_grid(img) for img, _ in pairs]
    if any(g is None for g in grids):
        return None
    crs, (_, _, xres, yres), shape = grids[0]
    for g_crs, (_, _, xr, yr), g_shape in grids:
        if g_crs != crs or g_shape != shape or not np.isclose(xr, xres, rtol=1e-9) \
                or not np.isclose(yr, yres, rtol=1e-9):
            return None
    x0 = min(g[1][0] for g in grids)
    y0 = max(g[1][1] for g in grids)
    origins = []
    for g in grids:
        col, row = (g[1][0] - x0) / xres, (y0 - g[1][1]) / yres
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            return None  # off the common pixel grid
        origins.append((int(round(row)), int(round(col))))
    h, w = shape
    return ChipLayout(origins, shape, max(r for r, _ in origins) + h, max(c for _, c in origins) + w)


def reorder(layout: ChipLayout, pairs: list[tuple[Path, Path]], order: list[tuple[Path, Path]]) -> ChipLayout:
    """``layout`` (of ``pairs``) for the same chips listed in ``order``."""
    where = dict(zip(pairs, layout.origins, strict=True))
    return ChipLayout([where[p] for p in order], layout.shape, layout.height, layout.width)


def build_mosaic(train_pairs: list[tuple[Path, Path]], valid_pairs: list[tuple[Path, Path]], lut: np.ndarray,
                 nodata: float | None, bands: list[int], layout: ChipLayout | None = None) -> ChipMosaic | None:
    """The training chips as one mosaic with the validation footprints withheld, or None when the chips are
    not georeferenced on one grid, are too many or too far apart (see the module's note). ``layout``: the
    :func:`chip_layout` of the training then the validation chips, when the caller has it."""
    layout = layout or chip_layout(train_pairs + valid_pairs)
    if layout is None or len(train_pairs) > MOSAIC_MAX_CHIPS:
        return None
    n = len(train_pairs)
    origins, valid_origins = layout.origins[:n], layout.origins[n:]
    (h, w), height, width = layout.shape, layout.height, layout.width
    with rasterio.open(train_pairs[0][0]) as ds:
        dtype = np.dtype(ds.dtypes[0])
    if height * width * (len(bands) * dtype.itemsize + 2) > MOSAIC_MAX_BYTES:
        return None
    image = np.zeros((len(bands), height, width), dtype)
    label = np.zeros((height, width), np.uint8 if len(lut) and lut.max() < 256 else np.int16)
    missing = np.ones((height, width), bool)
    fractions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for (img, lab), (r, c) in zip(train_pairs, origins, strict=True):
            data, mask = read_chip(img, nodata, bands)
            y = lut[read_label(lab)]
            if mask is not None:
                y[mask] = 0
            image[:, r:r + h, c:c + w] = data
            label[r:r + h, c:c + w] = y
            missing[r:r + h, c:c + w] = mask if mask is not None else False
            fractions.append(float((y > 0).mean()))
    for r, c in valid_origins:
        label[r:r + h, c:c + w] = 0
    if not label.any():
        return None
    return ChipMosaic(image, label, missing, origins, layout.shape, 0.5 * float(np.median(fractions)))


class WindowDataset(Dataset):
    """Training pairs (normalized image ``float32 (C, s, s)``, class-index label ``int64 (s, s)``), each a new
    random window of the mosaic with at least ``mosaic.min_labelled`` of its pixels labelled, or (a share
    ``CLASS_WINDOWS`` of them) around a pixel of a class drawn uniformly among those present.

    ``chips``: the dataset of the training chips the mosaic was made of (normalization, augmentation and
    ``pairs`` come from it; ``show_batch`` shows its chips, as arcgis.learn); an epoch has ``length`` windows
    (default: as many as there are chips). Positions come from torch's global generator, which Lightning and the DataLoader seed per worker.
    """

    def __init__(self, mosaic: ChipMosaic, size: int, chips: ChipDataset, length: int | None = None):
        self.mosaic, self.size, self.chips = mosaic, int(size), chips
        self.length = len(chips) if length is None else int(length)
        # each class's labelled pixels (flat indices into the mosaic), for the class-centred windows
        flat = mosaic.label.ravel()
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=int(flat.max()) + 1)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.class_pixels = [order[bounds[c]:bounds[c + 1]] for c in range(1, len(counts)) if counts[c]]

    # Normalization lives in the chips' dataset, so updating it (a model's own statistics) updates both.
    @property
    def mean(self) -> np.ndarray:
        return self.chips.mean

    @mean.setter
    def mean(self, value: np.ndarray) -> None:
        self.chips.mean = value

    @property
    def std(self) -> np.ndarray:
        return self.chips.std

    @std.setter
    def std(self, value: np.ndarray) -> None:
        self.chips.std = value

    @property
    def pairs(self) -> list[tuple[Path, Path]]:
        return self.chips.pairs

    @property
    def transform(self) -> Transform | None:
        return self.chips.transform

    def __len__(self) -> int:
        return self.length

    def sample_window(self) -> tuple[int, int]:
        """(top, left) of a random window with enough labelled pixels."""
        m, s = self.mosaic, self.size
        height, width = m.label.shape
        if self.class_pixels and float(torch.rand(())) < CLASS_WINDOWS:
            pixels = self.class_pixels[int(torch.randint(0, len(self.class_pixels), ()))]
            row, col = divmod(int(pixels[int(torch.randint(0, len(pixels), ()))]), width)
            # the pixel anywhere in the window, the window inside the mosaic
            top = min(max(row - int(torch.randint(0, s, ())), 0), height - s)
            left = min(max(col - int(torch.randint(0, s, ())), 0), width - s)
            return top, left
        for _ in range(MAX_TRIES):
            top = int(torch.randint(0, height - s + 1, ()))
            left = int(torch.randint(0, width - s + 1, ()))
            if (m.label[top:top + s, left:left + s] > 0).mean() >= m.min_labelled:
                return top, left
        # Sparse labels: a window inside a training chip, where the export found labels.
        r, c = m.origins[int(torch.randint(0, len(m.origins), ()))]
        h, w = m.chip_shape
        return r + int(torch.randint(0, h - s + 1, ())), c + int(torch.randint(0, w - s + 1, ()))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.mosaic, self.size
        top, left = self.sample_window()
        x = (m.image[:, top:top + s, left:left + s].astype(np.float32) - self.mean) / self.std
        y = m.label[top:top + s, left:left + s].astype(np.int64)
        missing = m.nodata[top:top + s, left:left + s]
        if missing.any():
            x[:, missing] = 0.0  # the band mean, normalized
            y[missing] = 0
        image, label = torch.from_numpy(x), torch.from_numpy(y)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image.contiguous(), label.contiguous()

    def name(self, i: int) -> str:
        return f"random window {i} of the training chips' mosaic"
