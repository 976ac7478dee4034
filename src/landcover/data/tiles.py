"""Read a Classified Tiles folder: the chip pairs and the metadata ArcGIS Pro and ``landcover export`` write.

Layout (arcgis-learn.md §1.4): ``images/`` and ``labels/`` with one chip per name, ``map.txt`` pairing them
(Windows backslashes), ``esri_accumulated_stats.json`` (classes, class pixel counts, per-band running stats,
band names, cell size) and ``esri_model_definition.emd`` (classes with colours, ``AllTilesStats``). Real exports
may lack band statistics and colours, and name classes ``ClassValue/ClassName`` or ``Value/Name``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import ClassInfo, classes_from_esri
from ..errors import LandcoverError

STATS_FILE = "esri_accumulated_stats.json"
EMD_FILE = "esri_model_definition.emd"
MAP_FILE = "map.txt"
#: chip formats ArcGIS exports (MRF included) and that GDAL reads
CHIP_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".mrf")


@dataclass
class BandStats:
    """Per-band pixel count, mean and sum of squared deviations (Esri's ``Num``, ``M1``, ``M2``)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.count, 1))

    def merge(self, other: BandStats) -> BandStats:
        """Pooled statistics of two sets of pixels (Chan et al.'s parallel variance)."""
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / n
        return BandStats(n, mean, m2)


@dataclass
class ExportFolder:
    """What one Classified Tiles folder holds, before the chips themselves are checked."""

    path: Path
    pairs: list[tuple[Path, Path]]
    classes: list[ClassInfo]
    band_names: list[str] = field(default_factory=list)
    band_stats: BandStats | None = None
    nodata: float | None = None
    cell_size: tuple[float, float] | None = None
    crs_wkt: str | None = None
    missing_labels: int = 0


def read_export(folder: str | Path) -> ExportFolder:
    """Read the metadata and the image/label pairs of a Classified Tiles folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LandcoverError(f"{folder}: training data folder not found (give the folder written by "
                             "`landcover export` or ArcGIS Export Training Data For Deep Learning)")
    for sub in ("images", "labels"):
        if not (folder / sub).is_dir():
            raise LandcoverError(f"{folder}: no {sub}/ folder — not a Classified Tiles export (export it with "
                                 "`landcover export` or ArcGIS with metadata format Classified_Tiles)")
    stats = _read_json(folder / STATS_FILE)
    emd = _read_json(folder / EMD_FILE)
    if stats is None and emd is None:
        raise LandcoverError(f"{folder}: no {STATS_FILE} or {EMD_FILE} — the export metadata is missing "
                             "(re-export the chips, or copy the metadata files back beside images/ and labels/)")
    meta = {**(emd or {}), **(stats or {})}  # the stats file is the more complete record where both have a key
    mode = meta.get("MetaDataMode")
    if mode is not None and str(mode).replace(" ", "_").lower() != "classified_tiles":
        raise LandcoverError(f"{folder}: exported as {mode}; pixel classification needs Classified_Tiles chips "
                             "(re-export with that metadata format)")
    classes = _classes(emd, stats, folder)
    pairs, missing = _pairs(folder)
    return ExportFolder(
        path=folder,
        pairs=pairs,
        classes=classes,
        band_names=_band_names(meta),
        band_stats=_band_stats(stats, emd, len(pairs)),
        nodata=_nodata(meta),
        cell_size=_cell_size(meta),
        crs_wkt=_crs_wkt(meta),
        missing_labels=missing,
    )


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LandcoverError(f"{path}: not readable JSON ({exc}); re-export the training data") from None
    if not isinstance(doc, dict):
        raise LandcoverError(f"{path}: expected a JSON object; re-export the training data")
    return doc


def _classes(emd: dict | None, stats: dict | None, folder: Path) -> list[ClassInfo]:
    # The export .emd carries colours; the stats file often carries only values and names.
    for doc, name in ((emd, EMD_FILE), (stats, STATS_FILE)):
        entries = (doc or {}).get("Classes")
        if isinstance(entries, list) and entries:
            try:
                return classes_from_esri(entries)
            except (TypeError, ValueError, AttributeError) as exc:
                raise LandcoverError(f"{folder / name}: malformed Classes list ({exc})") from None
    return []


def _pairs(folder: Path) -> tuple[list[tuple[Path, Path]], int]:
    """Image/label pairs from map.txt (any path style), else by name; returns (pairs, images without label)."""
    map_file = folder / MAP_FILE
    candidates: list[tuple[Path, Path | None]] = []
    if map_file.is_file():
        for line in map_file.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            tokens = line.split()
            if len(tokens) >= 2:
                # ArcGIS writes "images\000000019.tif  labels\000000019.tif"; keep the last two path parts so
                # absolute Windows paths of the machine that exported still resolve here.
                candidates.append((_local(folder, tokens[0]), _local(folder, tokens[1])))
    if not candidates:
        for img in sorted((folder / "images").iterdir()):
            if img.suffix.lower() in CHIP_SUFFIXES:
                label = next((p for p in (folder / "labels").glob(img.stem + ".*")
                              if p.suffix.lower() in CHIP_SUFFIXES), None)
                candidates.append((img, label))
    pairs = [(img, lab) for img, lab in candidates if img.is_file() and lab is not None and lab.is_file()]
    if not pairs:
        where = MAP_FILE if map_file.is_file() else "images/ and labels/"
        raise LandcoverError(f"{folder}: no image chip with a matching label chip (checked {where}); "
                             "re-export the training data")
    pairs.sort(key=lambda p: p[0].name)  # map.txt is not sorted; a stable order makes the split reproducible
    return pairs, len(candidates) - len(pairs)


def _local(folder: Path, token: str) -> Path:
    parts = [p for p in token.replace("\\", "/").split("/") if p not in ("", ".")]
    return folder.joinpath(*parts[-2:])


def _band_names(meta: dict) -> list[str]:
    props = meta.get("InputRastersProps")
    names = props.get("BandNames") if isinstance(props, dict) else None
    if not names and isinstance(meta.get("AllTilesStats"), list):
        names = [s.get("BandName", "") for s in meta["AllTilesStats"] if isinstance(s, dict)]
    if isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names):
        return [n.strip() for n in names]
    return []


def _band_stats(stats: dict | None, emd: dict | None, n_chips: int) -> BandStats | None:
    state = (stats or {}).get("BandStatsState")
    if isinstance(state, list) and state:
        try:
            count = np.array([float(b["Num"]) for b in state])
            mean = np.array([float(b["M1"]) for b in state])
            m2 = np.array([float(b["M2"]) for b in state])
        except (KeyError, TypeError, ValueError):
            count = np.zeros(1)
        if count.size and np.all(count > 0) and np.all(np.isfinite(m2)):
            return BandStats(count, mean, m2)
    tiles = (emd or {}).get("AllTilesStats") or (stats or {}).get("AllTilesStats")
    if isinstance(tiles, list) and tiles:
        try:
            mean = np.array([float(b["Mean"]) for b in tiles])
            std = np.array([float(b["StdDev"]) for b in tiles])
        except (KeyError, TypeError, ValueError):
            return None
        if np.all(std > 0):
            # AllTilesStats has no pixel count; weight by chips when folders are merged.
            count = np.full(mean.shape, float(max(n_chips, 1)))
            return BandStats(count, mean, std**2 * count)
    return None


def _nodata(meta: dict) -> float | None:
    value = meta.get("NoDataValue")
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


def _cell_size(meta: dict) -> tuple[float, float] | None:
    cell = meta.get("MinCellSize")
    try:
        x, y = float(cell["x"]), float(cell["y"])
    except (TypeError, KeyError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0 else None


def _crs_wkt(meta: dict) -> str | None:
    cell = meta.get("MinCellSize")
    sr = cell.get("spatialReference") if isinstance(cell, dict) else None
    if not isinstance(sr, dict):
        return None
    if sr.get("wkt"):
        return str(sr["wkt"])
    wkid = sr.get("latestWkid") or sr.get("wkid")
    if wkid:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            return CRS.from_epsg(int(wkid)).to_wkt()
        except (CRSError, ValueError):
            return None  # an Esri-only code (e.g. 102100): the chips' own CRS is used instead
    return None
