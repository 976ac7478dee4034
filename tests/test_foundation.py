"""The foundation: CLI conventions, class tables, grids and safe outputs."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NodataShadowWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.classes import ClassInfo, load_classes_json, read_class_table, write_class_table
from landcover.errors import LandcoverError
from landcover.raster import Grid, GridReader, atomic_output, iter_windows, target_grid


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "landcover.cli", *args], capture_output=True, text=True)


def test_cli_help_and_bad_usage():
    ok = run_cli("--help")
    assert ok.returncode == 0 and "export" in ok.stdout
    bad = run_cli("no-such-command")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_class_table_round_trip(make_raster, tmp_path):
    path = make_raster("cls.tif", np.array([[1, 2], [3, 0]], dtype="uint8"), nodata=0)
    classes = [ClassInfo(1, "Water", (0, 197, 255)), ClassInfo(2, "Tree Canopy", (38, 115, 0)),
               ClassInfo(3, "Roads & paths", (0, 0, 0))]
    write_class_table(path, classes)
    assert read_class_table(path) == classes
    with rasterio.open(path) as ds:
        assert ds.colormap(1)[1] == (0, 197, 255, 255)
    assert 'label="Roads &amp; paths"' in path.with_suffix(".qml").read_text()


def test_classes_json_forms(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"1": {"name": "Water", "color": "#00c5ff"}, "5": "Low Vegetation"}')
    cls = load_classes_json(f)
    assert [c.value for c in cls] == [1, 5] and cls[0].color == (0, 197, 255) and cls[1].name == "Low Vegetation"
    f.write_text('{"0": "nothing"}')
    with pytest.raises(LandcoverError, match="outside 1..255"):
        load_classes_json(f)


def test_target_grid_extent_in_other_crs_and_cell_size():
    src = Grid(rasterio.crs.CRS.from_epsg(32617), from_origin(500000, 4300000, 1, 1), 1000, 1000)
    assert target_grid(src) == src
    # An extent in Web Mercator around the raster's centre, snapped to source pixels.
    from rasterio.warp import transform_bounds
    wm = transform_bounds("EPSG:32617", "EPSG:3857", 500200, 4299200, 500400, 4299400)
    g = target_grid(src, extent=wm, extent_crs="EPSG:3857")
    assert g.res == (1.0, 1.0) and g.crs == src.crs
    left, b, r, t = g.bounds
    assert left <= 500200 + 1 and r >= 500400 - 1 and b <= 4299200 + 1 and t >= 4299400 - 1
    g2 = target_grid(src, cell_size=2)
    assert (g2.width, g2.height, g2.res) == (500, 500, (2.0, 2.0))
    # with a cell size, an extent is snapped outward to the cells of the raster resampled from its corner
    g3 = target_grid(src, extent=(500101.3, 4299000.5, 500300.2, 4299300.1), cell_size=2)
    assert g3.bounds == (500100, 4299000, 500302, 4299302) and (g3.width, g3.height) == (101, 151)
    # cells that do not divide the raster: as many as cover it, so an extent in its last metre has its cell
    assert (target_grid(src, cell_size=3).width, target_grid(src, cell_size=3).height) == (334, 334)
    g4 = target_grid(src, extent=(500999.2, 4299500, 500999.8, 4299600), cell_size=3)
    assert g4.width == 1 and g4.bounds[0] == 500999 and g4.bounds[2] == 501002
    with pytest.raises(LandcoverError, match="xmin must be < xmax"):
        target_grid(src, extent=(5, 0, 1, 1))
    with pytest.raises(LandcoverError, match="does not overlap"):
        target_grid(src, extent=(0, 0, 1, 1))


def test_grid_reader_windows_and_nodata(make_raster):
    arr = np.arange(100, dtype="uint16").reshape(1, 10, 10) + 1
    arr[0, :2, :] = 0
    path = make_raster("img.tif", arr, nodata=0)
    with rasterio.open(path) as ds, GridReader(ds, Grid.of(ds)) as rd:
        data, valid = rd.read(Window(-2, -2, 6, 6))
        assert data.shape == (1, 6, 6)
        assert not valid[:4].any() and valid[4:, 2:].all()
        assert (data[0, 4:, 2:] == arr[0, 2:4, 0:4]).all()
    with rasterio.open(path) as ds, GridReader(ds, target_grid(Grid.of(ds), cell_size=2)) as rd:
        data, valid = rd.read(Window(0, 0, 5, 5))
        assert data.shape == (1, 5, 5) and valid[1:].all() and not valid[0].any()
    # A window of the raster read within the whole grid: past the window's edges only with beyond=True.
    with rasterio.open(path) as ds:
        whole = Grid.of(ds)
        part = Grid(whole.crs, whole.window_transform(Window(3, 2, 5, 4)), 5, 4)  # rows 2..5, cols 3..7
        win = Window(-1, -1, 7, 6)  # one pixel past every edge of the part
        with GridReader(ds, part, within=whole, beyond=True) as rd:
            data, valid = rd.read(win)
            assert valid[1:].all() and not valid[0].any()  # row 1 is the raster's nodata
            assert np.array_equal(data[0, 1:], arr[0, 2:7, 2:9])
        with GridReader(ds, part, within=whole) as rd:
            data, valid = rd.read(win)
            assert valid[1:-1, 1:-1].all() and valid.sum() == 20 and np.array_equal(data[0, 1:-1, 1:-1],
                                                                                     arr[0, 2:6, 3:8])
        with pytest.raises(ValueError):
            GridReader(ds, target_grid(whole, cell_size=2), within=whole)


@pytest.mark.parametrize(("bands", "dtype", "nodata", "indexes"), [
    (3, "uint8", 0, None),  # mask: any band is not nodata
    (4, "uint8", 0, None),  # GDAL takes band 4 for alpha, but it is read as data: nodata decides (below)
    (4, "uint8", 0, [4, 1]),
    (4, "uint8", 0, [1, 2, 3]),  # the alpha band is not read: GDAL's mask is read instead
    (2, "int16", -9999, None),
    (3, "float32", 0, None),  # floats: GDAL's mask
    (4, "uint8", None, None),  # band 4 read as data and no nodata: every pixel is valid
])
def test_grid_reader_mask_matches_gdal(make_raster, bands, dtype, nodata, indexes):
    """The mask GridReader derives from the pixels it read is GDAL's dataset mask, except that a band GDAL tags
    alpha (rasterio's default for 4-band uint8) is not a mask when it is read as data (issue 19: NIR 0 over
    water made holes)."""
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 3, (bands, 40, 50)).astype(dtype)
    if nodata is not None:
        arr[:, :6, :6] = nodata
    path = make_raster(f"m{bands}{dtype}.tif", arr, nodata=nodata)
    win = Window(-3, 2, 30, 30)
    with warnings.catch_warnings(), rasterio.open(path) as ds:
        warnings.simplefilter("ignore", NodataShadowWarning)
        data, valid = GridReader(ds, Grid.of(ds), indexes=indexes).read(win)
        expected = np.zeros((30, 30), bool)
        alpha_read = bands == 4 and (indexes is None or 4 in indexes)
        if alpha_read:
            read = ds.read(indexes or list(range(1, bands + 1)), window=Window(0, 2, 27, 30))
            expected[:, 3:] = True if nodata is None else (read != nodata).any(axis=0)
        else:
            expected[:, 3:] = ds.dataset_mask(window=Window(0, 2, 27, 30)) > 0
    assert np.array_equal(valid, expected)
    assert (data[:, ~valid] == 0).all()


def test_iter_windows_cover_edges():
    wins = list(iter_windows(10, 7, 4, 3))
    cols = sorted({w.col_off for w in wins})
    rows = sorted({w.row_off for w in wins})
    assert cols == [0, 3, 6] and rows == [0, 3]
    assert list(iter_windows(3, 3, 4)) == [Window(0, 0, 4, 4)]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_atomic_output_moves_sidecars(make_raster, tmp_path):
    target = tmp_path / "classes.tif"
    with atomic_output(target) as tmp:
        make_raster(tmp.name, np.ones((4, 4), "uint8"))
        write_class_table(tmp, [ClassInfo(1, "Water", (0, 0, 255))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.qml", "classes.tif", "classes.tif.aux.xml"]
    assert read_class_table(target)[0].name == "Water"


def test_gdal_block_cache_is_sized_in_bytes():
    """rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64 as bytes: a value meant as MB (512) leaves GDAL with a
    512-byte cache, and every overlapping window decodes its blocks again."""
    from landcover.raster import GDAL_ENV

    with rasterio.Env(**GDAL_ENV):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] >= 64 * 2**20


def test_esri_spatial_references_and_envelopes():
    from pyproj import CRS

    from landcover.arcgis_keywords import esri_crs, esri_extent

    assert esri_crs({"wkid": 102100, "latestWkid": 3857}) == "EPSG:3857"
    assert esri_crs({"wkid": 102100}) == "EPSG:3857"
    assert esri_crs({"wkid": 32618}) == "EPSG:32618"
    assert esri_crs({"wkid": 102003}) == "ESRI:102003"  # USA Contiguous Albers, an Esri-only id
    wkt = CRS.from_epsg(26918).to_wkt()
    assert esri_crs({"wkt": wkt}) == wkt
    assert esri_extent("1 2 3 4") == ((1.0, 2.0, 3.0, 4.0), None)
    assert esri_extent([1, 2, 3, 4]) == ((1.0, 2.0, 3.0, 4.0), None)
    assert esri_extent({"XMin": 1, "YMin": 2, "XMax": 3, "YMax": 4}) == ((1.0, 2.0, 3.0, 4.0), None)
    with pytest.raises(LandcoverError, match="four numbers"):
        esri_extent("MAXOF")


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    from landcover.raster import check_writable_dir

    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(LandcoverError, match="notes.txt: is a file, not a folder; choose another"):
        check_writable_dir(blocker)
    with pytest.raises(LandcoverError, match="notes.txt: is a file, not a folder, so the output folder .*sub"):
        check_writable_dir(blocker / "sub")
