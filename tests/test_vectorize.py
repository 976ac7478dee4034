"""Vectorize: polygons round-trip to the raster, the minimum mapping unit removes small patches, fields and CRS."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import shapely
from pyogrio.raw import read
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin

import landcover.areas
from conftest import write_raster
from landcover import vectorize
from landcover.classes import ClassInfo, write_class_table
from landcover.cli import main
from landcover.errors import LandcoverError

T = from_origin(500000.0, 4300000.0, 2.0, 2.0)  # 2 m pixels: 4 m² each
CLASSES = [ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(2, "Forest", (0, 128, 0)), ClassInfo(3, "Road", (9, 9, 9))]


def _burn(gpkg, shape, field="classvalue"):
    meta, _, wkb, fields = read(str(gpkg))
    values = fields[list(meta["fields"]).index(field)]
    return rasterize(zip(shapely.from_wkb(wkb), values.tolist(), strict=True), out_shape=shape, transform=T,
                     fill=0, dtype="int32"), meta


def _scene():
    """Two big fields, small patches (sizes 1, 4 and 6 pixels), a no-data corner with a speck and a hole."""
    a = np.ones((40, 60), np.uint8)
    a[:, 30:] = 2
    a[5, 5] = 3  # 1 px in Water
    a[10:12, 40:42] = 3  # 4 px in Forest
    a[20:22, 10:13] = 3  # 6 px in Water
    a[30:, 45:] = 255  # no data (the raster's nodata value)
    a[35, 50] = 1  # 1 px speck inside no data
    a[3, 50] = 0  # a 1-px no-data hole in Forest
    return a


def test_round_trip_without_minimum_unit(tmp_path, monkeypatch):
    monkeypatch.setattr(landcover.areas, "STRIP_PIXELS", 200)
    a = _scene()
    path = write_raster(tmp_path / "c.tif", a, nodata=255, transform=T)
    write_class_table(path, CLASSES)
    out = tmp_path / "polys.gpkg"
    info = vectorize(path, out)
    burnt, meta = _burn(out, a.shape)
    expected = np.where(a == 255, 0, a)
    np.testing.assert_array_equal(burnt, expected)
    assert info["min_area_pixels"] == 1 and info["features"] == sum(info["per_class"].values())
    assert info["per_class"] == {1: 2, 2: 1, 3: 3}
    assert list(meta["fields"]) == ["classvalue", "classname"]
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32617)
    _, _, _, fields = read(str(out))
    assert dict(zip(fields[0].tolist(), fields[1].tolist(), strict=True)) == {1: "Water", 2: "Forest", 3: "Road"}


def test_minimum_mapping_unit_removes_small_patches(tmp_path):
    a = _scene()
    path = write_raster(tmp_path / "c.tif", a, nodata=255, transform=T)
    out = tmp_path / "mmu.gpkg"
    info = vectorize(path, out, min_area=20.0)  # 20 m² = 5 pixels: patches of 1 and 4 px go, 6 px stays
    assert info["min_area_pixels"] == 5
    burnt, _ = _burn(out, a.shape)
    expected = np.ones_like(a, dtype=np.int32)
    expected[:, 30:] = 2
    expected[20:22, 10:13] = 3
    expected[30:, 45:] = 0  # no data stays no data, and its 1-px speck is gone
    expected[3, 50] = 0  # the no-data hole is not filled with a class
    np.testing.assert_array_equal(burnt, expected)
    assert info["per_class"] == {1: 1, 2: 1, 3: 1}


def test_eight_connectivity_joins_diagonal_pixels_in_valid_geometries(tmp_path):
    a = np.zeros((6, 6), np.uint8)
    a[1, 1] = a[2, 2] = a[3, 3] = 1
    a[1:4, 4] = 2  # a patch that touches itself at a corner once joined diagonally: an invalid ring from GDAL
    a[3, 5] = a[2, 3] = 2
    path = write_raster(tmp_path / "d.tif", a, nodata=0, transform=T)
    assert vectorize(path, tmp_path / "four.gpkg")["features"] == 4
    assert vectorize(path, tmp_path / "eight.gpkg", connectivity=8)["per_class"] == {1: 1, 2: 1}
    burnt, meta = _burn(tmp_path / "eight.gpkg", a.shape)
    np.testing.assert_array_equal(burnt, a)
    geoms = shapely.from_wkb(read(str(tmp_path / "eight.gpkg"))[2])
    assert meta["geometry_type"] == "MultiPolygon" and shapely.is_valid(geoms).all()


def test_minimum_unit_merges_clusters_of_small_patches_and_keeps_every_class_pixel(tmp_path):
    """A cluster of small patches (neighbours small too) and small patches against no data: after sieving no
    polygon is below the unit, and the classified area is unchanged (nothing merged into no data)."""
    rng = np.random.default_rng(3)
    a = np.ones((60, 60), np.uint8)
    a[:, 30:] = 2
    a[10:22, 5:17] = rng.integers(3, 6, (12, 12))  # a 12 x 12 mosaic of 1-4 px patches of classes 3-5
    a[40:, 40:] = 255  # no data
    a[39, 42:44] = 3  # 2 px against no data (and Forest)
    a[45:47, 39] = 4  # 2 px against no data (and Forest)
    path = write_raster(tmp_path / "c.tif", a, nodata=255, transform=T)
    for connectivity in (4, 8):
        out = tmp_path / f"mmu{connectivity}.gpkg"
        info = vectorize(path, out, min_area=8 * 4.0, connectivity=connectivity)  # 8 pixels
        geoms = shapely.from_wkb(read(str(out))[2])
        assert shapely.is_valid(geoms).all()
        assert shapely.area(geoms).min() >= 8 * 4.0 - 1e-6, connectivity
        burnt, _ = _burn(out, a.shape)
        assert ((burnt != 0) == (a != 255)).all()  # every classified pixel still has a class
        assert info["features"] == len(geoms)


def test_messages_name_arguments_as_the_user_gave_them(tmp_path, capsys):
    """``min_area=1000.0`` from Python, ``--min-area 1000.0`` from the CLI."""
    ok = write_raster(tmp_path / "ok.tif", np.ones((5, 5), np.uint8), transform=T)  # 100 m²
    with pytest.raises(LandcoverError, match=r"^min_area=1000\.0: not smaller than the whole raster"):
        vectorize(ok, tmp_path / "a.gpkg", min_area=1000.0)
    assert main(["vectorize", str(ok), "--out", str(tmp_path / "c.gpkg"), "--min-area", "1000"]) == 2
    assert "error: --min-area 1000.0: not smaller than the whole raster" in capsys.readouterr().err


def test_bad_input(tmp_path, capsys):
    empty = write_raster(tmp_path / "e.tif", np.zeros((5, 5), np.uint8), nodata=0, transform=T)
    with pytest.raises(LandcoverError, match="every pixel is no data"):
        vectorize(empty, tmp_path / "e.gpkg")
    ok = write_raster(tmp_path / "ok.tif", np.ones((5, 5), np.uint8), transform=T)
    assert main(["vectorize", str(ok), "--out", str(tmp_path / "x.shp")]) == 2
    assert "GeoPackage" in capsys.readouterr().err
    assert not (tmp_path / "e.gpkg").exists()
    for bad in ("1e12", "nan", "inf"):  # larger than the raster, not a number: one line each
        assert main(["vectorize", str(ok), "--out", str(tmp_path / "m.gpkg"), "--min-area", bad]) == 2
        assert "--min-area" in capsys.readouterr().err
    halves = write_raster(tmp_path / "f.tif", np.full((5, 5), 1.5, np.float32), transform=T)
    with pytest.raises(LandcoverError, match="1.5 is not an integer"):  # rounding would merge classes
        vectorize(halves, tmp_path / "f.gpkg")
    no_crs = write_raster(tmp_path / "n.tif", np.ones((5, 5), np.uint8), crs=None, transform=T)
    with pytest.raises(LandcoverError, match="no CRS"):
        vectorize(no_crs, tmp_path / "n.gpkg")
    assert not list(tmp_path.glob("*.gpkg"))


def test_cli(tmp_path, capsys):
    a = _scene()
    path = write_raster(tmp_path / "c.tif", a, nodata=255, transform=T)
    out = tmp_path / "cli.gpkg"
    assert main(["vectorize", str(path), "--out", str(out), "--min-area", "20"]) == 0
    assert "3 features" in capsys.readouterr().out
    assert pyogrio.read_info(str(out))["features"] == 3


def test_geographic_minimum_unit_is_in_square_metres(tmp_path):
    from landcover.raster import Grid
    from landcover.vectorize import min_area_pixels

    grid = Grid(CRS.from_epsg(4326), from_origin(10.0, 60.001, 0.0001, 0.0001), 20, 20)  # about 5.6 x 11.1 m
    from pyproj import Geod

    mid = 60.001 - 10 * 0.0001  # top of the middle row
    one = abs(Geod(ellps="WGS84").polygon_area_perimeter([10, 10.0001, 10.0001, 10], [mid, mid, mid - 0.0001,
                                                                                       mid - 0.0001])[0])
    assert 60 < one < 64  # m²
    assert min_area_pixels(10.5 * one, grid) == 11 and min_area_pixels(10 * one, grid) == 10
    assert min_area_pixels(None, grid) == 1 and min_area_pixels(0, grid) == 1
    with pytest.raises(LandcoverError, match="must be a number >= 0"):
        min_area_pixels(-5, grid)
