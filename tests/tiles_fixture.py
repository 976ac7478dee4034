"""A hand-written ArcGIS-style Classified Tiles export, modelled on the real metadata in
../shared/data/esri-classified-tiles-metadata-ref (map.txt with backslashes, CRLF and a trailing space; the
stats file with ``ClassValue/ClassName`` and ``ClassPixelStats``; the template .emd with "e.g." placeholders and
colours [-1, -1, -1]). Chips are GeoTIFFs (or PNGs) written with rasterio.

The imagery makes classes visually distinct (each class has its own band signature plus noise), so a small
U-Net can learn it in a few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

WKT_UTM18 = rasterio.crs.CRS.from_epsg(32618).to_wkt()


def blob_label(rng: np.random.Generator, size: int, values: list[int]) -> np.ndarray:
    """A label chip of a few rectangles of different classes over a background class."""
    label = np.full((size, size), values[0], np.uint8)
    for _ in range(4):
        v = values[int(rng.integers(0, len(values)))]
        y, x = rng.integers(0, size - size // 4, 2)
        h, w = rng.integers(size // 6, size // 2, 2)
        label[y:y + h, x:x + w] = v
    return label


def signature_image(rng: np.random.Generator, label: np.ndarray, bands: int, values: list[int]) -> np.ndarray:
    """uint8 imagery where each class has a distinct mean per band."""
    image = np.zeros((bands, *label.shape), np.float32)
    for k, v in enumerate(values):
        mean = 40 + 170 * ((np.arange(bands) + k) % (len(values) + 1)) / len(values)
        image[:, label == v] = mean[:, None]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_export(folder: Path, n_chips: int = 12, size: int = 64, bands: int = 4, values=(1, 3, 7),
                 names=("Water", "Trees", "Buildings"), chip_format: str = "tif", band_stats: bool = True,
                 colors: bool = False, nodata: int | None = None, nodata_corner: int = 0, seed: int = 0,
                 transform_origin: tuple[float, float] = (600000.0, 4500000.0)) -> Path:
    """Write ``folder`` as ArcGIS Pro writes a Classified Tiles export; returns it."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(seed)
    values = list(values)
    ext = {"tif": ".tif", "png": ".png"}[chip_format]
    driver = {"tif": "GTiff", "png": "PNG"}[chip_format]
    per_class = np.zeros(len(values), np.int64)
    images_per_class = np.zeros(len(values), np.int64)
    acc = np.zeros((3, bands))  # count, sum, sum of squares for BandStatsState
    lines = []
    for i in range(n_chips):
        label = blob_label(rng, size, values)
        image = signature_image(rng, label, bands, values)
        if nodata is not None and nodata_corner:
            image[:, :nodata_corner, :nodata_corner] = nodata
        name = f"{i:09d}{ext}"
        x0, y0 = transform_origin[0] + i * size, transform_origin[1]
        geo = {} if chip_format == "png" else {"crs": "EPSG:32618", "transform": from_origin(x0, y0, 1.0, 1.0)}
        with rasterio.open(folder / "images" / name, "w", driver=driver, width=size, height=size, count=bands,
                           dtype="uint8", nodata=nodata if chip_format == "tif" else None, **geo) as ds:
            ds.write(image)
        with rasterio.open(folder / "labels" / name, "w", driver=driver, width=size, height=size, count=1,
                           dtype="uint8", **geo) as ds:
            ds.write(label[None])
        if chip_format == "tif":
            # ArcGIS leaves world files beside TIFF chips; they must not be taken for chips.
            (folder / "images" / f"{i:09d}.tfw").write_text(f"1.0\n0.0\n0.0\n-1.0\n{x0 + 0.5}\n{y0 - 0.5}\n")
        lines.append(f"images\\{name}  labels\\{name} ")
        for k, v in enumerate(values):
            per_class[k] += int((label == v).sum())
            images_per_class[k] += int((label == v).any())
        valid = np.ones(label.shape, bool) if nodata is None else ~np.all(image == nodata, axis=0)
        px = image[:, valid].astype(np.float64)
        acc += [np.full(bands, px.shape[1]), px.sum(1), (px**2).sum(1)]
    # map.txt is unsorted in real exports
    order = rng.permutation(len(lines))
    (folder / "map.txt").write_bytes("\r\n".join(lines[j] for j in order).encode() + b"\r\n")
    (folder / "stats.txt").write_text(
        f"images = {n_chips} *{bands}*{size}*{size}\nclasses = {len(values)}\n"
        + "cls name              cls value     images   pixels\n"
        + "".join(f"{n:<22}{v:<14}{int(ni):<9}{int(p)}\n"
                  for n, v, ni, p in zip(names, values, images_per_class, per_class, strict=True)))
    stats = {
        "Version": 1, "NumBands": bands, "TileSizeX": size, "TileSizeY": size, "NumClasses": len(values),
        "NumTiles": n_chips, "OutputFeatures": False, "MetaDataMode": "Classified_Tiles",
        "Classes": [{"ClassValue": v, "ClassName": n} for v, n in zip(values, names, strict=True)],
        "ClassPixelStats": {"NumClasses": len(values), "NumImagesTotal": n_chips,
                            "NumImagesPerClass": images_per_class.tolist(),
                            "NumPixelsPerClass": per_class.tolist()},
        "MinCellSize": {"x": 1.0, "y": 1.0, "spatialReference": {"wkt": WKT_UTM18}},
        "InputRastersProps": {"RasterCount": 1, "SensorName": "Undefined",
                              "BandNames": ["Red", "Green", "Blue", "NearInfrared"][:bands]
                              if bands <= 4 else [""] * bands},
    }
    if band_stats:
        count, total, sq = acc
        mean = total / count
        m2 = sq - count * mean**2
        # Mean/StdDev are written as 0 by Pro; only the running M1/M2/Num are meaningful.
        stats["BandStatsState"] = [{"Min": 0, "Max": 255, "Mean": 0, "StdDev": 0, "M1": float(m),
                                    "M2": float(s), "Num": int(c)} for m, s, c in zip(mean, m2, count, strict=True)]
    (folder / "esri_accumulated_stats.json").write_text(json.dumps(stats, indent=2))
    color = (lambda k: [[0, 0, 255], [0, 128, 0], [255, 0, 0], [200, 200, 0]][k % 4]) if colors \
        else (lambda k: [-1, -1, -1])
    emd = {"Framework": "e.g. CNTK", "ModelConfiguration": "some description",
           "ModelType": "e.g. ObjectDetection or ImageClassification", "ModelFile": "e.g. .\\trained.model",
           "ImageHeight": "e.g. 256", "ImageWidth": "e.g. 256", "ExtractBands": "e.g. [0, 1, 2]",
           "Classes": [{"Value": v, "Name": n, "Color": color(k)}
                       for k, (v, n) in enumerate(zip(values, names, strict=True))]}
    (folder / "esri_model_definition.emd").write_text(json.dumps(emd, indent=2))
    return folder
