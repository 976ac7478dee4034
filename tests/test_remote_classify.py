"""classify and export from a COG on a server (loopback only), and a run cut off by the network resumed."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import torch_threads
from http_server import http_server  # noqa: F401 - the fixture
from landcover.classes import ClassInfo
from landcover.classify import classify_pixels
from landcover.cli import main
from landcover.package import ModelPackage, save_package


def _name() -> str:
    """A file name no earlier test served: GDAL caches what it fetched per URL for the life of the process, and a
    later test's server may get an earlier one's port."""
    return f"scene-{uuid.uuid4().hex[:8]}.tif"


def _cog(path, size=192):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (4, size // 8, size // 8)).astype("uint8")
    data = np.kron(base, np.ones((8, 8), "uint8")) + rng.integers(0, 20, (4, size, size)).astype("uint8")
    with rasterio.open(path, "w", driver="COG", width=size, height=size, count=4, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(500000, 4300000, 1, 1), nodata=0, blocksize=128) as ds:
        ds.write(data)
    return path


@pytest.fixture
def package(tmp_path):
    pkg = ModelPackage(classes=[ClassInfo(1, "a", (255, 0, 0)), ClassInfo(2, "b", (0, 255, 0)),
                                ClassInfo(3, "c", (0, 0, 255))], backbone="resnet18", extract_bands=[0, 1, 2, 3],
                       mean=[127.0] * 4, std=[60.0] * 4, tile_size=64)
    with torch_threads(1):
        pkg.state_dict = pkg.build_model().state_dict()
    return save_package(pkg, tmp_path / "pkg")


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_classify_a_cog_over_http_equals_the_local_file(http_server, package, tmp_path):  # noqa: F811
    local = _cog(http_server.root / _name())
    with torch_threads(1):
        want = _read(classify_pixels(str(local), package, tmp_path / "local.tif", progress=False, block_size=96))
        got = _read(classify_pixels(http_server.url(local.name), package, tmp_path / "remote.tif", progress=False,
                                    block_size=96))
    assert np.array_equal(got, want) and (got > 0).all()


def test_a_run_cut_off_by_the_network_resumes(http_server, package, tmp_path, capfd):  # noqa: F811
    local = _cog(http_server.root / _name())
    url = http_server.url(local.name)
    with torch_threads(1):
        # the reference: the same command on the local file (random weights have near-ties, so the same path)
        common = ["--model", str(package), "--block-size", "64", "--quiet", "--backend", "fp32"]
        assert main(["classify", *common, "--imagery", str(local), "--out", str(tmp_path / "local.tif")]) == 0
        want = _read(tmp_path / "local.tif")
        out = tmp_path / "remote.tif"
        args = ["classify", *common, "--imagery", url, "--out", str(out)]
        http_server.reset_counts()
        # the header and the first blocks come through, then the network fails for good
        http_server.drop_after_bytes = local.stat().st_size // 2
        assert main(args) == 2
        err = capfd.readouterr().err.strip().splitlines()  # GDAL's own lines too (file descriptor 2)
        assert len(err) == 1 and f"{local.name}: reading its pixels over the network failed" in err[0], err
        assert err[0].endswith("check your network and run again; add --resume to continue from the finished blocks")
        assert not out.exists() and (tmp_path / "remote.tif.blocks").is_dir()
        done = len(list((tmp_path / "remote.tif.blocks").glob("*.done")))
        http_server.drop_after_bytes = None  # the network is back
        assert main([*args, "--resume"]) == 0
    assert done > 0  # the resumed run started from finished blocks
    # Identical. The resumed run is in the same process as the one cut off: it used to reuse that run's open
    # dataset, whose block cache held what GDAL decoded from the truncated download (2-9 % of the pixels
    # differed with a U-Net that reads the bands at full resolution); a failed run now drops it.
    assert np.array_equal(_read(out), want)


def test_a_stac_item_over_http_export_train_classify_by_band_name(http_server, tmp_path):  # noqa: F811
    """Export from a STAC Item's bands by common name; classify another read of it without --bands: the package
    names the bands, so the same ones are read in the same order."""
    from landcover import UnetClassifier, prepare_data
    from test_remote import write_item

    item_dir = http_server.root / _name().replace(".tif", "")  # a folder no earlier test served
    write_item(item_dir)
    rng = np.random.default_rng(2)
    for key in ("B02", "B03", "B04", "B08"):  # texture, so there is something to learn
        with rasterio.open(item_dir / f"{key}.tif") as ds:
            prof = ds.profile
        data = rng.integers(0, 200, (1, 64, 64)).astype("uint8")
        with rasterio.open(item_dir / f"{key}.tif", "w", **dict(prof, driver="COG")) as ds:
            ds.write(data)
    labels = tmp_path / "labels.tif"
    with rasterio.open(item_dir / "B02.tif") as ds:
        prof = dict(ds.profile, driver="GTiff", count=1)
        lab = (ds.read(1) > 100).astype("uint8") + 1
    with rasterio.open(labels, "w", **prof) as ds:
        ds.write(lab, 1)
    url = http_server.url(f"{item_dir.name}/item.json")
    chips = tmp_path / "chips"
    assert main(["export", "--imagery", url, "--bands", "red", "green", "blue", "nir", "--labels", str(labels),
                 "--out", str(chips), "--tile-size", "32", "--quiet"]) == 0
    with torch_threads(1):
        data = prepare_data(chips, batch_size=4)
        assert list(data.band_names) == ["red", "green", "blue", "nir"]
        model = UnetClassifier(data, backbone="resnet18")
        model.fit(1, lr=1e-3)
        pkg = model.save(tmp_path / "pkg")
        out = tmp_path / "map.tif"
        assert main(["classify", "--model", str(pkg), "--imagery", url, "--out", str(out), "--quiet"]) == 0
        # the same bands given explicitly in the same order: the same map
        out2 = tmp_path / "map2.tif"
        assert main(["classify", "--model", str(pkg), "--imagery", url, "--bands", "B04", "B03", "B02", "B08",
                     "--out", str(out2), "--quiet"]) == 0
    assert np.array_equal(_read(out), _read(out2))


def test_bad_remote_inputs_are_one_line_exit_2_and_leave_nothing(http_server, package, tmp_path, capfd):  # noqa: F811
    from test_remote import write_item

    write_item(http_server.root / "s2")
    out = tmp_path / "map.tif"
    for args, needle in (
        (["--imagery", http_server.url("missing.tif")], "missing.tif: imagery not found (HTTP 404)"),
        (["--imagery", http_server.url("s2/item.json"), "--bands", "red", "swir3"],
         "no asset or eo:bands common name 'swir3'"),
    ):
        assert main(["classify", "--model", str(package), *args, "--out", str(out), "--quiet"]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists() and not (tmp_path / "map.tif.blocks").exists()
        chips = tmp_path / "chips"
        assert main(["export", *args, "--labels", str(http_server.root / "s2" / "B02.tif"), "--out", str(chips),
                     "--quiet"]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not chips.exists()


def test_export_and_evaluate_read_labels_and_maps_over_http(http_server, package, tmp_path):  # noqa: F811
    """Every command takes URLs: labels for export, and a map and its reference for evaluate and areas."""
    from landcover import class_areas, evaluate

    image = _cog(http_server.root / _name(), size=128)
    labels = http_server.root / _name()
    with rasterio.open(image) as ds:
        prof = dict(ds.profile, driver="GTiff", count=1, nodata=None)
        lab = (ds.read(1) > 127).astype("uint8") + 1
    with rasterio.open(labels, "w", **prof) as ds:
        ds.write(lab, 1)
    chips = tmp_path / "chips"
    assert main(["export", "--imagery", http_server.url(image.name), "--labels", http_server.url(labels.name),
                 "--out", str(chips), "--tile-size", "64", "--quiet"]) == 0
    assert len(list((chips / "labels").glob("*.tif"))) == 9
    report = evaluate(http_server.url(labels.name), http_server.url(labels.name))
    assert report.overall_accuracy == 1.0
    assert sum(row.pixels for row in class_areas(http_server.url(labels.name)).rows) == 128 * 128
