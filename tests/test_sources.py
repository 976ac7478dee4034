"""Imagery as users hold it (issue 19): band files that differ, mosaics, scale/offset, odd grids, alpha bands."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.raster import Grid, GridReader, target_grid
from landcover.sources import mosaic, open_imagery, resolve
from landcover.sources.vrt import Source, common_nodata, working_type

LANDSAT = "chesapeake-naip-1m/tile_downsampled/m_3907833_nw_17_1_landsat-leaf-on.tif"
NAIP = "chesapeake-naip-1m/tile_downsampled/m_3907833_nw_17_1_naip-new.tif"
NB = "nrcan-new-brunswick-aerial/23322E759967N_clipped_1m_{}of2.tif"


def _src(dtype, nodata=None, scale=1.0):
    return Source("x.tif", 1, 4, 4, Affine.identity(), dtype, nodata, scale, 0.0)


def test_working_type_and_common_nodata():
    assert working_type([_src("float32"), _src("int16")]) == "float32"
    assert working_type([_src("uint8"), _src("uint16")]) == "uint16"
    assert working_type([_src("int16"), _src("uint16")]) == "int32"
    assert working_type([_src("uint16", scale=1e-4)]) == "float32"  # scaled values are fractional
    # one shared value stays; different values become NaN on a float type
    assert common_nodata([_src("uint16", 0), _src("uint16", 0)], "uint16", False) == ("uint16", 0)
    dtype, nd = common_nodata([_src("float32", -99999), _src("int16", -32768)], "float32", False)
    assert dtype == "float32" and np.isnan(nd)
    dtype, nd = common_nodata([_src("uint16", 0), _src("uint16", 65535)], "uint16", False)
    assert dtype == "float32" and np.isnan(nd)
    assert common_nodata([_src("uint8"), _src("uint8")], "uint8", True) == ("uint8", 0.0)  # mosaic holes


def _landsat_band_files(folder, landsat):
    """Six band files of a real Landsat layer as users hold them: five float32 (nodata -99999, tiled LZW) and one
    int16 (nodata -32768, striped), and a seventh band at half the resolution as uint16 (nodata 0)."""
    with rasterio.open(landsat) as ds:
        a, prof = ds.read(), ds.profile
    paths = []
    for i in range(6):
        band = a[i].copy()
        p = dict(prof, count=1)
        if i == 5:
            p.update(dtype="int16", nodata=-32768, tiled=False)
            band = np.round(band).astype("int16")
            band[:3, :3] = -32768
        else:
            p.update(dtype="float32", nodata=-99999, tiled=True, blockxsize=128, blockysize=128, compress="lzw")
            band[-2:, -2:] = -99999
        paths.append(folder / f"LE07_B{i + 1}.tif")
        with rasterio.open(paths[-1], "w", **p) as out:
            out.write(band, 1)
    t = prof["transform"]
    p = dict(prof, count=1, width=130, height=130, dtype="uint16", nodata=0,
             transform=Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f))
    paths.append(folder / "LE07_B7_coarse.tif")
    with rasterio.open(paths[-1], "w", **p) as out:
        out.write(a[6, ::2, ::2].astype("uint16"), 1)
    return paths, a


@pytest.mark.realdata
def test_band_files_that_differ_stack_on_the_finest_grid(tmp_path, shared_data):
    paths, a = _landsat_band_files(tmp_path, shared_data / LANDSAT)
    with open_imagery([str(p) for p in paths]) as ds:
        assert ds.count == 7 and ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        assert (ds.width, ds.height) == (260, 260)  # the finest grid
        assert list(ds.descriptions) == ["LE07_B1", "LE07_B2", "LE07_B3", "LE07_B4", "LE07_B5", "LE07_B6",
                                         "LE07_B7_coarse"]
        data = ds.read()
        assert np.array_equal(data[0, 10:20, 10:20], a[0, 10:20, 10:20])
        assert np.array_equal(data[5, 10:20, 10:20], np.round(a[5, 10:20, 10:20]))
        assert np.isnan(data[0, -2:, -2:]).all() and np.isnan(data[5, :3, :3]).all()  # each band's own nodata
        reader = GridReader(ds, Grid.of(ds))
        _, valid = reader.read(Window(0, 0, 260, 260))
    # nodata where any band is
    assert not valid[:3, :3].any() and not valid[-2:, -2:].any() and valid[100:110, 100:110].all()


@pytest.mark.realdata
def test_real_naip_and_landsat_layers_stack_as_13_bands(shared_data, tmp_path):
    """The Chesapeake tile's 4-band uint8 NAIP and 9-band float32 Landsat layers, one grid: 13 float32 bands."""
    naip, landsat = str(shared_data / NAIP), str(shared_data / LANDSAT)
    with open_imagery([naip, landsat]) as ds, rasterio.open(naip) as a, rasterio.open(landsat) as b:
        assert ds.count == 13 and ds.dtypes[0] == "float32" and ds.transform == a.transform
        assert np.array_equal(ds.read(4), a.read(4).astype("float32"))
        assert np.array_equal(ds.read(13), b.read(9))
        names = list(ds.descriptions)
    assert names[0].endswith("naip-new_1") and names[12].endswith("landsat-leaf-on_9")
    labels = str(shared_data / LANDSAT.replace("landsat-leaf-on", "lc"))
    assert main(["export", "--imagery", naip, landsat, "--labels", labels, "--out", str(tmp_path / "c"),
                 "--tile-size", "64", "--quiet"]) == 0
    with rasterio.open(next((tmp_path / "c" / "images").glob("*.tif"))) as chip:
        assert chip.count == 13 and chip.dtypes[0] == "float32"


@pytest.mark.realdata
def test_export_train_classify_evaluate_from_band_files_that_differ(tmp_path, shared_data):
    """The issue's user: a Landsat scene kept as band files of different type and nodata, float labels."""
    from conftest import torch_threads
    from landcover import UnetClassifier, evaluate, prepare_data
    from landcover.classify import classify_pixels

    paths, _ = _landsat_band_files(tmp_path, shared_data / LANDSAT)
    paths = [str(p) for p in paths[:6]]
    with rasterio.open(shared_data / LANDSAT.replace("landsat-leaf-on", "lc")) as ds:
        lc, prof = ds.read(1).astype("float32"), ds.profile
    lc[lc == 0] = -99999
    labels = tmp_path / "classes.tif"
    with rasterio.open(labels, "w", **dict(prof, dtype="float32", nodata=-99999)) as out:
        out.write(lc, 1)
    chips = tmp_path / "chips"
    assert main(["export", "--imagery", *paths, "--labels", str(labels), "--out", str(chips), "--tile-size", "64",
                 "--stride", "32", "--quiet"]) == 0
    with torch_threads(1):
        data = prepare_data(chips, batch_size=8, chip_size=64)
        assert data.input_dtype == "float32"
        assert list(data.band_names) == [f"LE07_B{i}" for i in range(1, 7)]  # named after the files
        model = UnetClassifier(data, backbone="resnet18")
        model.fit(2, lr=1e-3)
        package = model.save(tmp_path / "pkg")
        out = classify_pixels(paths, package, tmp_path / "map.tif", progress=False)
    with rasterio.open(out) as ds:
        classes = ds.read(1)
        assert ds.crs.to_epsg() == 26917 and ds.nodata == 0
    assert (classes[:3, :3] == 0).all()  # the int16 band's nodata corner is nodata in the map
    assert (classes[100:160, 100:160] > 0).all()
    report = evaluate(out, labels, out=tmp_path / "accuracy.json")
    assert 0.3 < report.overall_accuracy <= 1.0


def test_scale_offset_is_read_as_physical_values(make_raster):
    raw = np.array([[1000, 2000], [3000, 0]], "uint16")
    path = make_raster("s2_b04.tif", raw, nodata=0)
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets = (0.0001,), (-0.1,)
    with open_imagery(str(path)) as ds:
        assert ds.dtypes[0] == "float32"
        values = ds.read(1)
    assert np.allclose(values[0], [0.0, 0.1]) and np.allclose(values[1, 0], 0.2)
    assert values[1, 1] == ds.nodata or np.isnan(values[1, 1])  # nodata stays nodata, not -0.1
    # a model trained on integer counts reads counts (classify passes raw=True for it)
    with resolve(str(path), raw=True).open() as ds:
        assert ds.dtypes[0] == "uint16" and np.array_equal(ds.read(1), raw)
    with resolve([str(path), str(path)], raw=True).open() as ds:
        assert ds.dtypes[0] == "uint16" and np.array_equal(ds.read(2), raw)


def test_different_crs_and_no_overlap_are_refused(make_raster, tmp_path):
    a = make_raster("a.tif", np.ones((5, 5), "uint8"))
    b = make_raster("b.tif", np.ones((5, 5), "uint8"), crs="EPSG:32618")
    c = make_raster("c.tif", np.ones((5, 5), "uint8"), transform=from_origin(0, 0, 1, 1))
    with pytest.raises(LandcoverError, match=r"b.tif and .*a.tif: band files are on different CRSs \(EPSG:32618"):
        open_imagery([str(a), str(b)])
    with pytest.raises(LandcoverError, match=r"c.tif and .*a.tif: band files do not overlap"):
        open_imagery([str(a), str(c)])
    # every band of each file, in order: an RGB file then a NIR file make bands 1-4
    rgb = make_raster("rgb.tif", np.stack([np.full((5, 5), v, "uint16") for v in (10, 20, 30)]))
    nir = make_raster("nir.tif", np.full((5, 5), 2, "uint16"))
    with open_imagery([str(rgb), str(nir)]) as ds:
        assert ds.count == 4 and [int(ds.read(i)[0, 0]) for i in range(1, 5)] == [10, 20, 30, 2]


def test_cli_refuses_band_files_on_different_crss(make_raster, tmp_path, capsys):
    a = make_raster("a.tif", np.ones((40, 40), "uint8"))
    b = make_raster("b.tif", np.ones((40, 40), "uint8"), crs="EPSG:32618")
    lab = make_raster("lab.tif", np.ones((40, 40), "uint8"))
    out = tmp_path / "chips"
    assert main(["export", "--imagery", str(a), str(b), "--labels", str(lab), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different CRSs" in err[0] and not out.exists()


@pytest.mark.realdata
def test_mosaic_of_two_real_orthophoto_tiles(shared_data, tmp_path):
    tiles = [str(shared_data / NB.format(i)) for i in (1, 2)]
    with rasterio.open(tiles[0]) as t1, rasterio.open(tiles[1]) as t2:
        left, bottom = min(t1.bounds.left, t2.bounds.left), min(t1.bounds.bottom, t2.bounds.bottom)
        right, top = max(t1.bounds.right, t2.bounds.right), max(t1.bounds.top, t2.bounds.top)
        second = t2.read()
        row, col = t2.index(t2.bounds.left + 0.01, t2.bounds.top - 0.01)
    with open_imagery(mosaic(tiles)) as ds:
        assert ds.count == 3 and ds.crs.to_epsg() == 2953
        assert ds.bounds.left == pytest.approx(left) and ds.bounds.top == pytest.approx(top)
        assert ds.bounds.right >= right - 0.5 and ds.bounds.bottom <= bottom + 0.5
        # the second tile is drawn over the first (its corners are a fraction of a cell off the first tile's
        # grid, so it is resampled onto it: close, not equal)
        r, c = ds.index(t2.bounds.left + 0.01, t2.bounds.top - 0.01)
        got = ds.read(window=Window(c + 1, r + 1, 50, 50)).astype(float)
        want = second[:, row + 1:row + 51, col + 1:col + 51].astype(float)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9
    # a folder and a glob name the same tiles
    assert resolve(mosaic(str(shared_data / NB.format("*")))).tiles == tuple(tiles)
    # export from the mosaic with the real polygons
    chips = tmp_path / "chips"
    gpkg = shared_data / "nrcan-new-brunswick-aerial/BakerLake_2017_clipped.gpkg"
    assert main(["export", "--mosaic", *tiles, "--labels", str(gpkg), "--class-field", "Cinqclasses",
                 "--out", str(chips), "--tile-size", "128", "--quiet"]) == 0
    assert len(list((chips / "images").glob("*.tif"))) > 10


def test_mosaic_tiles_with_different_band_counts_are_refused(make_raster, tmp_path, capsys):
    a = make_raster("a.tif", np.ones((3, 40, 40), "uint8"))
    b = make_raster("b.tif", np.ones((4, 40, 40), "uint8"), transform=from_origin(500040.0, 4300000.0, 1, 1))
    lab = make_raster("lab.tif", np.ones((40, 80), "uint8"))
    out = tmp_path / "chips"
    assert main(["export", "--mosaic", str(a), str(b), "--labels", str(lab), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different band counts (4 and 3)" in err[0] and not out.exists()


def test_mosaic_holes_are_nodata(make_raster):
    a = make_raster("a.tif", np.full((10, 10), 7, "uint8"))
    b = make_raster("b.tif", np.full((10, 10), 9, "uint8"), transform=from_origin(500010.0, 4299990.0, 1, 1))
    with open_imagery(mosaic([str(a), str(b)])) as ds:
        assert (ds.width, ds.height) == (20, 20) and ds.nodata == 0
        data = ds.read(1)
        reader = GridReader(ds, Grid.of(ds))
        _, valid = reader.read(Window(0, 0, 20, 20))
    assert (data[:10, :10] == 7).all() and (data[10:, 10:] == 9).all()
    assert not valid[:10, 10:].any() and not valid[10:, :10].any() and valid[:10, :10].all()


def test_rotated_and_gcp_rasters_are_warped_north_up(tmp_path):
    data = np.arange(400, dtype="uint8").reshape(20, 20)
    rotated = tmp_path / "rotated.tif"
    t = Affine.translation(500000, 4300000) * Affine.rotation(20) * Affine.scale(1, -1)
    with rasterio.open(rotated, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                       crs="EPSG:32617", transform=t) as ds:
        ds.write(data, 1)
    with open_imagery(str(rotated)) as ds:
        assert ds.transform.b == 0 and ds.transform.d == 0 and ds.crs.to_epsg() == 32617
        assert ds.width > 20 and ds.height > 20  # the rotated footprint's north-up box
    gcps_path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(0, 0, 500000, 4300000), GroundControlPoint(0, 20, 500020, 4300000),
            GroundControlPoint(20, 0, 500000, 4299980), GroundControlPoint(20, 20, 500020, 4299980)]
    with rasterio.open(gcps_path, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8") as ds:
        ds.write(data, 1)
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32617))
    with open_imagery(str(gcps_path)) as ds:
        assert ds.crs.to_epsg() == 32617 and abs(ds.transform.a - 1) < 0.05
        assert abs(ds.bounds.left - 500000) < 1 and abs(ds.bounds.top - 4300000) < 1


def test_non_square_pixels_keep_their_cell_size(make_raster):
    path = make_raster("ns.tif", np.ones((2, 30, 20), "uint16"), transform=from_origin(500000, 4300000, 2.0, 3.0))
    other = make_raster("ns2.tif", np.ones((30, 20), "int16"), transform=from_origin(500000, 4300000, 2.0, 3.0))
    with open_imagery([str(path), str(other)]) as ds:
        assert ds.res == (2.0, 3.0) and (ds.width, ds.height) == (20, 30) and ds.dtypes[0] == "int32"


def test_python_api_bad_imagery_and_extent_are_one_line(make_raster, tmp_path):
    from landcover import export_training_data

    img = make_raster("img.tif", np.ones((3, 40, 40), "uint8"))
    lab = make_raster("lab.tif", np.ones((40, 40), "uint8"))
    with pytest.raises(LandcoverError, match="got a ndarray; give a raster's path"):
        export_training_data(np.zeros((3, 8, 8)), lab, tmp_path / "a")
    for bad in ("bogus", (1, 2, 3)):
        with pytest.raises(LandcoverError, match="give four numbers"):
            export_training_data(img, lab, tmp_path / "b", extent=bad)
    with pytest.raises(LandcoverError, match="give four numbers"):
        target_grid(Grid(rasterio.crs.CRS.from_epsg(32617), from_origin(0, 10, 1, 1), 10, 10), extent="bogus")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_alpha_tagged_nir_band_is_data_not_a_mask(tmp_path):
    """rasterio writes 4-band uint8 as RGBA: NIR 0 (water) must not become a hole in the map's mask."""
    data = np.full((4, 16, 16), 100, "uint8")
    data[3, :8] = 0  # NIR 0 over half the raster
    path = tmp_path / "rgbn.tif"
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=4, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(500000, 4300000, 1, 1)) as ds:
        ds.write(data)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha  # the trap
        _, valid = GridReader(ds, Grid.of(ds), indexes=[1, 2, 3, 4]).read(Window(0, 0, 16, 16))
        assert valid.all()
        # with band 4 not read as data, it is the mask GDAL says it is
        _, valid = GridReader(ds, Grid.of(ds), indexes=[1, 2, 3]).read(Window(0, 0, 16, 16))
        assert not valid[:8].any() and valid[8:].all()


def test_export_of_all_nodata_imagery_names_the_imagery(make_raster, tmp_path, capsys):
    img = make_raster("empty.tif", np.zeros((3, 64, 64), "uint8"), nodata=0)
    lab = make_raster("lab.tif", np.ones((64, 64), "uint8"))
    assert main(["export", "--imagery", str(img), "--labels", str(lab), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty.tif: every imagery pixel" in err and "--all-tiles" not in err


def test_export_tile_size_is_bounded_by_the_raster_and_memory(make_raster, tmp_path, capsys):
    img = make_raster("img.tif", np.ones((3, 64, 64), "uint8"))
    lab = make_raster("lab.tif", np.ones((64, 64), "uint8"))
    assert main(["export", "--imagery", str(img), "--labels", str(lab), "--out", str(tmp_path / "c"),
                 "--tile-size", "100000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tile-size 100000: larger than the imagery's 64 x 64 px grid" in err[0]


def test_classify_reads_an_alpha_tagged_nir_band_as_data(tmp_path, recwarn):
    """A map from RGBN imagery whose NIR is 0 over part of it has no holes there (it had 1.9 % before)."""
    from conftest import torch_threads
    from landcover.classes import ClassInfo
    from landcover.classify import ImageryWarning, classify_pixels
    from landcover.package import ModelPackage, save_package

    data = np.full((4, 64, 64), 90, "uint8")
    data[3, :20] = 0
    path = tmp_path / "rgbn.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(500000, 4300000, 1, 1), nodata=0) as ds:
        ds.write(data)
    pkg = ModelPackage(classes=[ClassInfo(1, "a", (255, 0, 0)), ClassInfo(2, "b", (0, 255, 0))], backbone="resnet18",
                       extract_bands=[0, 1, 2, 3], mean=[90.0] * 4, std=[30.0] * 4, tile_size=32)
    pkg.state_dict = pkg.build_model().state_dict()
    folder = save_package(pkg, tmp_path / "pkg")
    with torch_threads(1):
        out = classify_pixels(path, folder, tmp_path / "map.tif", progress=False)
    with rasterio.open(out) as ds:
        assert (ds.read(1) > 0).all()
    assert not [w for w in recwarn if issubclass(w.category, ImageryWarning)]  # NIR values: data, no word
    data[3] = np.where(np.arange(64) < 32, 0, 255)[None, :].repeat(64, 0).astype("uint8")  # a real alpha mask
    alpha = tmp_path / "rgba.tif"
    with rasterio.open(alpha, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(500000, 4300000, 1, 1), nodata=0) as ds:
        ds.write(data)
    with torch_threads(1), pytest.warns(ImageryWarning, match="band 4 holds only 0 and 255"):
        classify_pixels(alpha, folder, tmp_path / "map2.tif", progress=False)


def test_the_alpha_check_samples_windows_of_a_raster_without_overviews(tmp_path):
    """The alpha check reads a few windows of a large raster without overviews (a decimated read decoded the
    whole band: a second of every 100 MP run's setup) and still tells a transparency mask from data."""
    from landcover.classify import SAMPLE_GRID, SAMPLE_WINDOW, _sampled_values

    mask = np.where(np.arange(900) < 450, 0, 255).astype("uint8")[None, :].repeat(700, 0)
    data = (np.arange(900 * 700) % 251).astype("uint8").reshape(700, 900)
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=900, height=700, count=2, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(500000, 4300000, 1, 1), tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(np.stack([mask, data]))
    with rasterio.open(path) as ds:
        assert not ds.overviews(1)
        assert set(_sampled_values(ds, 1).tolist()) == {0, 255}
        sampled = _sampled_values(ds, 2)
        assert 2 < len(sampled) <= SAMPLE_GRID ** 2 * SAMPLE_WINDOW ** 2
    with rasterio.open(path, "r+") as ds:  # with overviews: the overview is the sample
        ds.build_overviews([4], rasterio.enums.Resampling.nearest)
    with rasterio.open(path) as ds:
        assert set(_sampled_values(ds, 1).tolist()) == {0, 255}
