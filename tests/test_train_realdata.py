"""Real data: the 16 Chesapeake NAIP 1 m patches (../shared/data) as a Classified Tiles folder, trained briefly.

The npz patches hold 29 channels (PROVENANCE.md): 0-3 NAIP R, G, B, NIR; 8 the Chesapeake land-cover label
(1..6, 15 = no data). They are written as 4-band uint8 GeoTIFF chips with label chips (15 → 0) in tmp.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import torch_threads
from landcover.data import prepare_data
from landcover.train import UnetClassifier

pytestmark = pytest.mark.realdata

CLASSES = [(1, "Water"), (2, "Tree Canopy"), (3, "Low Vegetation"), (4, "Barren"), (5, "Impervious (other)"),
           (6, "Impervious (road)")]


def naip_patch(npz) -> tuple[np.ndarray, np.ndarray]:
    """(4-band uint8 NAIP image, uint8 label with 15 -> 0) of one patch file."""
    arr = np.load(npz)["arr_0"][0]
    label = arr[8].round().astype(np.uint8)
    label[label == 15] = 0
    return arr[0:4].round().clip(0, 255).astype(np.uint8), label


def write_naip_export(src, folder):
    """Write patches (a folder of .npz, or a list of them) as a Classified Tiles export in ``folder``."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    lines = []
    files = sorted(src.glob("*.npz")) if hasattr(src, "glob") else list(src)
    for i, npz in enumerate(files):
        image, label = naip_patch(npz)
        # The patches are not georeferenced upstream; a UTM 17N placement keeps the chips valid GeoTIFFs.
        geo = dict(driver="GTiff", width=256, height=256, crs="EPSG:26917",
                   transform=from_origin(500000.0 + 256 * i, 4100000.0, 1.0, 1.0))
        name = f"{i:09d}.tif"
        with rasterio.open(folder / "images" / name, "w", count=4, dtype="uint8", **geo) as ds:
            ds.write(image)
        with rasterio.open(folder / "labels" / name, "w", count=1, dtype="uint8", nodata=0, **geo) as ds:
            ds.write(label[None])
        lines.append(f"images\\{name}  labels\\{name} ")
    (folder / "map.txt").write_text("\r\n".join(lines) + "\r\n")
    stats = {"Version": 1, "NumBands": 4, "TileSizeX": 256, "TileSizeY": 256, "MetaDataMode": "Classified_Tiles",
             "NumTiles": len(lines), "Classes": [{"ClassValue": v, "ClassName": n} for v, n in CLASSES],
             "InputRastersProps": {"RasterCount": 1, "SensorName": "NAIP",
                                   "BandNames": ["Red", "Green", "Blue", "NearInfrared"]}}
    (folder / "esri_accumulated_stats.json").write_text(json.dumps(stats, indent=2))
    return folder


def test_naip_patches_train_a_few_steps(shared_data, tmp_path):
    folder = write_naip_export(shared_data / "chesapeake-naip-1m" / "patches_1m", tmp_path / "naip")
    data = prepare_data(folder, batch_size=4, chip_size=128, val_split_pct=0.25)
    # label totals over the 16 patches as given in PROVENANCE.md; water and barren do not occur
    assert data.class_pixel_counts == {1: 0, 2: 804943, 3: 238529, 4: 0, 5: 3232, 6: 1872}
    assert data.c == 7 and data.band_names == ["Red", "Green", "Blue", "NearInfrared"]
    assert 50 < data.mean[0] < 200 and data.std[3] > 5  # statistics computed from the real chips
    with torch_threads(1):
        torch.manual_seed(0)
        model = UnetClassifier(data, backbone="resnet18", class_balancing=True)
        model.fit(1, lr=1e-3, checkpoint=False)
        assert len(model.history_train) == len(data.train_dl)
        assert all(np.isfinite(v) for _, v in model.history_train)
        m = model.metrics
    assert 0 <= m["accuracy"] <= 1 and len(m["per_class"]) == 6
    assert sum(p["support"] for p in m["per_class"]) == m["pixels"] > 100000
