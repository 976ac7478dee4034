"""``landcover export`` on the real sample data in ../shared/data (skipped when it is absent).

* NRCan New Brunswick: two 0.5 m RGB orthophoto clips (EPSG:2953) with hand-made land-cover polygons
  (text field ``Cinqclasses``); the second clip is appended to the first export with --start-index.
* Chesapeake: a georeferenced NAIP quarter-quad (4 bands, band 4 tagged alpha but holding near-infrared) with its
  land-cover raster, on a grid of non-square pixels (23.59 x 29.46 m).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rasterio.windows import Window

from landcover.cli import main
from landcover.export import export_training_data
from landcover.raster import Grid

pytestmark = pytest.mark.realdata

NRCAN = "nrcan-new-brunswick-aerial"
CLIPS = ("23322E759967N_clipped_1m_1of2.tif", "23322E759967N_clipped_1m_2of2.tif")
NAIP = "chesapeake-naip-1m/tile_downsampled/m_3907833_nw_17_1_"


def _polygons(gpkg):
    import pyogrio
    import shapely
    meta, _, wkb, (values,) = pyogrio.raw.read(gpkg, columns=["Cinqclasses"])
    assert list(meta["fields"]) == ["Cinqclasses"]
    return [(g, int(v)) for g, v in zip(shapely.from_wkb(wkb), values, strict=True)]


def _window(grid: Grid, transform, tile: int) -> Window:
    col, row = ~grid.transform @ (transform.c, transform.f)
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
    win = Window(round(col), round(row), tile, tile)
    assert transform == grid.window_transform(win)  # exactly the grid's transform at a whole pixel offset
    return win


def test_nrcan_polygons_over_both_clips_appended(shared_data, tmp_path):
    gpkg = shared_data / NRCAN / "BakerLake_2017_clipped.gpkg"
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"1": "Vegetation", "2": "Hydro", "3": "Road", "4": "Building",
                                   "5": {"name": "Train", "color": "#9c9c9c"}}))
    out = tmp_path / "nb"
    assert main(["export", "--quiet", "--imagery", str(shared_data / NRCAN / CLIPS[0]), "--labels", str(gpkg),
                 "--class-field", "Cinqclasses", "--classes", str(classes), "--out", str(out),
                 "--tile-size", "128", "--stride", "64"]) == 0
    first = json.loads((out / "esri_accumulated_stats.json").read_text())
    second = export_training_data(shared_data / NRCAN / CLIPS[1], gpkg, out, class_field="Cinqclasses",
                                  classes=classes, tile_size=128, stride=64, start_index=first["NextTileIndex"],
                                  progress=False)
    stats = json.loads((out / "esri_accumulated_stats.json").read_text())
    assert stats["NumTiles"] == first["NumTiles"] + second.chips == len(list((out / "images").iterdir()))

    shapes = _polygons(gpkg)
    grids = []
    for clip in CLIPS:
        with rasterio.open(shared_data / NRCAN / clip) as ds:
            grids.append((Grid.of(ds), ds.read()))
    pixels = np.zeros(256, dtype=np.int64)
    for i in range(stats["NumTiles"]):
        grid, img = grids[0] if i < first["NumTiles"] else grids[1]
        with rasterio.open(out / f"images/{i:09d}.tif") as di, rasterio.open(out / f"labels/{i:09d}.tif") as dl:
            assert di.crs.to_epsg() == 2953 and di.res == (0.5, 0.5) and di.count == 3
            win = _window(grid, di.transform, 128)
            assert np.array_equal(di.read(), img[:, win.toslices()[0], win.toslices()[1]])
            want = rasterize(shapes, out_shape=(128, 128), transform=di.transform, dtype="uint8")
            label = dl.read(1)
            assert np.array_equal(label, want) and label.any()
            pixels += np.bincount(label.ravel(), minlength=256)
    values = [c["ClassValue"] for c in stats["Classes"]]
    assert values == [1, 2, 3, 4, 5]
    assert [c["ClassName"] for c in stats["Classes"]] == ["Vegetation", "Hydro", "Road", "Building", "Train"]
    assert stats["ClassPixelStats"]["NumPixelsPerClass"] == [int(pixels[v]) for v in values]
    assert stats["InputRastersProps"]["BandNames"] == ["Red", "Green", "Blue"]


def test_chesapeake_tile_non_square_pixels(shared_data, tmp_path):
    naip, lc = shared_data / f"{NAIP}naip-new.tif", shared_data / f"{NAIP}lc.tif"
    out = tmp_path / "ches"
    s = export_training_data(naip, lc, out, tile_size=64, stride=64, progress=False)
    with rasterio.open(naip) as dn, rasterio.open(lc) as dl:
        grid, img, lab = Grid.of(dn), dn.read(), dl.read(1)
    assert s.chips == len(list((out / "images").iterdir())) == 25  # 260 px: starts 0, 64, 128, 192, 196
    covered = np.zeros(lab.shape, dtype=bool)
    for i in range(s.chips):
        with rasterio.open(out / f"images/{i:09d}.tif") as di, rasterio.open(out / f"labels/{i:09d}.tif") as dc:
            assert di.transform.a == pytest.approx(23.5923, abs=1e-4) and di.transform.e == pytest.approx(-29.4615,
                                                                                                        abs=1e-4)
            win = _window(grid, di.transform, 64)
            sl = win.toslices()
            # All four bands, band 4 (near-infrared tagged alpha) exported as data and not used as a mask.
            assert di.count == 4 and np.array_equal(di.read(), img[:, sl[0], sl[1]])
            assert di.colorinterp[3] != ColorInterp.alpha
            assert np.array_equal(dc.read(1), lab[sl])
            covered[sl] = True
    assert covered.all()
    stats = json.loads((out / "esri_accumulated_stats.json").read_text())
    assert [c["ClassValue"] for c in stats["Classes"]] == [int(v) for v in np.unique(lab) if v]
    # Every pixel is labelled; pixels of the overlapping edge chips count once per chip (per-chip statistics).
    assert lab.all() and sum(stats["ClassPixelStats"]["NumPixelsPerClass"]) == 25 * 64 * 64
    emd = json.loads((out / "esri_model_definition.emd").read_text())
    assert emd["MinCellSize"]["x"] == pytest.approx(23.5923, abs=1e-4)
    assert emd["MinCellSize"]["y"] == pytest.approx(29.4615, abs=1e-4)
    assert emd["InputRastersProps"]["BandNames"] == ["Red", "Green", "Blue", "Band_4"]
