"""``prepare_data``: Classified Tiles folders → checked, normalized, split training and validation data."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch.utils.data import DataLoader

from ..classes import ClassInfo, generated_classes
from ..errors import LandcoverError, arg, warn
from .bands import band_indices, check_rgb_bands
from .loader import ChipDataset, read_chip, read_label
from .mosaic import MOSAIC_MAX_CHIPS, WindowDataset, build_mosaic, chip_layout, reorder
from .show import rgb_band_indices
from .split import compact_split, stratified_split
from .tiles import EMD_FILE, BandStats, ExportFolder, read_export
from .transforms import Augment, Transform

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: chips sampled to compute normalization statistics when the export has none (and no ``norm_pct`` is given)
NORM_SAMPLE_CHIPS = 256
#: with ``norm_pct``, fewer training chips than this are all read (arcgis.learn forces norm_pct to 1 below 300)
NORM_PCT_ALL_BELOW = 300
#: the fewest batches of windows in an epoch (a small set's epochs are otherwise a step or two each)
MIN_WINDOW_BATCHES = 4
#: prepare_data(sampling=...): random windows of the chips' mosaic when possible, always, or the chips' own crops
SAMPLING = ("auto", "mosaic", "chips")
#: the one dataset type (export metadata format) a pixel classifier trains on
DATASET_TYPE = "Classified_Tiles"


class ExtractBandsError(LandcoverError):
    """``extract_bands`` does not fit the chips, which have ``band_count`` bands (the CLI words it in its own,
    1-based, terms)."""

    def __init__(self, message: str, band_count: int):
        super().__init__(message)
        self.band_count = band_count


@dataclass(frozen=True)
class _Header:
    bands: int
    height: int
    width: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    crs_wkt: str | None
    res: tuple[float, float] | None


class ClassifiedTilesData:
    """Training data for a pixel classifier, as returned by :func:`prepare_data`.

    Attributes: ``classes`` (list of :class:`~landcover.classes.ClassInfo`, sorted by value; model index
    ``i + 1`` is ``classes[i]``, index 0 is no data), ``c`` (model output channels = classes + 1),
    ``band_names``, ``mean``/``std`` (per model input band, raw pixel units), ``extract_bands`` (0-based
    indices of the chip bands fed to the model, in order: the package's ``ExtractBands``), ``chip_band_names``
    (all the chip bands), ``rgb_bands`` (indices into ``band_names`` shown as R, G, B), ``chip_size``
    (training crop), ``cell_size``, ``crs_wkt``, ``input_dtype``, ``nodata``, ``class_pixel_counts``
    (value → labelled pixels), ``train_ds``/``valid_ds`` and ``train_dl``/``valid_dl``.
    """

    def __init__(self, *, paths: list[Path], classes: list[ClassInfo], chip_band_names: list[str],
                 extract_bands: list[int], mean: np.ndarray, std: np.ndarray, chip_size: int,
                 export_chip_size: tuple[int, int], input_dtype: str, nodata: float | None,
                 cell_size: tuple[float, float] | None, crs_wkt: str | None, class_pixel_counts: dict[int, int],
                 train_ds: ChipDataset, valid_ds: ChipDataset, batch_size: int, num_workers: int, seed: int,
                 working_dir: Path, rgb_bands: list[int] | None = None):
        self.paths, self.path = paths, paths[0]
        self.classes = classes
        self.chip_band_names, self.extract_bands = list(chip_band_names), list(extract_bands)
        self.rgb_bands = list(rgb_bands) if rgb_bands is not None else rgb_band_indices(self.band_names)
        self.mean, self.std = mean, std
        self.chip_size, self.export_chip_size = chip_size, export_chip_size
        self.input_dtype, self.nodata = input_dtype, nodata
        self.cell_size, self.crs_wkt = cell_size, crs_wkt
        self.class_pixel_counts = class_pixel_counts
        self.train_ds, self.valid_ds = train_ds, valid_ds
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.working_dir = working_dir

    @property
    def band_names(self) -> list[str]:
        """Names of the bands the model reads (the extracted chip bands, in order)."""
        return [self.chip_band_names[b] for b in self.extract_bands]

    @property
    def c(self) -> int:
        """Model output channels: the classes plus index 0 (no data)."""
        return len(self.classes) + 1

    @property
    def index_to_value(self) -> np.ndarray:
        return np.array([0] + [c.value for c in self.classes], dtype=np.int64)

    @property
    def train_dl(self) -> DataLoader:
        # drop_last: a last batch of one chip would make BatchNorm statistics meaningless.
        return self._loader(self.train_ds, shuffle=True, drop_last=len(self.train_ds) > self.batch_size)

    @property
    def valid_dl(self) -> DataLoader:
        return self._loader(self.valid_ds, shuffle=False, drop_last=False)

    def _loader(self, ds: ChipDataset, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def show_batch(self, rows: int = 3, alpha: float = 0.7, ncols: int = 3, *,
                   rgb_bands: Sequence[int] | None = None, data_loader: str = "training",
                   imsize: float | None = None) -> Figure:
        """Random chips with their labels overlaid in the class colours (no data transparent) and a legend.

        ``rows`` x ``ncols`` panels (fewer when there are fewer chips); ``alpha``: opacity of the labels, 0..1.
        ``rgb_bands``: 3 indices into :attr:`band_names` (the extracted bands) shown as R, G, B for this call
        (default :attr:`rgb_bands`). ``data_loader``: ``"training"`` (chips cropped and augmented as the model
        sees them) or ``"validation"`` (whole validation chips, unaugmented). ``imsize``: inches per panel
        (default 3; arcgis.learn's is 5).
        """
        from .show import show_batch

        return show_batch(self, rows=rows, alpha=alpha, ncols=ncols, rgb_bands=rgb_bands,
                          data_loader=data_loader, imsize=imsize)

    def __repr__(self) -> str:
        names = ", ".join(f"{c.value}:{c.name}" for c in self.classes)
        if self.extract_bands != list(range(len(self.chip_band_names))):
            bands = (f"{len(self.band_names)} of {len(self.chip_band_names)} bands {self.band_names} "
                     f"(extract_bands={self.extract_bands})")
        else:
            bands = f"{len(self.band_names)} bands {self.band_names}"
        return (f"ClassifiedTilesData({len(self.train_ds)} training + {len(self.valid_ds)} validation chips, "
                f"{bands}, chip_size={self.chip_size}, classes [{names}])")


def window_epoch(chips: int, batch_size: int, min_batches: int = MIN_WINDOW_BATCHES) -> int:
    """Random windows in an epoch of the training mosaic: as many as there are training chips, and at least
    ``min_batches`` batches of ``batch_size``."""
    return max(int(chips), int(min_batches) * int(batch_size))


def prepare_data(path: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int = 16,
                 chip_size: int | None = None, val_split_pct: float = 0.1, seed: int = 42,
                 class_mapping: Mapping[int, str] | None = None, transforms: Transform | bool | None = None,
                 num_workers: int | None = None, working_dir: str | os.PathLike | None = None,
                 extract_bands: Sequence[int] | None = None, rgb_bands: Sequence[int] | None = None,
                 norm_pct: float | None = None, stratify: bool = False, dataset_type: str | None = None,
                 sampling: str = "auto") -> ClassifiedTilesData:
    """Read one or more Classified Tiles folders (``landcover export`` or ArcGIS Pro) into training data.

    Class values map to contiguous indices (0 = no data, ignored by the loss and the metrics); every label chip
    is checked once here, so a value outside the class list is reported with the chip that holds it. Pixels are
    z-scored per band with the export's band statistics, or statistics computed from the training chips.

    ``chip_size``: training crop (default: the exported chip size; larger values are clamped to it).
    ``class_mapping``: ``{value: name}`` renames classes. ``transforms``: None → flips/rotations and
    brightness/contrast jitter; False → none; or a callable ``(image, label) -> (image, label)``.
    ``num_workers``: DataLoader worker processes (default: 0 on a CPU, where workers compete with the model
    for cores; half the cores, at most 8, when a GPU trains). ``working_dir``: where ``models/`` goes (default:
    the parent of the first folder, as in arcgis.learn).

    The arcgis.learn keyword arguments of pixel classification:

    ``extract_bands``: 0-based indices of the chip bands to train on, in order (e.g. ``[3, 0, 1]`` from a
    4-band NAIP export: NIR, red, green); default all. ``band_names``, ``mean`` and ``std`` then describe only
    these bands, and a saved model reads these bands of the imagery it classifies (its ``ExtractBands``).
    ``rgb_bands``: 3 0-based indices **into the extracted bands** (``band_names``) that :meth:`show_batch`
    shows as R, G, B; default: the bands named red, green, blue, else the first three.
    ``norm_pct``: the fraction of training chips, in (0, 1], read to compute the normalization statistics when
    the export has none (all chips when there are fewer than 300, as in arcgis.learn); default: at most 256
    chips. ``stratify``: split by the set of class values in each chip, so each such set — and every class in
    at least 2 chips — is represented in both training and validation where possible (default: a random
    split, or with window sampling a compact block of chips that withholds at most a quarter of any class's
    pixels where it can, see :mod:`.split`); all are reproducible for a ``seed``. ``dataset_type``: None (taken from the export) or
    ``"Classified_Tiles"``, the only type a pixel classifier trains on.

    ``sampling`` (landcover's own): ``"auto"`` (default) trains on new random windows of the whole labelled
    area every epoch when the training chips are georeferenced on one grid and few enough to hold in memory
    (see :mod:`.mosaic`; validation chips' footprints are withheld from training), else on random crops of
    the chips; ``"mosaic"`` requires the windows, ``"chips"`` always uses the chips.
    """
    paths = _check_arguments(path, val_split_pct, batch_size, stratify, dataset_type, sampling)
    pct = _check_norm_pct(norm_pct)
    exports = [read_export(p) for p in paths]
    for e in exports:
        if e.missing_labels:
            warn(f"{e.path}: {e.missing_labels} image chip(s) have no label chip and are skipped")
    pairs = [pair for e in exports for pair in e.pairs]
    header, bands, counts = _scan(pairs, extract_bands)
    classes = _check_labels(_merge_classes(exports), pairs, counts, paths)
    if class_mapping:
        classes = _rename(classes, class_mapping)
    pixel_counts = _pixel_counts(classes, counts, paths)
    layout, train_pairs, valid_pairs = _split(pairs, counts, val_split_pct, sampling, stratify, seed, paths)
    if int(batch_size) > len(train_pairs):
        raise LandcoverError(f"{arg('batch_size', batch_size)} is larger than the {len(train_pairs)} training chips; "
                             "lower the batch size or export more chips")

    nodata = next((e.nodata for e in exports if e.nodata is not None), header.nodata)
    mean, std = _normalization(exports, train_pairs, header, nodata, seed, bands, pct)
    h, w = header.height, header.width
    size = min(int(chip_size), h, w) if chip_size else min(h, w)
    lut = np.zeros(max(max(c.value for c in classes), max(pixel_counts)) + 1, dtype=np.int64)
    for i, c in enumerate(classes):
        lut[c.value] = i + 1
    crop = size if (size < h or size < w) else None
    # read_chip slices only when the selection is not all bands in order
    train_ds: ChipDataset | WindowDataset = ChipDataset(train_pairs, lut, mean, std, nodata, crop=crop,
                                                        transform=_transform(transforms), bands=bands)
    if layout is not None:
        layout = reorder(layout, pairs, train_pairs + valid_pairs)
    mosaic = build_mosaic(train_pairs, valid_pairs, lut, nodata, bands, layout) if sampling != "chips" else None
    if mosaic is not None:
        # An epoch of windows is as many as there are chips, and at least MIN_WINDOW_BATCHES batches: 29 chips
        # in batches of 16 made epochs of one step, and the recipe's 100-epoch cap then stopped at 100 steps.
        train_ds = WindowDataset(mosaic, size, train_ds, window_epoch(len(train_ds), batch_size))
    elif sampling == "mosaic":
        raise LandcoverError(f"{paths[0]}: {arg('sampling', 'mosaic')} needs GeoTIFF chips on one grid, at most "
                             f"{MOSAIC_MAX_CHIPS} of them; give {arg('sampling', 'chips')} or 'auto'")
    valid_ds = ChipDataset(valid_pairs, lut, mean, std, nodata, bands=bands)
    chip_names = _band_names(exports, header)
    names = [chip_names[b] for b in bands]
    shown = rgb_band_indices(names) if rgb_bands is None else check_rgb_bands(rgb_bands, names)
    cell_size = next((e.cell_size for e in exports if e.cell_size), header.res)
    crs_wkt = next((e.crs_wkt for e in exports if e.crs_wkt), header.crs_wkt)
    return ClassifiedTilesData(
        paths=paths, classes=classes, chip_band_names=chip_names, extract_bands=bands, mean=mean, std=std,
        chip_size=size, export_chip_size=(h, w), input_dtype=header.dtype, nodata=nodata, cell_size=cell_size,
        crs_wkt=crs_wkt, class_pixel_counts={c.value: pixel_counts.get(c.value, 0) for c in classes},
        train_ds=train_ds, valid_ds=valid_ds, batch_size=int(batch_size),
        num_workers=default_num_workers() if num_workers is None else int(num_workers), seed=seed,
        working_dir=Path(working_dir) if working_dir else paths[0].resolve().parent,
        rgb_bands=shown,
    )


def _check_arguments(path, val_split_pct, batch_size, stratify, dataset_type, sampling) -> list[Path]:
    """prepare_data's arguments that need no chip read; returns the folders."""
    _check_dataset_type(dataset_type)
    if sampling not in SAMPLING:
        raise LandcoverError(f"{arg('sampling', sampling)}: choose one of {', '.join(SAMPLING)}")
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths:
        raise LandcoverError("prepare_data: give at least one training data folder")
    if not 0 < val_split_pct < 1:
        raise LandcoverError(f"{arg('val_split_pct', val_split_pct)}: give a fraction between 0 and 1 (e.g. 0.1)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or int(batch_size) < 1:
        raise LandcoverError(f"{arg('batch_size', batch_size)}: give a positive number of chips per batch")
    if not isinstance(stratify, (bool, np.bool_)):
        raise LandcoverError(f"{arg('stratify', stratify)}: give True (a split stratified by the classes in each chip) "
                             "or False (a random split)")
    return paths


def _scan(pairs: list, extract_bands) -> tuple:
    """Every chip's header and label counts, checked alike: ``(header, bands to train on, counts per chip)``."""
    # Chips are small: reading every header and label once here, in threads (GDAL releases the GIL), is cheap.
    # The warning filter is process-wide and not thread-safe, so it is set once around the pool.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG/JPEG chips have no georeferencing
        headers = list(pool.map(_header, [img for img, _ in pairs]))
        header = _check_uniform(pairs, headers)
        bands = _check_extract_bands(extract_bands, header.bands)
        counts = list(pool.map(lambda pair_header: _scan_label(*pair_header), zip(pairs, headers, strict=True)))
    return header, bands, counts


def _pixel_counts(classes: list[ClassInfo], counts: list[dict], paths: list[Path]) -> dict[int, int]:
    """Labelled pixels per class value over all chips (no data left out); at least two classes must have some."""
    pixel_counts: dict[int, int] = {}
    for chip_counts in counts:
        for value, n in chip_counts.items():
            pixel_counts[value] = pixel_counts.get(value, 0) + n
    pixel_counts.pop(0, None)
    present = sorted(pixel_counts)
    if len(classes) < 2 or len(present) < 2:
        only = present[0] if present else (classes[0].value if classes else "none")
        raise LandcoverError(f"{paths[0]}: the labels hold a single class ({only}); a pixel classifier needs at "
                             "least two classes — label another class (e.g. background) and export again")
    return pixel_counts


def _split(pairs: list, counts: list[dict], val_split_pct: float, sampling: str, stratify: bool, seed: int,
           paths: list[Path]) -> tuple:
    """``(layout, training pairs, validation pairs)``. Window sampling withholds validation footprints from
    training: there the validation chips are a compact block that takes little of any class (see .split, and
    ``layout`` is the chips' grid); else a stratified or a random split (``layout`` None)."""
    n_valid = max(1, round(len(pairs) * val_split_pct))
    if len(pairs) - n_valid < 1:
        raise LandcoverError(f"{paths[0]}: {len(pairs)} chip(s) cannot be split into training and validation "
                             "sets; export more chips")
    layout = chip_layout(pairs) if sampling != "chips" and not stratify else None
    if layout is not None:
        valid_set = compact_split(layout, [read_label(lab) for _, lab in pairs], n_valid, seed)
    elif stratify:
        valid_set = stratified_split([frozenset(v for v in chip if v != 0) for chip in counts], n_valid, seed)
    else:
        valid_set = set(np.random.default_rng(seed).permutation(len(pairs))[:n_valid].tolist())
    valid_pairs = [pair for i, pair in enumerate(pairs) if i in valid_set]
    train_pairs = [pair for i, pair in enumerate(pairs) if i not in valid_set]
    return layout, train_pairs, valid_pairs


def _transform(transforms: Transform | bool | None) -> Transform | None:
    """The training augmentation: None → the default (:class:`.Augment`), False → none, or the callable given."""
    if transforms is None:
        return Augment()
    if transforms is False:
        return None
    if callable(transforms):
        return transforms
    raise LandcoverError(f"transforms={transforms!r}: give None (default augmentation), False or a callable "
                         "(image, label) -> (image, label)")


def _check_dataset_type(dataset_type: str | None) -> None:
    if dataset_type is None:
        return
    if isinstance(dataset_type, str) and dataset_type.strip().replace(" ", "_").lower() == DATASET_TYPE.lower():
        return
    raise LandcoverError(f"dataset_type={dataset_type!r}: landcover trains pixel classifiers on {DATASET_TYPE} "
                         f"only; give dataset_type=None or {DATASET_TYPE!r} (export with metadata format "
                         f"{DATASET_TYPE})")


def _check_norm_pct(norm_pct: float | None) -> float | None:
    if norm_pct is None:
        return None
    ok = isinstance(norm_pct, (int, float, np.integer, np.floating)) and not isinstance(norm_pct, (bool, np.bool_))
    if not ok or not math.isfinite(float(norm_pct)) or not 0 < float(norm_pct) <= 1:
        raise LandcoverError(f"{arg('norm_pct', norm_pct)}: give the fraction of training chips read for the "
                             "normalization statistics, more than 0 and at most 1 (arcgis.learn uses 0.3)")
    return float(norm_pct)


def norm_sample_size(n_train: int, norm_pct: float | None) -> int:
    """How many training chips the normalization statistics are computed from (when the export has none)."""
    if norm_pct is None:
        return min(NORM_SAMPLE_CHIPS, n_train)
    if n_train < NORM_PCT_ALL_BELOW:
        return n_train
    return max(1, min(n_train, round(norm_pct * n_train)))


def _check_extract_bands(extract_bands: Sequence[int] | None, n: int) -> list[int]:
    if extract_bands is None:
        return list(range(n))
    try:
        return band_indices(extract_bands, n, "extract_bands", distinct=True, length=None,
                            hint=f"the chips have {n} band{'s' if n != 1 else ''}: give distinct 0-based indices "
                            f"0..{n - 1}, e.g. {[n - 1, 0, 1] if n >= 3 else list(range(n))}")
    except LandcoverError as exc:
        raise ExtractBandsError(str(exc), n) from None


def default_num_workers() -> int:
    """DataLoader workers: none on a CPU (measured: workers only take cores from the model), some for a GPU."""
    if torch.cuda.is_available():
        return min(8, max(1, (os.cpu_count() or 2) // 2))
    return 0


def _header(path: Path) -> _Header:
    try:
        with rasterio.open(path) as ds:
            res = (abs(ds.transform.a), abs(ds.transform.e)) if ds.crs else None
            return _Header(ds.count, ds.height, ds.width, ds.dtypes[0], ds.nodata, tuple(ds.descriptions),
                           ds.crs.to_wkt() if ds.crs else None, res)
    except RasterioIOError as exc:
        raise LandcoverError(f"{path}: unreadable image chip ({str(exc).splitlines()[0]}); re-export it") from None


def _check_uniform(pairs: list[tuple[Path, Path]], headers: list[_Header]) -> _Header:
    first = headers[0]
    for (img, _), h in zip(pairs, headers, strict=True):
        if h.bands != first.bands:
            raise LandcoverError(f"{img}: {h.bands} bands, but {pairs[0][0]} has {first.bands}; all chips must "
                                 "have the same bands (train on folders exported from the same imagery)")
        if (h.height, h.width) != (first.height, first.width):
            raise LandcoverError(f"{img}: {h.width}x{h.height} pixels, but {pairs[0][0]} is "
                                 f"{first.width}x{first.height}; all chips must have the same size (re-export "
                                 "with one tile size)")
        if h.dtype != first.dtype:
            raise LandcoverError(f"{img}: pixel type {h.dtype}, but {pairs[0][0]} is {first.dtype}; export all "
                                 "folders from imagery of the same pixel type")
    return first


def _scan_label(pair: tuple[Path, Path], header: _Header) -> dict[int, int]:
    img, lab = pair
    try:
        label = read_label(lab)
    except RasterioIOError as exc:
        raise LandcoverError(f"{lab}: unreadable label chip ({str(exc).splitlines()[0]}); re-export it") from None
    if label.shape != (header.height, header.width):
        raise LandcoverError(f"{lab}: label chip is {label.shape[1]}x{label.shape[0]} pixels but its image {img} "
                             f"is {header.width}x{header.height}; re-export the training data")
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise LandcoverError(f"{lab}: label chip holds non-integer values; labels must be class values")
    label = label.astype(np.int64, copy=False)
    if label.min() < 0:
        raise LandcoverError(f"{lab}: label value {int(label.min())} is negative; class values are 1..255 "
                             "(0 = no data)")
    counts = np.bincount(label.ravel())
    return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}


def _merge_classes(exports: list[ExportFolder]) -> list[ClassInfo]:
    """Union of the folders' classes; the same value must carry the same name in every folder."""
    merged: dict[int, tuple[ClassInfo, Path]] = {}
    for e in exports:
        for c in e.classes:
            if c.value in merged:
                other, where = merged[c.value]
                generic = {str(c.value)}
                if other.name != c.name and other.name not in generic and c.name not in generic:
                    raise LandcoverError(f"{e.path}: class {c.value} is {c.name!r} here but {other.name!r} in "
                                         f"{where}; folders can only be merged when their classes agree")
                if other.name in generic and c.name not in generic:
                    merged[c.value] = (c, e.path)
            else:
                merged[c.value] = (c, e.path)
    return [c for _, (c, _) in sorted(merged.items())]


def _check_labels(classes: list[ClassInfo], pairs: list[tuple[Path, Path]], counts: list[dict[int, int]],
                  paths: list[Path]) -> list[ClassInfo]:
    values = sorted({v for chip in counts for v in chip} - {0})
    if not classes:
        # The metadata lists no classes (hand-made folders): the label values are the classes.
        return generated_classes(values)
    known = {c.value for c in classes}
    for (_, lab), chip in zip(pairs, counts, strict=True):
        bad = sorted(set(chip) - known - {0})
        if bad:
            raise LandcoverError(
                f"{lab}: label value {bad[0]} is not one of the classes "
                f"({', '.join(str(c.value) for c in classes)}) listed in the export metadata; fix the labels "
                f"(0 = no data) or add the class to {EMD_FILE}")
    return classes


def _rename(classes: list[ClassInfo], mapping: Mapping[int, str]) -> list[ClassInfo]:
    by_value = {c.value: c for c in classes}
    for key, name in mapping.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise LandcoverError(f"class_mapping: key {key!r} is not a class value") from None
        if value not in by_value:
            raise LandcoverError(f"class_mapping: class {value} is not in the training data "
                                 f"({', '.join(str(v) for v in by_value)})")
        old = by_value[value]
        by_value[value] = ClassInfo(old.value, str(name), old.color)
    return [by_value[v] for v in sorted(by_value)]


def _band_names(exports: list[ExportFolder], header: _Header) -> list[str]:
    names = None
    for e in exports:
        if not e.band_names:
            continue
        if len(e.band_names) != header.bands:
            raise LandcoverError(f"{e.path}: the metadata names {len(e.band_names)} bands but the chips have "
                                 f"{header.bands}; re-export the training data")
        if names is not None and [n.lower() for n in names] != [n.lower() for n in e.band_names]:
            raise LandcoverError(f"{e.path}: bands {e.band_names} differ from {names} in {exports[0].path}; "
                                 "folders can only be merged when their bands agree")
        names = names or e.band_names
    if names:
        return list(names)
    if all(header.descriptions) and len(header.descriptions) == header.bands:
        return [str(d) for d in header.descriptions]
    return [f"Band_{i + 1}" for i in range(header.bands)]


def _normalization(exports: list[ExportFolder], train_pairs: list[tuple[Path, Path]], header: _Header,
                   nodata: float | None, seed: int, bands: list[int],
                   norm_pct: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the extracted bands: pooled export statistics when every folder has them, else from
    the training chips."""
    stats = [e.band_stats for e in exports]
    if all(s is not None and s.mean.size == header.bands for s in stats):
        pooled = stats[0]
        for s in stats[1:]:
            pooled = pooled.merge(s)
        mean, std = pooled.mean[bands], pooled.std[bands]
    else:
        mean, std = _stats_from_chips(train_pairs, bands, nodata, seed,
                                      norm_sample_size(len(train_pairs), norm_pct))
    # A constant band carries no information; std 1 keeps it finite instead of dividing by zero.
    std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean.astype(np.float64), std.astype(np.float64)


def _stats_from_chips(pairs: list[tuple[Path, Path]], bands: list[int], nodata: float | None, seed: int,
                      n_sample: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sample = [pairs[i] for i in sorted(rng.permutation(len(pairs))[:n_sample])]
    total: BandStats | None = None
    for img, _ in sample:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            data, mask = read_chip(img, nodata, bands)
        pixels = data.reshape(len(bands), -1).astype(np.float64)
        if mask is not None:
            pixels = pixels[:, ~mask.ravel()]
        if pixels.shape[1] == 0:
            continue
        mean = pixels.mean(axis=1)
        chip = BandStats(np.full(len(bands), float(pixels.shape[1])), mean,
                         ((pixels - mean[:, None]) ** 2).sum(axis=1))
        total = chip if total is None else total.merge(chip)
    if total is None:
        raise LandcoverError(f"{pairs[0][0].parent}: every sampled image chip is entirely no data; "
                             "check the imagery's nodata value")
    if not math.isfinite(float(total.std.sum())):
        raise LandcoverError(f"{pairs[0][0].parent}: band statistics are not finite; check the imagery")
    return total.mean, total.std
