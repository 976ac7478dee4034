"""The Classified Tiles metadata: ``map.txt``, ``stats.txt``, ``esri_accumulated_stats.json`` and the export-time
``esri_model_definition.emd``, written in the layout ArcGIS Pro writes, and read back to append to an export.

Each file is written to a temporary name and renamed, and only after every chip is on disk, so a folder whose
export failed or was interrupted never holds the files that make it look complete (arcgis.learn treats a folder
as an export when the .emd, map.txt and the stats JSON all exist).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rasterio.crs import CRS

from ..classes import ClassInfo, classes_from_esri
from ..errors import LandcoverError, arg
from ..raster import atomic_output
from .stats import ClassCounts, Moments

STATS_JSON = "esri_accumulated_stats.json"
EMD = "esri_model_definition.emd"
MAP = "map.txt"
STATS_TXT = "stats.txt"
METADATA_FILES = (MAP, STATS_TXT, EMD, STATS_JSON)  # written in this order: the stats JSON is the last one

#: The band names ArcGIS lists in its export .emd (they may be used in ExtractBands).
WELL_KNOWN_BAND_NAMES = [
    "Red", "Green", "Blue", "Infrared", "CoastalBlue", "Yellow", "RedEdge", "ShortWaveInfrared", "NearInfrared",
    "NearInfrared_1", "NearInfrared_2", "MidInfrared", "MidInfrared_1", "MidInfrared_2", "Thermal", "Thermal_1",
    "Thermal_2", "Panchromatic", "PseudoRed", "PseudoGreen", "PseudoBlue",
]
_CHIP_LINE = re.compile(r"^images\\(\d{9})(\.\w+)\s+labels\\(\d{9})(\.\w+)\s*$")


@dataclass
class ExportMetadata:
    """Everything the metadata files say about an export folder (one export, or several merged)."""

    num_bands: int
    tile_x: int
    tile_y: int
    chip_format: str  # "TIFF", "PNG" or "JPEG"
    data_type: str
    nodata: float | None
    band_names: list[str]
    classes: list[ClassInfo]
    counts: ClassCounts
    bands: list[Moments]
    min_cell: dict
    max_cell: dict
    next_index: int
    map_lines: list[str] = field(default_factory=list)

    @property
    def num_tiles(self) -> int:
        return self.counts.tiles

    # --- merging ------------------------------------------------------------------------------------------

    def merge(self, new: ExportMetadata) -> ExportMetadata:
        """This export followed by ``new`` (appended into the same folder)."""
        classes = {c.value: c for c in new.classes}
        classes.update({c.value: c for c in self.classes})  # names already in the folder win
        bands = [a.merge(b) for a, b in zip(self.bands, new.bands, strict=True)]
        return ExportMetadata(
            self.num_bands, self.tile_x, self.tile_y, self.chip_format, self.data_type, self.nodata,
            self.band_names if any(self.band_names) else new.band_names,
            sorted(classes.values(), key=lambda c: c.value), self.counts.merge(new.counts),
            bands, _pick(min, self.min_cell, new.min_cell), _pick(max, self.max_cell, new.max_cell),
            max(self.next_index, new.next_index), self.map_lines + new.map_lines,
        )

    # --- writing ------------------------------------------------------------------------------------------

    def write(self, out: Path) -> None:
        """Write the four metadata files, each atomically, the stats JSON last.

        If writing fails part-way, the files are put back as they were (an append leaves the previous export
        as it was; a new export leaves none of them).
        """
        texts = {
            MAP: "".join(f"{line}\r\n" for line in self.map_lines),
            STATS_TXT: self.stats_text(),
            EMD: _dumps(self.emd()),
            STATS_JSON: _dumps(self.accumulated_stats()),
        }
        before = {name: (out / name).read_bytes() for name in METADATA_FILES if (out / name).exists()}
        try:
            for name in METADATA_FILES:
                with atomic_output(out / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                    f.write(texts[name])
        except BaseException:
            for name in METADATA_FILES:
                if name in before:
                    (out / name).write_bytes(before[name])
                else:
                    (out / name).unlink(missing_ok=True)
            raise

    def class_values(self) -> list[int]:
        return [c.value for c in self.classes]

    def accumulated_stats(self) -> dict:
        """``esri_accumulated_stats.json``."""
        return {
            "Version": 1,
            "NumBands": self.num_bands,
            "TileSizeX": self.tile_x,
            "TileSizeY": self.tile_y,
            "NumClasses": len(self.classes),
            "NumTiles": self.num_tiles,
            "NumTilesAsDouble": float(self.num_tiles),
            "NextTileIndex": self.next_index,
            "OutputFeatures": False,
            "MetaDataMode": "Classified_Tiles",
            "Classes": [{"ClassValue": c.value, "ClassName": c.name, "Color": list(c.color)} for c in self.classes],
            "ClassPixelStats": self.counts.to_esri(self.class_values()),
            "MinCellSize": self.min_cell,
            "MaxCellSize": self.max_cell,
            "InputRastersProps": self.raster_props(),
            "BandStatsState": [m.to_esri() for m in self.bands],
        }

    def raster_props(self) -> dict:
        return {"RasterCount": 1, "SensorName": "Undefined", "BandNames": list(self.band_names)}

    def emd(self) -> dict:
        """The export-time ``esri_model_definition.emd``: ArcGIS's template plus what this export knows.

        The model keys ArcGIS leaves as "e.g." examples at export time are kept as such; training fills them.
        ``NoDataValue``, ``ChipFormat`` and ``DataType`` are this tool's additions.
        """
        return {
            "Framework": "e.g. CNTK",
            "ModelConfiguration": "some description",
            "ModelType": "e.g. ObjectDetection or ImageClassification",
            "ModelFile": "e.g. .\\trained.model",
            "ImageHeight": self.tile_y,
            "ImageWidth": self.tile_x,
            "ExtractBands": list(range(self.num_bands)),
            "DataRange": "e.g. [0.1, 1.0] (optional)",
            "ModelPadding": "e.g. 64 (optional)",
            "BatchSize": "e.g. 8 (optional)",
            "PerProcessGPUMemoryFraction": "e.g. 0.8 (optional)",
            "MetaDataMode": "Classified_Tiles",
            "ImageSpaceUsed": "MAP_SPACE",
            "Classes": [c.to_esri() for c in self.classes],
            "InputRastersProps": self.raster_props(),
            "AllTilesStats": [
                {"BandName": name, **{k: v for k, v in m.to_esri().items() if k in ("Min", "Max", "Mean", "StdDev")}}
                for name, m in zip(self.band_names, self.bands, strict=True)
            ],
            "MinCellSize": self.min_cell,
            "MaxCellSize": self.max_cell,
            "NoDataValue": _json_number(self.nodata),
            "ChipFormat": self.chip_format,
            "DataType": self.data_type,
            "WellKnownBandNames (FYI, these band names can be used in ExtractBands)": WELL_KNOWN_BAND_NAMES,
        }

    def stats_text(self) -> str:
        """``stats.txt``, column for column as ArcGIS writes it (CRLF line ends)."""
        c = self.counts
        n = c.tiles
        lines = [
            f"images = {n} *{self.num_bands}*{self.tile_y}*{self.tile_x}",
            f"classes = {len(self.classes)}",
            f"classes per image = [min = {c.cpi_min or 0}, mean = {c.cpi_sum / n if n else 0:.2f}, "
            f"max = {c.cpi_max or 0}]",
            "cls name              cls value     images   pixels      min size   mean size    max size",
        ]
        for cls in self.classes:
            v = cls.value
            lines.append(f"{cls.name:<22}{v:>9}{int(c.images[v]):>11}{int(c.pixels[v]):>11}"
                         f"{(int(c.min[v]) if n else 0):>12.2f}{(c.pixels[v] / n if n else 0):>12.2f}"
                         f"{int(c.max[v]):>12.2f}")
        return "".join(f"{line}\r\n" for line in lines)


def cell_size_entry(x: float, y: float, crs: CRS | None) -> dict:
    """``MinCellSize``/``MaxCellSize``: cell size and spatial reference (WKT, plus the EPSG code when known)."""
    sr: dict = {}
    epsg = crs.to_epsg() if crs else None
    if epsg:
        sr.update(wkid=epsg, latestWkid=epsg)
    sr["wkt"] = crs.to_wkt() if crs else ""
    return {"x": float(x), "y": float(y), "spatialReference": sr}


def _pick(choose, a: dict, b: dict) -> dict:
    """The smaller or larger of two cell-size entries; an empty one (older ArcGIS exports) does not count."""
    present = [c for c in (a, b) if c]
    return choose(present, key=lambda c: (float(c.get("x", 0)), float(c.get("y", 0)))) if present else {}


def _json_number(v: float | None):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return "NaN"  # JSON has no NaN
    return int(v) if float(v).is_integer() else float(v)


def _dumps(doc: dict) -> str:
    # Esri's layout: two-space indent and " : " between keys and values.
    return json.dumps(doc, indent=2, separators=(",", " : "), ensure_ascii=False, allow_nan=False) + "\n"


# --- reading an existing export -------------------------------------------------------------------------------

def holds_export(out: Path) -> bool:
    return any((out / name).exists() for name in METADATA_FILES)


def read_export(out: Path) -> ExportMetadata:
    """The metadata of the export in ``out``, to append to it; raises if it is incomplete or not ours to extend."""
    missing = [name for name in (STATS_JSON, MAP) if not (out / name).exists()]
    if missing:
        raise LandcoverError(f"{out}: holds an incomplete export (no {', '.join(missing)}); remove the folder or "
                             f"choose another {arg('out')}")
    try:
        stats = json.loads((out / STATS_JSON).read_text(encoding="utf-8"))
        emd = json.loads((out / EMD).read_text(encoding="utf-8")) if (out / EMD).exists() else {}
        map_lines = [line.rstrip("\r\n") for line in (out / MAP).read_text(encoding="utf-8").splitlines()
                     if line.strip()]
    except (OSError, ValueError) as exc:
        raise LandcoverError(f"{out}: cannot read the export's metadata ({exc})") from None
    if stats.get("MetaDataMode") != "Classified_Tiles":
        raise LandcoverError(f"{out}: holds a {stats.get('MetaDataMode')} export; only Classified_Tiles can be "
                             "appended to")
    classes = classes_from_esri(stats.get("Classes") or emd.get("Classes") or [])
    values = [int(c.get("ClassValue", c.get("Value"))) for c in stats.get("Classes", [])]
    counts = ClassCounts.from_esri(stats.get("ClassPixelStats", {}), values)
    fmt = emd.get("ChipFormat")
    if fmt is None and map_lines:
        m = _CHIP_LINE.match(map_lines[0])
        fmt = {".tif": "TIFF", ".png": "PNG", ".jpg": "JPEG"}.get(m.group(2).lower()) if m else None
    num_bands = int(stats.get("NumBands", 0))
    band_names = list(stats.get("InputRastersProps", {}).get("BandNames") or [""] * num_bands)
    bands = [Moments.from_esri(b) for b in stats.get("BandStatsState", [])] or [Moments() for _ in range(num_bands)]
    nodata = emd.get("NoDataValue")
    return ExportMetadata(
        num_bands, int(stats.get("TileSizeX", 0)), int(stats.get("TileSizeY", 0)), fmt or "TIFF",
        emd.get("DataType", ""), float("nan") if nodata == "NaN" else nodata, band_names, classes, counts, bands,
        stats.get("MinCellSize", {}), stats.get("MaxCellSize", {}),
        int(stats.get("NextTileIndex", counts.tiles)), map_lines,
    )


def chip_indices(out: Path) -> list[int]:
    """Indices of the chip files in ``out/images`` and ``out/labels``."""
    found = set()
    for sub in ("images", "labels"):
        folder = out / sub
        if folder.is_dir():
            for p in folder.iterdir():
                stem = p.name.split(".")[0]
                if len(stem) == 9 and stem.isdigit():
                    found.add(int(stem))
    return sorted(found)
