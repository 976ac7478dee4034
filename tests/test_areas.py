"""Class areas: projected CRSs (metres and feet, non-square pixels), geodesic areas for geographic CRSs, CSV and CLI."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
from rasterio.transform import Affine, from_origin

import landcover.areas
from conftest import write_raster
from landcover.areas import AreaWarning, class_areas
from landcover.classes import ClassInfo, write_class_table
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.evaluate import evaluate


def test_projected_areas_nodata_names_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(landcover.areas, "STRIP_PIXELS", 50)  # many strips
    a = np.zeros((30, 40), np.uint8)
    a[:10] = 1
    a[10:25, :30] = 7
    a[25:, :] = 255  # nodata
    a[12, 35] = 0  # 0 is no data too
    counts = {1: 400, 7: 450, 0: int((a == 0).sum())}
    path = write_raster(tmp_path / "c.tif", a, nodata=255, transform=Affine(2.0, 0, 500000, 0, -3.0, 4300000))
    write_class_table(path, [ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(7, "Roads", (9, 9, 9))])
    table = class_areas(path, out=tmp_path / "areas.csv")
    assert [(r.value, r.name, r.pixels) for r in table.rows] == [(1, "Water", 400), (7, "Roads", 450)]
    assert table.area_unit == "m²" and table.method == "planar"
    assert table.rows[0].area == pytest.approx(400 * 6.0)
    assert table.rows[1].hectares == pytest.approx(450 * 6.0 / 1e4)
    assert table.rows[0].percent == pytest.approx(100 * 400 / 850)
    assert counts[0] > 0  # the fixture really had 0-valued pixels that must not be counted
    with open(tmp_path / "areas.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["Water", "Roads"]
    assert float(rows[1]["hectares"]) == pytest.approx(0.27)
    assert "Water" in table.format_table() and "total" in table.format_table()


def test_feet_crs_reports_feet_and_true_hectares(tmp_path):
    a = np.ones((10, 10), np.uint8)
    path = write_raster(tmp_path / "ft.tif", a, crs="EPSG:2263", transform=from_origin(1000000, 200000, 10, 10))
    table = class_areas(path)
    assert "foot" in table.area_unit
    assert table.rows[0].area == pytest.approx(100 * 100.0)
    ft = 1200 / 3937  # US survey foot in metres
    assert table.rows[0].hectares == pytest.approx(100 * 100.0 * ft * ft / 1e4, rel=1e-9)


@pytest.mark.parametrize("lat0", [0.0, 60.0])
def test_geographic_crs_uses_geodesic_pixel_areas(tmp_path, lat0):
    from pyproj import Geod

    res = 0.01
    a = np.ones((50, 20), np.uint8)
    a[:, 10:] = 2
    path = write_raster(tmp_path / "ll.tif", a, crs="EPSG:4326", transform=from_origin(10.0, lat0 + 0.5, res, res))
    table = class_areas(path)
    assert table.method == "geodesic" and table.area_unit == "m²"
    # Independent check: the whole left half as one densified geodesic polygon on WGS84.
    lons = np.r_[np.linspace(10.0, 10.1, 11), np.linspace(10.1, 10.0, 11)]
    lats = np.r_[np.full(11, lat0 + 0.5), np.full(11, lat0)]
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])
    assert table.rows[0].area == pytest.approx(expected, rel=1e-6)
    # ... and the closed-form area of an ellipsoidal band between two parallels (a pixel row is one)
    a_, f = 6378137.0, 1 / 298.257223563
    b2, e = (a_ * (1 - f)) ** 2, math.sqrt(f * (2 - f))

    def q(lat):
        s = math.sin(math.radians(lat))
        return s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    band = math.radians(0.1) * b2 / 2 * (q(lat0 + 0.5) - q(lat0))
    assert table.rows[0].area == pytest.approx(band, rel=1e-6)
    assert table.rows[0].percent == pytest.approx(50.0, abs=1e-6)


def test_web_mercator_areas_are_geodesic(tmp_path, capsys):
    """Web Mercator (web tiles' CRS) inflates planar areas by 1/cos²(latitude): areas are the ellipsoidal band
    between the raster's edge latitudes (inverse Web Mercator in closed form), not the planar pixel sums."""
    r, a_, f = 6378137.0, 6378137.0, 1 / 298.257223563
    x0, y0, res = -8449640.0, 4782795.0, 5.0  # Delaware, as the seed's land-cover sample extent
    path = write_raster(tmp_path / "wm.tif", np.ones((80, 60), np.uint8), crs="EPSG:3857",
                        transform=from_origin(x0, y0, res, res))
    table = class_areas(path)
    lat = [math.degrees(math.atan(math.sinh(y / r))) for y in (y0, y0 - 80 * res)]
    b2, e = (a_ * (1 - f)) ** 2, math.sqrt(f * (2 - f))

    def q(phi):
        s = math.sin(math.radians(phi))
        return s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    band = 60 * res / r * b2 / 2 * (q(lat[0]) - q(lat[1]))
    assert table.method == "geodesic" and table.rows[0].area == pytest.approx(band, rel=1e-6)
    assert table.rows[0].area < 0.6 * 80 * 60 * res * res  # the planar sum would be 1/cos²(40.2°) = 1.7 times it
    assert main(["areas", str(path)]) == 0 and "geodesic" in capsys.readouterr().out


def test_planar_areas_far_off_true_ones_are_warned_in_one_line(tmp_path, capsys):
    """UTM zone 18 used 2000 km west of its central meridian: planar areas ~10 % too large, which is said."""
    path = write_raster(tmp_path / "far.tif", np.ones((50, 50), np.uint8), crs="EPSG:32618",
                        transform=from_origin(-1500000, 4300000, 10, 10))
    assert main(["areas", str(path)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "landcover areas: warning:" in err
    # the UTM scale factor 2000 km from the central meridian: k = 0.9996 (1 + x²/2R²), areas k² ≈ 1.10
    assert re.search(r"\+(9\.\d|10\.\d) % off the true", err)
    near = write_raster(tmp_path / "near.tif", np.ones((50, 50), np.uint8), crs="EPSG:32618",
                        transform=from_origin(500000, 4300000, 10, 10))
    assert main(["areas", str(near)]) == 0 and capsys.readouterr().err == ""
    # from Python, the warning points at the caller's line, not at the package's code that raised it
    for call in (lambda: class_areas(path), lambda: evaluate(path, path, sample=100)):
        with pytest.warns(AreaWarning) as record:
            call()
        assert [w.filename for w in record if w.category is AreaWarning] == [__file__]


def test_no_crs_is_refused_in_one_line(tmp_path, capsys):
    path = write_raster(tmp_path / "nocrs.tif", np.ones((5, 5), np.uint8), crs=None,
                        transform=from_origin(10, 10, 1, 1))
    with pytest.raises(LandcoverError, match="no CRS"):
        class_areas(path)
    assert main(["areas", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gdal_edit.py" in err


def test_cli_prints_table_and_writes_csv(tmp_path, capsys):
    a = np.array([[1, 1, 2, 0]] * 4, np.uint8)
    path = write_raster(tmp_path / "c.tif", a, nodata=0)
    assert main(["areas", str(path), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "hectares" in out and "66.67%" in out
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "value,name,pixels,area,area_unit,hectares,percent"


@pytest.mark.realdata
def test_real_chesapeake_labels(shared_data):
    """The georeferenced Chesapeake label tile (EPSG:26917, non-square ~23.6 x 29.5 m pixels)."""
    path = shared_data / "chesapeake-naip-1m" / "tile_downsampled" / "m_3907833_nw_17_1_lc.tif"
    table = class_areas(path)
    got = {r.value: r.pixels for r in table.rows}
    assert got == {1: 810, 2: 53477, 3: 10100, 4: 81, 5: 2401, 6: 731}  # PROVENANCE.md
    import rasterio

    with rasterio.open(path) as ds:
        pixel_m2 = abs(ds.transform.a * ds.transform.e)
    assert sum(r.hectares for r in table.rows) == pytest.approx(260 * 260 * pixel_m2 / 1e4)


def test_multiband_raster_is_refused_in_one_line(tmp_path, capsys):
    """An RGB image is not a classified raster: refused (as evaluate and vectorize do), not 255 "classes"."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 9)).astype(np.uint8)
    path = write_raster(tmp_path / "rgb.tif", rgb)
    with pytest.raises(LandcoverError, match="a classified raster has one band, this one has 3"):
        class_areas(path)
    assert main(["areas", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rgb.tif" in err and "one band" in err


def test_float_raster_needs_integral_class_values(tmp_path):
    ok = np.array([[1.0, 2.0, -9999.0], [2.0, 2.0, np.nan]], np.float32)
    table = class_areas(write_raster(tmp_path / "ok.tif", ok, nodata=-9999.0))
    assert [(r.value, r.pixels) for r in table.rows] == [(1, 1), (2, 3)]
    bad = write_raster(tmp_path / "bad.tif", ok + np.float32(0.4), nodata=-9999.0)
    with pytest.raises(LandcoverError, match="bad.tif: class value 1.4 is not an integer"):
        class_areas(bad)


def test_truncated_raster_is_one_line(tmp_path):
    a = np.random.default_rng(1).integers(1, 5, (400, 400)).astype(np.uint8)
    whole = write_raster(tmp_path / "whole.tif", a, nodata=0).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LandcoverError, match="cut.tif: cannot read its pixels"):
        class_areas(cut)


@pytest.mark.parametrize("command, out_name, extra", [
    ("areas", "a.csv", []),
    ("evaluate", "report.json", ["--reference", "{raster}"]),
    ("map", "map.png", []),
    ("vectorize", "p.gpkg", []),
])
def test_cli_outputs_are_replaced_only_with_overwrite(tmp_path, capsys, command, out_name, extra):
    """As classify and train: an existing output is refused in one line, and replaced with --overwrite."""
    a = np.array([[1, 1, 2, 2]] * 4, np.uint8)
    path = write_raster(tmp_path / "c.tif", a, nodata=0)
    write_class_table(path, [ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(2, "Trees", (0, 128, 0))])
    source = ["--classified", str(path)] if command == "map" else (
        ["--prediction", str(path)] if command == "evaluate" else [str(path)])
    out = tmp_path / out_name
    args = [command, *source, *[e.format(raster=path) for e in extra], "--out", str(out)]
    assert main(args) == 0 and out.exists()
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out}: exists; add --overwrite" in err
    assert out.stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("command, copy_name, extra", [
    ("areas", "c.csv", []),
    ("evaluate", "r.json", ["--reference", "{copy}"]),
    ("evaluate", "c.json", []),
    ("map", "c.png", []),
    ("vectorize", "c.gpkg", []),
])
def test_outputs_never_replace_their_inputs(tmp_path, capsys, command, copy_name, extra):
    """Even with --overwrite, an output named like one of its inputs is refused (it would be lost); a wrong
    extension is refused too."""
    a = np.array([[1, 1, 2, 2]] * 4, np.uint8)
    path = write_raster(tmp_path / "c.tif", a, nodata=0)
    copy = tmp_path / copy_name
    copy.write_bytes(path.read_bytes())  # an input raster under the output's name
    uses_copy = bool(extra)
    given = copy if not uses_copy else path
    source = ["--classified", str(given)] if command == "map" else (
        ["--prediction", str(given)] if command == "evaluate" else [str(given)])
    if command == "evaluate" and not uses_copy:
        extra = ["--reference", str(path)]
    args = [command, *source, *[e.format(copy=copy) for e in extra], "--out", str(copy), "--overwrite"]
    before = copy.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "which it is made from" in err, err
    assert copy.read_bytes() == before
    wrong = tmp_path / "out.txt"
    assert main([*args[:-3], "--out", str(wrong)]) == 2
    assert "give it a" in capsys.readouterr().err and not wrong.exists()
