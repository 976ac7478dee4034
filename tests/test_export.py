"""``landcover export``: Classified Tiles chips and metadata from imagery + raster or vector labels.

Fixtures: imagery in UTM 18N (4-band uint16, nodata 0 with a collar), a label raster in Web Mercator at 1.7 m with
a colour table and its own nodata, polygons in WGS 84 in a GeoPackage. Every expectation is computed
independently of the exporter: rasterio window reads, a WarpedVRT read of the labels on the grid,
``rasterio.features.rasterize`` of the polygons, numpy statistics over the written chips.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window

from conftest import write_raster
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.export import export_training_data
from landcover.raster import Grid, grid_window, iter_windows, target_grid, whole_grid

UTM, WM = "EPSG:32618", "EPSG:3857"
ORIGIN = (580000.0, 4510000.0)
W, H = 300, 260
COLORS = {1: (0, 197, 255, 255), 2: (38, 115, 0, 255), 3: (255, 0, 0, 255), 4: (156, 156, 156, 255)}


# --- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    img = (1000 + 400 * np.sin(xx / 23.0)[None] + 300 * np.cos(yy / 17.0)[None]
           + rng.integers(0, 200, (4, H, W))).astype("uint16")
    img[:, :20, :] = 0      # nodata collar: top rows and right columns
    img[:, :, 230:] = 0
    imagery = write_raster(d / "img.tif", img, crs=UTM, transform=from_origin(*ORIGIN, 1.0, 1.0), nodata=0)

    # Labels in Web Mercator at 1.7 m, a margin around the imagery; the left quarter unlabelled, a nodata patch.
    left, bottom, right, top = transform_bounds(UTM, WM, ORIGIN[0], ORIGIN[1] - H, ORIGIN[0] + W, ORIGIN[1])
    left, top = left - 20, top + 20
    lw, lh = int((right + 20 - left) / 1.7) + 1, int((top - (bottom - 20)) / 1.7) + 1
    ly, lx = np.mgrid[0:lh, 0:lw]
    lab = (1 + (lx // 23 + ly // 17) % 4).astype("uint8")
    lab[:, : lw // 4] = 0
    lab[lh // 2: lh // 2 + 15, lw // 2: lw // 2 + 15] = 255
    labels = write_raster(d / "labels.tif", lab, crs=WM, transform=from_origin(left, top, 1.7, 1.7), nodata=255,
                          colormap=COLORS)

    # Polygons in WGS 84: built in UTM, stored in lon/lat.
    import pyogrio
    import shapely
    x0, y0 = ORIGIN
    polys_utm = [
        shapely.box(x0 + 30, y0 - 200, x0 + 150, y0 - 60),                                   # 1 Water
        shapely.Polygon([(x0 + 140, y0 - 40), (x0 + 280, y0 - 50), (x0 + 200, y0 - 240)]),   # 2 Forest
        shapely.box(x0 + 100, y0 - 130, x0 + 260, y0 - 110),                                 # 3 Road, on top
    ]
    polys = [shapely.geometry.shape(transform_geom(UTM, "EPSG:4326", p.__geo_interface__)) for p in polys_utm]
    gpkg = d / "polygons.gpkg"
    # The name field comes first: the exporter must not rely on the order it asks for fields in.
    pyogrio.raw.write(gpkg, shapely.to_wkb(polys), [np.array(["Water", "Forest", "Road"], dtype=object),
                                                     np.array([1, 2, 3], dtype="int32")],
                      ["ClassName", "ClassValue"], crs="EPSG:4326", geometry_type="Polygon", driver="GPKG")
    return {"dir": d, "imagery": imagery, "labels": labels, "polygons": gpkg, "img": img, "polys": polys}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def chips_of(out: Path, sub: str = "images") -> list[Path]:
    return sorted(p for p in (out / sub).iterdir() if p.suffix in (".tif", ".png", ".jpg"))


def cli(*args) -> int:
    return main(["export", "--quiet", *map(str, args)])


def window_of(grid: Grid, transform: Affine, tile: int) -> Window:
    """The chip's window on the grid, asserting the chip transform is the grid transform at a whole offset."""
    col, row = ~grid.transform @ (transform.c, transform.f)
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6, (col, row)
    win = Window(round(col), round(row), tile, tile)
    assert transform == grid.window_transform(win)
    return win


def labels_on_grid(labels: Path, grid: Grid) -> np.ndarray:
    """The label raster on the grid: WarpedVRT, nearest neighbour, nodata → 0 (one read of the whole grid)."""
    with rasterio.open(labels) as ds, WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                                height=grid.height, resampling=Resampling.nearest,
                                                src_nodata=ds.nodata, nodata=ds.nodata, tolerance=1e-9) as vrt:
        a = vrt.read(1)
        return np.where(a == ds.nodata, 0, a)


def padded(a: np.ndarray, win: Window, fill=0) -> np.ndarray:
    """``a[..., window]`` with the part of the window past the array filled."""
    h, w = a.shape[-2:]
    out = np.full(a.shape[:-2] + (int(win.height), int(win.width)), fill, dtype=a.dtype)
    r0, c0 = int(win.row_off), int(win.col_off)
    r1, c1 = min(r0 + int(win.height), h), min(c0 + int(win.width), w)
    out[..., : r1 - r0, : c1 - c0] = a[..., r0:r1, c0:c1]
    return out


# --- raster labels ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raster_export(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "chips"
    assert cli("--imagery", scene["imagery"], "--labels", scene["labels"], "--out", out,
               "--tile-size", 64, "--stride", 48) == 0
    return out


def test_raster_labels_chips_match_grid_and_direct_reads(scene, raster_export):
    out, tile = raster_export, 64
    grid = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 1, 1), W, H)
    expected_labels = labels_on_grid(scene["labels"], grid)
    img = scene["img"]
    valid = (img != 0).any(axis=0)
    seen = set()
    for ip, lp in zip(chips_of(out), chips_of(out, "labels"), strict=True):
        assert ip.name == lp.name
        with rasterio.open(ip) as di, rasterio.open(lp) as dl:
            assert di.crs == grid.crs and dl.crs == grid.crs and di.transform == dl.transform
            assert (di.count, di.dtypes[0], di.nodata, di.width, di.height) == (4, "uint16", 0, tile, tile)
            assert dl.count == 1 and dl.dtypes[0] == "uint8"
            win = window_of(grid, di.transform, tile)
            seen.add((win.col_off, win.row_off))
            chip, lchip = di.read(), dl.read(1)
        assert np.array_equal(chip, padded(img, win))
        want = np.where(padded(valid, win), padded(expected_labels, win), 0)
        assert np.array_equal(lchip, want), ip.name
        assert lchip.any()
    # Exactly the windows holding a labelled, valid pixel were written (stride 48, last ones shifted inward).
    wins = list(iter_windows(W, H, tile, 48))
    assert max(w.col_off for w in wins) == W - tile and max(w.row_off for w in wins) == H - tile
    labelled = {(w.col_off, w.row_off) for w in wins
                if (padded(expected_labels, w) * padded(valid, w)).any()}
    assert seen == labelled and len(seen) < len(wins)


def test_statistics_add_up(scene, raster_export):
    out = raster_export
    stats = read_json(out / "esri_accumulated_stats.json")
    emd = read_json(out / "esri_model_definition.emd")
    images = chips_of(out)
    lines = (out / "map.txt").read_bytes().decode().split("\r\n")
    assert lines[-1] == "" and len(lines) - 1 == len(images) == stats["NumTiles"] == stats["NextTileIndex"]
    assert lines[0] == "images\\000000000.tif  labels\\000000000.tif "

    labels = np.stack([rasterio.open(p).read(1) for p in chips_of(out, "labels")])
    chips = np.stack([rasterio.open(p).read() for p in images])
    values = sorted(int(v) for v in np.unique(labels) if v)
    assert [c["ClassValue"] for c in stats["Classes"]] == values
    assert [c["Color"] for c in stats["Classes"]] == [list(COLORS[v][:3]) for v in values]
    cps = stats["ClassPixelStats"]
    assert sum(cps["NumPixelsPerClass"]) == int((labels > 0).sum())
    assert cps["NumPixelsPerClass"] == [int((labels == v).sum()) for v in values]
    assert cps["NumImagesPerClass"] == [int((labels == v).any(axis=(1, 2)).sum()) for v in values]
    per_chip = [(labels == v).sum(axis=(1, 2)) for v in values]
    for entry, counts in zip(cps["PixelsPerClass"], per_chip, strict=True):
        assert (entry["Min"], entry["Max"], entry["Sum"], entry["Count"]) == \
            (counts.min(), counts.max(), counts.sum(), len(images))
    n_classes = np.array([len(set(np.unique(lab)) - {0}) for lab in labels])
    assert cps["NumClassesPerImage"]["Sum"] == n_classes.sum()
    assert cps["NumClassesPerImage"]["Max"] == n_classes.max()

    # Band statistics over the valid pixels of the written chips.
    valid = (chips != 0).any(axis=1)
    for b, (state, all_tiles) in enumerate(zip(stats["BandStatsState"], emd["AllTilesStats"], strict=True)):
        v = chips[:, b][valid].astype(np.float64)
        assert state["Num"] == v.size and state["Min"] == v.min() and state["Max"] == v.max()
        assert math.isclose(state["M1"], v.mean(), rel_tol=1e-12)
        assert math.isclose(state["M2"], ((v - v.mean()) ** 2).sum(), rel_tol=1e-9)
        assert math.isclose(all_tiles["StdDev"], v.std(), rel_tol=1e-9) and all_tiles["Mean"] == state["Mean"]

    assert stats["MetaDataMode"] == emd["MetaDataMode"] == "Classified_Tiles"
    assert (emd["ImageHeight"], emd["ImageWidth"], emd["ExtractBands"]) == (64, 64, [0, 1, 2, 3])
    assert emd["ImageSpaceUsed"] == "MAP_SPACE" and emd["NoDataValue"] == 0 and emd["ChipFormat"] == "TIFF"
    assert [c["Value"] for c in emd["Classes"]] == values
    assert stats["MinCellSize"]["x"] == 1.0 and stats["MinCellSize"]["spatialReference"]["wkid"] == 32618
    assert len(emd["InputRastersProps"]["BandNames"]) == 4 == stats["NumBands"]
    txt = (out / "stats.txt").read_bytes().decode().split("\r\n")
    assert txt[0] == f"images = {len(images)} *4*64*64" and txt[1] == f"classes = {len(values)}"
    assert txt[3].startswith("cls name              cls value")
    row = txt[4].split()
    assert int(row[1]) == values[0] and int(row[3]) == cps["NumPixelsPerClass"][0]


def test_all_tiles_writes_unlabelled_but_never_empty_chips(scene, tmp_path):
    out = tmp_path / "all"
    s = export_training_data(scene["imagery"], scene["labels"], out, tile_size=64, stride=0, all_tiles=True,
                             progress=False)
    valid = (scene["img"] != 0).any(axis=0)
    wins = list(iter_windows(W, H, 64, 64))
    expect = [w for w in wins if padded(valid, w).any()]
    assert s.chips == len(chips_of(out)) == len(expect) < len(wins)
    grid = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 1, 1), W, H)
    empty = 0
    for p in chips_of(out, "labels"):
        with rasterio.open(p) as ds:
            empty += not ds.read(1).any()
            window_of(grid, ds.transform, 64)
    assert empty > 0
    assert read_json(out / "esri_accumulated_stats.json")["ClassPixelStats"]["NumClassesPerImage"]["Min"] == 0


# --- vector labels -------------------------------------------------------------------------------------------------

def test_polygons_in_another_crs_rasterized_on_the_grid(scene, tmp_path):
    out = tmp_path / "poly"
    s = export_training_data(scene["imagery"], scene["polygons"], out, tile_size=64, stride=64, progress=False)
    grid = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 1, 1), W, H)
    shapes = [(transform_geom("EPSG:4326", UTM, p.__geo_interface__), v)
              for p, v in zip(scene["polys"], (1, 2, 3), strict=True)]
    expected = rasterize(shapes, out_shape=(H, W), transform=grid.transform, dtype="uint8")
    expected[~(scene["img"] != 0).any(axis=0)] = 0
    total, covered = 0, np.zeros((H, W), dtype=bool)
    for p in chips_of(out, "labels"):
        with rasterio.open(p) as ds:
            win = window_of(grid, ds.transform, 64)
            assert np.array_equal(ds.read(1), padded(expected, win))
            total += int((ds.read(1) > 0).sum())
            covered[win.toslices()] = True
    assert total == sum(s.pixels_per_class.values())
    assert expected.any() and not expected[~covered].any()  # no labelled pixel left out (edge chips shifted in)
    stats = read_json(out / "esri_accumulated_stats.json")
    assert [(c["ClassValue"], c["ClassName"]) for c in stats["Classes"]] == [(1, "Water"), (2, "Forest"), (3, "Road")]


def test_points_buffered_in_layer_units(scene, tmp_path):
    import pyogrio
    import shapely
    pts = shapely.points([ORIGIN[0] + 100, ORIGIN[0] + 200], [ORIGIN[1] - 100, ORIGIN[1] - 150])
    gpkg = tmp_path / "points.gpkg"
    pyogrio.raw.write(gpkg, shapely.to_wkb(pts), [np.array([4, 2], dtype="int16")], ["code"], crs=UTM,
                      geometry_type="Point", driver="GPKG")
    out = tmp_path / "pts"
    s = export_training_data(scene["imagery"], gpkg, out, class_field="CODE", buffer_radius=10, tile_size=64,
                             stride=64, progress=False)
    # Two discs of radius 10 m at 1 m pixels: about pi * 100 pixels each.
    assert set(s.pixels_per_class) == {2, 4}
    for n in s.pixels_per_class.values():
        assert abs(n - math.pi * 100) < 20


# --- appending, extent and cell size, formats ---------------------------------------------------------------

def test_start_index_appends_and_merges_statistics(scene, tmp_path):
    out = tmp_path / "append"
    first = export_training_data(scene["imagery"], scene["labels"], out, tile_size=64, stride=64,
                                 extent=(ORIGIN[0], ORIGIN[1] - H, ORIGIN[0] + 150, ORIGIN[1]), progress=False)
    before = {p.name: p.read_bytes() for p in chips_of(out)}
    # Appending without --start-index is refused and changes nothing.
    assert cli("--imagery", scene["imagery"], "--labels", scene["polygons"], "--out", out,
               "--tile-size", 64) == 2
    # A start index inside the existing range would overwrite chips: refused.
    assert cli("--imagery", scene["imagery"], "--labels", scene["polygons"], "--out", out,
               "--tile-size", 64, "--start-index", first.next_index - 1) == 2
    # A different tile size cannot be merged.
    assert cli("--imagery", scene["imagery"], "--labels", scene["polygons"], "--out", out,
               "--tile-size", 32, "--start-index", first.next_index) == 2
    second = export_training_data(scene["imagery"], scene["polygons"], out, tile_size=64, stride=64,
                                  start_index=first.next_index, progress=False)
    assert second.first_index == first.next_index and second.appended
    assert {p.name: p.read_bytes() for p in chips_of(out)[: first.chips]} == before
    names = [p.name for p in chips_of(out)]
    assert names == [f"{i:09d}.tif" for i in range(second.next_index)]
    stats = read_json(out / "esri_accumulated_stats.json")
    assert stats["NumTiles"] == first.chips + second.chips == len(names) and stats["NextTileIndex"] == len(names)
    assert len((out / "map.txt").read_text().splitlines()) == len(names)

    labels = np.stack([rasterio.open(p).read(1) for p in chips_of(out, "labels")])
    chips = np.stack([rasterio.open(p).read() for p in chips_of(out)])
    values = [c["ClassValue"] for c in stats["Classes"]]
    assert values == sorted(set(first.pixels_per_class) | set(second.pixels_per_class))
    assert stats["ClassPixelStats"]["NumPixelsPerClass"] == [int((labels == v).sum()) for v in values]
    assert stats["ClassPixelStats"]["NumImagesTotal"] == len(names)
    # Class names: the folder's (colour table: the values) win; classes only the polygons have keep theirs.
    names_by_value = {c["ClassValue"]: c["ClassName"] for c in stats["Classes"]}
    assert all(names_by_value[v] == str(v) for v in first.pixels_per_class)
    for v in set(second.pixels_per_class) - set(first.pixels_per_class):
        assert names_by_value[v] == {1: "Water", 2: "Forest", 3: "Road"}[v]
    valid = (chips != 0).any(axis=1)
    for b, state in enumerate(stats["BandStatsState"]):
        v = chips[:, b][valid].astype(np.float64)
        assert state["Num"] == v.size
        assert math.isclose(state["M1"], v.mean(), rel_tol=1e-12)
        assert math.isclose(state["M2"], ((v - v.mean()) ** 2).sum(), rel_tol=1e-9)
        assert state["Min"] == v.min() and state["Max"] == v.max()


@pytest.mark.parametrize("cell", [2, 1.5])
def test_web_mercator_extent_and_cell_size_on_utm_imagery(scene, tmp_path, cell):
    """The seed's case: --extent in EPSG:3857, --cell-size 2, imagery in another CRS. The chips hold the pixels
    of the whole imagery resampled to the cell size (so adjacent extents export the same pixels)."""
    out = tmp_path / "seed"
    ext = transform_bounds(UTM, WM, ORIGIN[0] + 40, ORIGIN[1] - 220, ORIGIN[0] + 240, ORIGIN[1] - 30)
    assert cli("--imagery", scene["imagery"], "--labels", scene["labels"], "--out", out, "--tile-size", 32,
               "--stride", 0, "--cell-size", cell, "--extent", *ext, "--extent-crs", WM) == 0
    with rasterio.open(scene["imagery"]) as ds:
        grid = target_grid(Grid.of(ds), ext, WM, cell)
        whole = whole_grid(Grid.of(ds), cell)
        row, col = grid_window(whole, grid)[:2]
        with WarpedVRT(ds, crs=whole.crs, transform=whole.transform, width=whole.width, height=whole.height,
                       resampling=Resampling.bilinear, src_nodata=0, nodata=0) as vrt:
            resampled = vrt.read(window=Window(col, row, grid.width, grid.height))
    assert grid.res == (cell, cell) and grid.crs.to_epsg() == 32618
    want_labels = labels_on_grid(scene["labels"], grid)
    el, eb, er, et = transform_bounds(WM, UTM, *ext)
    assert chips_of(out)
    for ip, lp in zip(chips_of(out), chips_of(out, "labels"), strict=True):
        with rasterio.open(ip) as di, rasterio.open(lp) as dl:
            assert di.res == (cell, cell) and di.crs == grid.crs
            win = window_of(grid, di.transform, 32)
            cl, cb, cr, ct = di.bounds
            assert cl >= el - cell and cr <= er + cell and cb >= eb - cell and ct <= et + cell
            chip = di.read()
            assert np.array_equal(chip, padded(resampled, win))
            valid = (chip != 0).any(axis=0)
            assert np.array_equal(dl.read(1), np.where(valid, padded(want_labels, win), 0))
    emd = read_json(out / "esri_model_definition.emd")
    assert emd["MinCellSize"]["x"] == cell and emd["MinCellSize"]["spatialReference"]["wkid"] == 32618


@pytest.fixture(scope="module")
def rgb(tmp_path_factory, scene) -> Path:
    d = tmp_path_factory.mktemp("rgb")
    img = (scene["img"][:3] // 20).astype("uint8")
    return write_raster(d / "rgb.tif", img, crs=UTM, transform=from_origin(*ORIGIN, 1.0, 1.0), nodata=0)


@pytest.mark.parametrize("fmt,img_ext,lab_ext", [("png", ".png", ".png"), ("jpg", ".jpg", ".png")])
def test_png_and_jpeg_chips_get_world_files(scene, rgb, tmp_path, fmt, img_ext, lab_ext):
    out = tmp_path / fmt
    assert cli("--imagery", rgb, "--labels", scene["labels"], "--out", out, "--tile-size", 64, "--stride", 64,
               "--format", fmt) == 0
    images, labels = chips_of(out), chips_of(out, "labels")
    assert images and all(p.suffix == img_ext for p in images) and all(p.suffix == lab_ext for p in labels)
    assert (out / "map.txt").read_text().splitlines()[0] == f"images\\000000000{img_ext}  labels\\000000000{lab_ext} "
    grid = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 1, 1), W, H)
    want = labels_on_grid(scene["labels"], grid)
    world = {".png": ".pgw", ".jpg": ".jgw"}
    for ip, lp in zip(images, labels, strict=True):
        for p in (ip, lp):
            a, d, b, e, x, y = (float(v) for v in p.with_suffix(world[p.suffix]).read_text().split())
            with rasterio.open(p) as ds:
                assert ds.crs == grid.crs  # from the .aux.xml
                t = ds.transform
            assert (a, d, b, e) == (t.a, t.d, t.b, t.e) and (x, y) == (t.c + 0.5, t.f - 0.5)
        with rasterio.open(lp) as dl, rasterio.open(ip) as di:
            win = window_of(grid, dl.transform, 64)
            valid = (padded(scene["img"][:3], win) != 0).any(axis=0)
            assert np.array_equal(dl.read(1), np.where(valid, padded(want, win), 0))  # lossless labels
            assert di.count == 3 and di.dtypes[0] == "uint8"


def test_band_files_stacked_in_order(scene, tmp_path):
    bands = [write_raster(tmp_path / f"B{i}.tif", scene["img"][i], crs=UTM, transform=from_origin(*ORIGIN, 1, 1),
                          nodata=0) for i in (2, 0)]
    out = tmp_path / "stack"
    export_training_data(bands, scene["labels"], out, tile_size=64, stride=64, progress=False)
    grid = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 1, 1), W, H)
    with rasterio.open(chips_of(out)[0]) as ds:
        win = window_of(grid, ds.transform, 64)
        assert np.array_equal(ds.read(), padded(scene["img"][[2, 0]], win))
    emd = read_json(out / "esri_model_definition.emd")
    assert emd["InputRastersProps"]["BandNames"] == ["B2", "B0"]


def test_grid_smaller_than_a_tile_is_padded(tmp_path):
    img = np.full((2, 40, 50), 7, dtype="int16")
    lab = np.zeros((40, 50), dtype="uint8")
    lab[10:20, 10:30] = 9
    ip = write_raster(tmp_path / "small.tif", img, crs=UTM, nodata=-1)
    lp = write_raster(tmp_path / "small_lab.tif", lab, crs=UTM)
    s = export_training_data(ip, lp, tmp_path / "o", tile_size=64, stride=32, progress=False)
    assert s.chips == 1
    with rasterio.open(tmp_path / "o/images/000000000.tif") as ds:
        chip = ds.read()
        assert ds.nodata == -1 and (chip[:, :40, :50] == 7).all() and (chip[:, 40:] == -1).all()
        assert (chip[:, :, 50:] == -1).all()
    with rasterio.open(tmp_path / "o/labels/000000000.tif") as ds:
        assert int((ds.read(1) == 9).sum()) == 200 and ds.read(1)[40:].max() == 0


# --- bad input -------------------------------------------------------------------------------------------------

def _looks_complete(out: Path) -> bool:
    return (out / "esri_accumulated_stats.json").exists() or (out / "map.txt").exists()


@pytest.fixture(scope="module")
def bad(scene, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    img = scene["img"]
    t = from_origin(*ORIGIN, 1, 1)
    lab = np.zeros((H, W), dtype="float32")
    lab[50:100, 50:100] = 1.5
    lab16 = np.zeros((H, W), dtype="int16")
    lab16[50:100, 50:100] = 300
    (d / "broken.tif").write_text("not a raster")
    import pyogrio
    import shapely
    pyogrio.raw.write(d / "fracs.gpkg", shapely.to_wkb([shapely.box(ORIGIN[0], ORIGIN[1] - 50, ORIGIN[0] + 50,
                                                                     ORIGIN[1])]),
                      [np.array([2.5])], ["value"], crs=UTM, geometry_type="Polygon", driver="GPKG")
    return {
        "b1": write_raster(d / "b1.tif", img[0], crs=UTM, transform=t, nodata=0),
        # band files may differ in grid (they are stacked on the finest), not in CRS
        "b2_other_crs": write_raster(d / "b2.tif", img[1], crs="EPSG:32619", transform=t),
        "far_labels": write_raster(d / "far.tif", np.ones((10, 10), "uint8"), crs=UTM,
                                   transform=from_origin(100000, 100000, 1, 1)),
        "float_labels": write_raster(d / "float.tif", lab, crs=UTM, transform=t),
        "int16_labels": write_raster(d / "int16.tif", lab16, crs=UTM, transform=t),
        "broken": d / "broken.tif",
        "fracs": d / "fracs.gpkg",
    }


def _bad_cases(scene, bad):
    img, lab, poly = scene["imagery"], scene["labels"], scene["polygons"]
    return [
        ("missing imagery", ["--imagery", "nope.tif", "--labels", lab], "nope.tif"),
        ("unreadable imagery", ["--imagery", bad["broken"], "--labels", lab], "broken.tif"),
        ("missing labels", ["--imagery", img, "--labels", "missing.gpkg"], "missing.gpkg"),
        ("band files on different CRSs", ["--imagery", bad["b1"], bad["b2_other_crs"], "--labels", lab], "b2.tif"),
        ("labels outside the imagery", ["--imagery", img, "--labels", bad["far_labels"]], "far.tif"),
        ("labels outside the extent", ["--imagery", img, "--labels", poly, "--extent", ORIGIN[0] + 285,
                                       ORIGIN[1] - 20, ORIGIN[0] + 300, ORIGIN[1]], "polygons.gpkg"),
        ("xmin >= xmax", ["--imagery", img, "--labels", lab, "--extent", 10, 0, 5, 1], "--extent"),
        ("tile 0", ["--imagery", img, "--labels", lab, "--tile-size", 0], "--tile-size"),
        ("stride < 0", ["--imagery", img, "--labels", lab, "--stride", -4], "--stride"),
        ("stride > tile", ["--imagery", img, "--labels", lab, "--tile-size", 64, "--stride", 65], "--stride"),
        ("unknown class field", ["--imagery", img, "--labels", poly, "--class-field", "kind"], "'kind'"),
        ("text class field", ["--imagery", img, "--labels", poly, "--class-field", "classname"], "'Water'"),
        ("non-integer raster labels", ["--imagery", img, "--labels", bad["float_labels"]], "float.tif"),
        ("labels outside 0..255", ["--imagery", img, "--labels", bad["int16_labels"]], "int16.tif"),
        ("non-integer class field", ["--imagery", img, "--labels", bad["fracs"]], "fracs.gpkg"),
        ("png with 4 bands", ["--imagery", img, "--labels", lab, "--format", "png"], "img.tif"),
        ("jpeg with 16-bit imagery", ["--imagery", bad["b1"], "--labels", lab, "--format", "jpg"], "b1.tif"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_nothing_complete(scene, bad, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, (what, args, needle) in enumerate(_bad_cases(scene, bad)):
        out = tmp_path / f"out{i}"
        rc = cli(*args, "--out", out)
        err = capsys.readouterr().err.strip()
        assert rc == 2, what
        assert len(err.splitlines()) == 1 and needle in err, (what, err)
        assert not _looks_complete(out), what
        assert not (out / "images").exists() or not any((out / "images").iterdir()), what


def test_messages_name_arguments_as_the_user_gave_them(scene, tmp_path, capsys):
    """The Python API names its arguments (``stride=300``), the CLI its flags (``--stride 300``)."""
    img, lab = scene["imagery"], scene["labels"]
    with pytest.raises(LandcoverError, match=re.escape("stride=300: must not exceed tile_size=256 (pixels")):
        export_training_data(img, lab, tmp_path / "api", stride=300, progress=False)
    assert cli("--imagery", img, "--labels", lab, "--out", tmp_path / "cli", "--stride", 300) == 2
    assert "error: --stride 300: must not exceed --tile-size 256 (pixels" in capsys.readouterr().err
    # chip_format is --format on the command line
    with pytest.raises(LandcoverError, match=re.escape("but the imagery has 4; use chip_format='tif'")):
        export_training_data(img, lab, tmp_path / "api", chip_format="png", progress=False)
    assert cli("--imagery", img, "--labels", lab, "--out", tmp_path / "cli", "--format", "png") == 2
    assert capsys.readouterr().err.strip().endswith("but the imagery has 4; use --format tif")


def test_existing_export_refused_without_start_index(scene, raster_export, capsys):
    before = (raster_export / "esri_accumulated_stats.json").read_bytes()
    n = len(chips_of(raster_export))
    rc = cli("--imagery", scene["imagery"], "--labels", scene["labels"], "--out", raster_export)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "already holds an export" in err
    assert (raster_export / "esri_accumulated_stats.json").read_bytes() == before
    assert len(chips_of(raster_export)) == n


def test_failure_mid_export_removes_its_chips(scene, tmp_path, monkeypatch):
    import landcover.export.core as core
    monkeypatch.setattr(core, "BLOCK_ROWS", 64)  # several blocks, so chips are written before the bad value
    lab = np.zeros((H, W), dtype="int16")
    lab[30:60, 30:200] = 2
    lab[230:240, 100:110] = -5
    bad_labels = write_raster(tmp_path / "late_bad.tif", lab, crs=UTM, transform=from_origin(*ORIGIN, 1, 1))
    out = tmp_path / "partial"
    with pytest.raises(LandcoverError, match="late_bad.tif: label value -5 is outside 0..255"):
        export_training_data(scene["imagery"], bad_labels, out, tile_size=32, stride=32, workers=2,
                             progress=False)
    assert not out.exists() or not any(out.rglob("*.tif"))
    assert not _looks_complete(out)


def test_cli_subprocess_runs_and_prints_a_summary(scene, tmp_path):
    out = tmp_path / "sub"
    r = subprocess.run([sys.executable, "-m", "landcover.cli", "export", "--imagery", str(scene["imagery"]),
                        "--labels", str(scene["polygons"]), "--out", str(out), "--tile-size", "128"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "chips" in r.stdout and "Water=" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert (out / "esri_model_definition.emd").exists()


def test_class_names_from_attribute_table_then_classes_json(tmp_path):
    from landcover.classes import ClassInfo, write_class_table
    img = np.full((3, 64, 64), 50, dtype="uint8")
    lab = np.zeros((64, 64), dtype="uint8")
    lab[:32] = 1
    lab[32:, :16] = 9
    ip = write_raster(tmp_path / "i.tif", img, crs=UTM)
    lp = write_raster(tmp_path / "l.tif", lab, crs=UTM)
    write_class_table(lp, [ClassInfo(1, "Water", (0, 197, 255)), ClassInfo(9, "Impervious Roads", (0, 0, 0))])
    s = export_training_data(ip, lp, tmp_path / "a", tile_size=32, stride=32, progress=False)
    stats = read_json(tmp_path / "a/esri_accumulated_stats.json")
    assert [(c["ClassValue"], c["ClassName"], c["Color"]) for c in stats["Classes"]] == \
        [(1, "Water", [0, 197, 255]), (9, "Impervious Roads", [0, 0, 0])]
    assert s.pixels_per_class == {1: 32 * 64, 9: 32 * 16}
    # --classes wins over the raster's table, and a class it defines that never occurs is still listed.
    cj = tmp_path / "classes.json"
    cj.write_text(json.dumps({"1": {"name": "Open water", "color": "#0000ff"}, "5": "Low Vegetation"}))
    assert cli("--imagery", ip, "--labels", lp, "--out", tmp_path / "b", "--classes", cj, "--tile-size", 32,
               "--stride", 0) == 0
    emd = read_json(tmp_path / "b/esri_model_definition.emd")
    assert [(c["Value"], c["Name"]) for c in emd["Classes"]] == [(1, "Open water"), (5, "Low Vegetation"),
                                                                 (9, "Impervious Roads")]
    assert emd["Classes"][0]["Color"] == [0, 0, 255]
    stats = read_json(tmp_path / "b/esri_accumulated_stats.json")
    assert stats["ClassPixelStats"]["NumPixelsPerClass"] == [32 * 64, 0, 32 * 16]


def test_float_imagery_with_nan_nodata(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.normal(0.2, 0.05, (2, 80, 80)).astype("float32")
    img[:, :, :30] = np.nan
    lab = np.ones((80, 80), dtype="uint8")
    ip = write_raster(tmp_path / "f.tif", img, crs=UTM, nodata=float("nan"))
    lp = write_raster(tmp_path / "fl.tif", lab, crs=UTM)
    s = export_training_data(ip, lp, tmp_path / "o", tile_size=32, stride=32, progress=False)
    chips = np.stack([rasterio.open(p).read() for p in chips_of(tmp_path / "o")])
    labels = np.stack([rasterio.open(p).read(1) for p in chips_of(tmp_path / "o", "labels")])
    valid = ~np.isnan(chips).all(axis=1)
    assert np.array_equal(labels > 0, valid) and s.pixels_per_class == {1: int(valid.sum())}
    emd = read_json(tmp_path / "o/esri_model_definition.emd")
    assert emd["NoDataValue"] == "NaN" and emd["DataType"] == "float32"
    for b, st in enumerate(read_json(tmp_path / "o/esri_accumulated_stats.json")["BandStatsState"]):
        v = chips[:, b][valid].astype(np.float64)
        assert st["Num"] == v.size and math.isclose(st["M1"], v.mean(), rel_tol=1e-9)
        assert math.isclose(st["StdDev"], v.std(), rel_tol=1e-6)


# --- arcgis.learn's call ----------------------------------------------------------------------------------------

def test_arcgis_learn_call_exports_what_the_plain_call_does(scene, tmp_path):
    """The land-cover sample's call (input_raster, input_class_data, output_location, {"x", "y"} sizes, stride 0,
    a context with startIndex, exportAllTiles, cellSize and a Web Mercator envelope) writes the same chips as
    landcover's own arguments with that meaning."""
    ext = transform_bounds(UTM, WM, ORIGIN[0] + 40, ORIGIN[1] - 220, ORIGIN[0] + 240, ORIGIN[1] - 30)
    envelope = dict(zip(("xmin", "ymin", "xmax", "ymax"), ext, strict=True),
                    spatialReference={"wkid": 102100, "latestWkid": 3857})
    seed = tmp_path / "seed"
    export_training_data(input_raster=scene["imagery"], input_class_data=scene["labels"], output_location=seed,
                         chip_format="TIFF", tile_size={"x": 32, "y": 32}, stride_size={"x": 0, "y": 0},
                         metadata_format="Classified_Tiles", progress=False,
                         context={"startIndex": 0, "exportAllTiles": False, "cellSize": 2, "extent": envelope})
    plain = tmp_path / "plain"
    export_training_data(scene["imagery"], scene["labels"], plain, tile_size=32, stride=32, cell_size=2,
                         extent=ext, extent_crs=WM, progress=False)
    names = [p.name for p in chips_of(plain)]
    assert names and [p.name for p in chips_of(seed)] == names
    for sub in ("images", "labels"):
        for a, b in zip(chips_of(seed, sub), chips_of(plain, sub), strict=True):
            with rasterio.open(a) as da, rasterio.open(b) as db:
                assert da.transform == db.transform and da.res == (2.0, 2.0)
                assert np.array_equal(da.read(), db.read())
    # exportAllTiles as arcgis's string, and the stride given in both forms when they agree
    counts = []
    for all_tiles in ("True", "False"):
        out = tmp_path / f"all-{all_tiles}"
        export_training_data(input_raster=scene["imagery"], input_class_data=scene["labels"], output_location=out,
                             tile_size=32, stride=32, stride_size={"x": 32, "y": 32},
                             context={"exportAllTiles": all_tiles}, progress=False)
        counts.append(len(chips_of(out)))
    export_training_data(scene["imagery"], scene["labels"], tmp_path / "all", tile_size=32, stride=32,
                         all_tiles=True, progress=False)
    assert counts[0] == len(chips_of(tmp_path / "all")) > counts[1]


@pytest.mark.parametrize("kwargs, words", [
    ({"tile_size": {"x": 32, "y": 64}}, "square"),
    ({"stride_size": {"x": 16}}, "{'x': n, 'y': n}"),
    ({"stride": 16, "stride_size": {"x": 8, "y": 8}}, "give it once"),
    ({"context": {"outSR": {"wkid": 4326}}}, "reproject the result"),
    ({"context": {"cellSize": "MAXOF"}}, "as a number"),
    ({"context": {"exportAllTiles": "perhaps"}}, "True or False"),
    ({"context": {"extent": {"xmin": 0, "ymin": 0, "xmax": 1}}}, "lacks ymax"),
    ({"context": {"extent": {"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1, "spatialReference": {"wkid": 1}}}},
     "not an EPSG or ESRI code"),
    ({"context": {"rotation": 90}}, "not a setting"),
    ({"gis": object()}, "drop gis="),
    ({"input_raster": "other.tif"}, "give it once"),
    # given at its default, all_tiles=False still contradicts exportAllTiles
    ({"all_tiles": False, "context": {"exportAllTiles": True}}, "all_tiles=False and context['exportAllTiles']=True"),
    ({"buffer_radius": "abc"}, "buffer_radius='abc': give a number"),
    ({"rotation_angle": 90}, "rotation_angle=90: not supported"),
    ({"tilesize": 128}, "unexpected keyword argument 'tilesize'"),
    ({"tile_size": 128.5}, "tile_size=128.5: give a whole number"),
    ({"out": "TIFF", "output_location": "x"}, "third positional argument is chip_format"),
    ({"context": {"cellSize": 0.01}}, "100 times finer than"),
])
def test_arcgis_learn_forms_landcover_cannot_honour_are_one_line(scene, tmp_path, kwargs, words):
    call = {"imagery": scene["imagery"], "labels": scene["labels"], "out": tmp_path / "x", "progress": False}
    with pytest.raises(LandcoverError, match=re.escape(words)):
        export_training_data(**{**call, **kwargs})
    assert not (tmp_path / "x").exists()


def test_arcgis_learn_defaults_and_a_world_extent_are_accepted(scene, tmp_path):
    """The seed's other keywords at their defaults, string sizes, a path given both ways, and an extent that
    contains the raster but cannot be projected into its UTM zone (the whole world in degrees)."""
    world = {"xmin": -180, "ymin": -90, "xmax": 180, "ymax": 90, "spatialReference": {"wkid": 4326}}
    export_training_data(scene["imagery"], input_raster=str(scene["imagery"]), input_class_data=scene["labels"],
                         output_location=tmp_path / "x", tile_size={"x": "64.0", "y": "64"}, rotation_angle=0,
                         reference_system="MAP_SPACE", process_all_raster_items=False, future=False,
                         context={"extent": world}, progress=False)
    export_training_data(scene["imagery"], scene["labels"], tmp_path / "y", tile_size=64, progress=False)
    assert [p.name for p in chips_of(tmp_path / "x")] == [p.name for p in chips_of(tmp_path / "y")]


def test_arcgis_learn_server_only_context_keys_warn_and_export(scene, tmp_path):
    with pytest.warns(UserWarning, match="parallelProcessingFactor"):
        export_training_data(input_raster=scene["imagery"], input_class_data=scene["labels"],
                             output_location=tmp_path / "x", tile_size=64, stride_size={"x": 0, "y": 0},
                             context={"parallelProcessingFactor": "80%"}, progress=False)
    assert chips_of(tmp_path / "x")


def test_labels_on_the_imagery_grid_covering_part_of_it(scene, tmp_path):
    """Labels cut from the imagery's grid label only where they lie (they were once stretched over the grid)."""
    lab = np.zeros((H, W), np.uint8)
    lab[60:200, 90:210] = 1 + (np.arange(120)[None, :] // 30 + np.arange(140)[:, None] // 35) % 4
    part = write_raster(tmp_path / "part.tif", lab[60:200, 90:210], crs=UTM,
                        transform=from_origin(ORIGIN[0] + 90, ORIGIN[1] - 60, 1.0, 1.0), nodata=0)
    out = tmp_path / "chips"
    export_training_data(scene["imagery"], part, out, tile_size=64, stride=0, progress=False)
    with rasterio.open(scene["imagery"]) as ds:
        grid = Grid.of(ds)
    assert chips_of(out, "labels")
    for ip, lp in zip(chips_of(out), chips_of(out, "labels"), strict=True):
        with rasterio.open(ip) as di, rasterio.open(lp) as dl:
            win = window_of(grid, di.transform, 64)
            valid = (di.read() != 0).any(axis=0)
            assert np.array_equal(dl.read(1), np.where(valid, padded(lab, win), 0))


def test_truncated_imagery_is_one_line_naming_it(scene, tmp_path, capsys):
    """Its header opens but its pixels do not: the export says which file, as classify does."""
    full = write_raster(tmp_path / "full.tif", scene["img"], crs=UTM, transform=from_origin(*ORIGIN, 1.0, 1.0),
                        nodata=0, tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(LandcoverError, match="cut.tif: cannot read its pixels"):
        export_training_data(cut, scene["labels"], tmp_path / "x", tile_size=64, progress=False)
    assert cli("--imagery", cut, "--labels", scene["labels"], "--out", tmp_path / "y") == 2
    assert "cut.tif: cannot read its pixels" in capsys.readouterr().err
