"""Chip datasets: read an image/label chip pair, normalize, map label values to indices, crop and augment."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import Dataset

from .transforms import Transform, random_crop


def read_chip(path: Path, default_nodata: float | None = None,
              bands: list[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A chip's pixels ``(bands, h, w)`` and its nodata mask ``(h, w)`` (True = no data), or None if complete.

    A pixel is no data when every band holds the nodata value (GDAL's dataset-mask rule) or any band is NaN.
    The chip's own nodata value wins over ``default_nodata`` (the export's). ``bands``: 0-based indices of the
    chip bands to return, in order (default all). The mask is decided on all the chip's bands, as the export
    and GDAL's dataset mask (which classification reads) decide it, so a subset does not change which pixels
    are no data.
    """
    with rasterio.open(path) as ds:
        data = ds.read()
        nodata = ds.nodata if ds.nodata is not None else default_nodata
    mask = None
    if nodata is not None and not np.isnan(nodata):
        mask = np.all(data == np.asarray(nodata).astype(data.dtype), axis=0)
    if data.dtype.kind == "f":
        nan = np.isnan(data).any(axis=0)
        mask = nan if mask is None else (mask | nan)
    if bands is not None and list(bands) != list(range(data.shape[0])):
        data = data[list(bands)]
    return data, (mask if mask is not None and mask.any() else None)


def read_label(path: Path) -> np.ndarray:
    """A label chip's class values ``(h, w)``; its own nodata value (if it has one) reads as 0."""
    with rasterio.open(path) as ds:
        label = ds.read(1)
        nodata = ds.nodata
    if nodata is not None and nodata != 0 and not np.isnan(nodata):
        label = np.where(label == np.asarray(nodata).astype(label.dtype), 0, label)
    return label


class ChipDataset(Dataset):
    """Pairs of (normalized image ``float32 (C, H, W)``, class-index label ``int64 (H, W)``).

    ``lut`` maps class values to contiguous indices (0 = no data, ignored by loss and metrics). Imagery nodata
    pixels are set to the band mean before normalizing (so they read as 0) and their labels to 0.
    ``crop`` is the training chip size (a random window of the chip); validation reads whole chips.
    ``bands``: 0-based chip band indices fed to the model, in order (default all); ``mean``/``std`` describe
    those bands.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], lut: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 nodata: float | None = None, crop: int | None = None, transform: Transform | None = None,
                 bands: list[int] | None = None):
        self.pairs, self.lut, self.nodata = list(pairs), lut, nodata
        self.bands = None if bands is None else [int(b) for b in bands]
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self.crop, self.transform = crop, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lab_path = self.pairs[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            data, mask = read_chip(img_path, self.nodata, self.bands)
            y = self.lut[read_label(lab_path)]
        x = (data.astype(np.float32) - self.mean) / self.std
        if mask is not None:
            x[:, mask] = 0.0  # the band mean, normalized
            y[mask] = 0
        image, label = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        if self.crop is not None:
            image, label = random_crop(image, label, self.crop)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image.contiguous(), label.contiguous()

    def name(self, i: int) -> str:
        return os.fspath(self.pairs[i][0])
