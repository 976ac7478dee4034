"""Remote imagery: COGs over HTTP (and S3's protocol) from a loopback server, STAC Items, and fast one-line
failures. Every server is tests/http_server.py's, on 127.0.0.1; nothing leaves the machine."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from http_server import http_server  # noqa: F401 - the fixture
from landcover.errors import LandcoverError
from landcover.sources.refs import BandRef
from landcover.sources.remote import (
    REMOTE_GDAL_ENV,
    TIMEOUT_S,
    check_remote,
    gdal_path,
    is_remote,
    remote_error,
)
from landcover.sources.stac import is_stac_item, item_bands

FAST_FAIL_S = 15  # generous: the timeouts are TIMEOUT_S (5 s)


def write_cog(path: Path, array: np.ndarray, blocksize: int = 256) -> Path:
    """A (bands, h, w) array as a Cloud Optimized GeoTIFF with overviews (GDAL's COG driver)."""
    array = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="COG", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs="EPSG:32618", transform=from_origin(400000.0, 4300000.0, 10.0, 10.0),
                       compress="deflate", blocksize=blocksize) as ds:
        ds.write(array)
    return path


def scene(bands: int, size: int, seed: int = 0) -> np.ndarray:
    """Fields plus texture: compresses like imagery, not like noise or a constant."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(20, 230, (bands, size // 32 + 1, size // 32 + 1))
    idx = np.arange(size) // 32
    return (coarse[:, idx[:, None], idx[None, :]] + rng.integers(0, 12, (bands, size, size))).astype(np.uint8)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- paths -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, remote, path", [
    ("https://example.com/a/b.tif", True, "/vsicurl/https://example.com/a/b.tif"),
    ("http://127.0.0.1:8000/x.tif?sig=1", True, "/vsicurl/http://127.0.0.1:8000/x.tif?sig=1"),
    ("s3://bucket/key/scene.tif", True, "/vsis3/bucket/key/scene.tif"),
    ("gs://bucket/scene.tif", True, "/vsigs/bucket/scene.tif"),
    ("/vsicurl/https://example.com/b.tif", True, "/vsicurl/https://example.com/b.tif"),
    ("/vsis3/bucket/k.tif", True, "/vsis3/bucket/k.tif"),
    ("/vsigs/bucket/k.tif", True, "/vsigs/bucket/k.tif"),
    ("scene.tif", False, "scene.tif"),
    ("/data/https/scene.tif", False, "/data/https/scene.tif"),
    ("/vsizip/a.zip/b.tif", False, "/vsizip/a.zip/b.tif"),
])
def test_is_remote_and_gdal_path(spec, remote, path):
    assert is_remote(spec) is remote
    assert gdal_path(spec) == path
    check_remote("does/not/exist.tif")  # local paths are not probed


# -- COGs over HTTP --------------------------------------------------------------------------------------------
def test_windowed_reads_over_http_equal_the_local_file(http_server):  # noqa: F811
    local = write_cog(http_server.root / "scene.tif", scene(3, 1000))
    url = http_server.url("scene.tif")
    check_remote(url)
    windows = [Window(0, 0, 1000, 1000), Window(123, 456, 300, 200), Window(900, 0, 100, 1000)]
    with rasterio.Env(**REMOTE_GDAL_ENV), rasterio.open(gdal_path(url)) as remote, rasterio.open(local) as ref:
        assert (remote.profile["width"], remote.count, remote.crs) == (ref.width, ref.count, ref.crs)
        for w in windows:
            np.testing.assert_array_equal(remote.read(window=w), ref.read(window=w))
        # an overview level, as maps read it
        np.testing.assert_array_equal(remote.read(out_shape=(3, 250, 250)), ref.read(out_shape=(3, 250, 250)))
    # through the range requests it is meant to use: no sidecar probes, no whole-file download
    log = http_server.log
    assert log and all(r["status"] in (200, 206) for r in log)
    assert all(r["range"] for r in log if r["method"] == "GET")


def test_any_url_name_opens(http_server):  # noqa: F811
    """No allowed-extensions list: a COG behind a URL with another suffix, or none, or a query, is read."""
    write_cog(http_server.root / "scene.cog", scene(1, 64))
    write_cog(http_server.root / "download", scene(1, 64))
    with rasterio.Env(**REMOTE_GDAL_ENV):
        for name in ("scene.cog", "download", "scene.cog?token=abc"):
            check_remote(http_server.url(name))
            with rasterio.open(gdal_path(http_server.url(name))) as ds:
                assert ds.read(1).shape == (64, 64)


def test_a_window_of_a_tenth_fetches_at_most_a_fifth_of_the_file(http_server):  # noqa: F811
    size = 4000
    local = write_cog(http_server.root / "big.tif", scene(1, size, seed=1))
    edge = int(size * 0.1 ** 0.5)  # 10 % of the area, in the middle
    window = Window((size - edge) // 2, (size - edge) // 2, edge, edge)
    http_server.reset_counts()
    with rasterio.Env(**REMOTE_GDAL_ENV), rasterio.open(gdal_path(http_server.url("big.tif"))) as ds:
        data = ds.read(1, window=window)
    with rasterio.open(local) as ref:
        np.testing.assert_array_equal(data, ref.read(1, window=window))
    fetched, total = http_server.bytes_sent, local.stat().st_size
    assert 0.05 * total < fetched <= 0.20 * total, (fetched, total)


def test_an_s3_path_reads_through_gdal_vsis3(http_server, tmp_path):  # noqa: F811
    """s3:// goes to GDAL's /vsis3/, here against the loopback server speaking S3's path-style GETs."""
    local = write_cog(tmp_path / "s.tif", scene(2, 300))
    (http_server.root / "bucket").mkdir()
    shutil.copy(local, http_server.root / "bucket" / "s.tif")
    s3 = dict(AWS_S3_ENDPOINT=f"127.0.0.1:{http_server.port}", AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE",
              AWS_NO_SIGN_REQUEST="YES")
    with rasterio.Env(**s3):
        check_remote("s3://bucket/s.tif")
        with rasterio.Env(**REMOTE_GDAL_ENV), rasterio.open(gdal_path("s3://bucket/s.tif")) as ds, \
                rasterio.open(local) as ref:
            np.testing.assert_array_equal(ds.read(), ref.read())
        with pytest.raises(LandcoverError) as exc:
            check_remote("s3://bucket/missing.tif")
    assert one_line(exc).startswith("s3://bucket/missing.tif: ") and "not found" in str(exc.value)


# -- failing fast, in one line ---------------------------------------------------------------------------------
def test_a_url_that_404s_gives_one_line_at_once(http_server, capfd):  # noqa: F811
    url = http_server.url("nowhere/scene.tif")
    t0 = time.perf_counter()
    with pytest.raises(LandcoverError) as exc:
        check_remote(url)
    assert time.perf_counter() - t0 < FAST_FAIL_S
    assert one_line(exc) == f"{url}: imagery not found (HTTP 404)"
    # a file that exists but the server refuses as missing, given as a GDAL path: same words
    write_cog(http_server.root / "gone.tif", scene(1, 64))
    http_server.not_found = {"gone.tif"}
    with pytest.raises(LandcoverError, match=r"gone\.tif: imagery not found \(HTTP 404\)$"):
        check_remote("/vsicurl/" + http_server.url("gone.tif"))
    assert capfd.readouterr().err == ""


def test_a_silent_server_gives_one_line_within_seconds(http_server, capfd):  # noqa: F811
    write_cog(http_server.root / "scene.tif", scene(1, 64))
    http_server.silent = True
    url = http_server.url("scene.tif")
    t0 = time.perf_counter()
    with pytest.raises(LandcoverError) as exc:
        check_remote(url)
    elapsed = time.perf_counter() - t0
    assert TIMEOUT_S - 1 < elapsed < FAST_FAIL_S
    assert one_line(exc) == (f"{url}: the server did not answer within {TIMEOUT_S} s; check the address or your "
                             "network")
    # GDAL itself, with the remote settings, gives up as quickly (a server that hangs mid-run), and its error
    # reads the same
    t0 = time.perf_counter()
    with pytest.raises(rasterio.errors.RasterioIOError) as gdal_exc:
        with rasterio.Env(**REMOTE_GDAL_ENV), rasterio.open(gdal_path(url)):
            pass
    assert time.perf_counter() - t0 < FAST_FAIL_S
    assert "did not answer" in str(remote_error(url, str(gdal_exc.value)))
    assert capfd.readouterr().err == ""


def test_a_closed_port_gives_one_line_at_once():
    url = f"http://127.0.0.1:{free_port()}/scene.tif"
    with pytest.raises(LandcoverError) as exc:
        check_remote(url)
    assert one_line(exc).startswith(f"{url}: cannot connect (")
    assert str(exc.value).endswith("check the address or your network")


def test_gdal_errors_become_the_same_lines():
    url = "https://h/x.tif"
    assert str(remote_error(url, "HTTP response code: 404")) == f"{url}: imagery not found (HTTP 404)"
    assert "access denied (HTTP 403)" in str(remote_error(url, "HTTP response code: 403\nmore"))
    assert "did not answer within" in str(remote_error(url, "CURL error: Operation too slow. Less than 1 bytes"))
    assert "AWS_NO_SIGN_REQUEST=YES" in str(remote_error(
        "s3://b/k.tif", "AWS_SECRET_ACCESS_KEY and AWS_NO_SIGN_REQUEST configuration options not defined"))
    assert "GS_NO_SIGN_REQUEST=YES" in str(remote_error("gs://b/k.tif", "GS_SECRET_ACCESS_KEY ... credentials"))


# -- STAC Items ------------------------------------------------------------------------------------------------
S2_BANDS = [("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"), ("B11", "swir16")]


def write_item(folder: Path, assets: dict | None = None, name: str = "item.json", **extra) -> Path:
    """A Sentinel-2-like STAC 1.0 Item: one single-band COG per band (relative hrefs), a 3-band ``visual`` COG
    and a thumbnail; the COGs are written beside it (band k holds the value 10 * k + 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    if assets is None:
        assets = {}
        for k, (key, common) in enumerate(S2_BANDS):
            write_cog(folder / f"{key}.tif", np.full((1, 64, 64), 10 * k + 1, np.uint8))
            assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"], "eo:bands": [{"name": key, "common_name": common}]}
        write_cog(folder / "TCI.tif", np.full((3, 64, 64), 200, np.uint8))
        assets["visual"] = {"href": "TCI.tif", "type": "image/tiff; application=geotiff", "roles": ["visual"],
                            "eo:bands": [{"name": "B04", "common_name": "red"},
                                         {"name": "B03", "common_name": "green"},
                                         {"name": "B02", "common_name": "blue"}]}
        assets["thumbnail"] = {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    doc = {"type": "Feature", "stac_version": "1.0.0", "id": "S2_TEST",
           "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
           "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
           "bbox": [0, 0, 1, 1], "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [],
           "assets": assets, **extra}
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_stac_item_over_http_by_common_name_and_asset_key(http_server):  # noqa: F811
    write_item(http_server.root / "s2")
    url = http_server.url("s2/item.json")
    assert is_stac_item(url)
    refs = item_bands(url, ["red", "green", "blue", "nir"])
    base = "/vsicurl/" + http_server.url("s2")
    assert refs == [BandRef(f"{base}/B04.tif", 1, "red"), BandRef(f"{base}/B03.tif", 1, "green"),
                    BandRef(f"{base}/B02.tif", 1, "blue"), BandRef(f"{base}/B08.tif", 1, "nir")]
    # the paths are what GDAL reads: the right files' pixels come back over HTTP
    with rasterio.Env(**REMOTE_GDAL_ENV):
        values = []
        for ref in refs:
            with rasterio.open(ref.path) as ds:
                values.append(int(ds.read(ref.band)[0, 0]))
    assert values == [21, 11, 1, 31]
    # asset keys, and names as the user wrote them (key, common name or band name, any case)
    assert item_bands(url, ["B11", "b04", "NIR"]) == [BandRef(f"{base}/B11.tif", 1, "B11"),
                                                      BandRef(f"{base}/B04.tif", 1, "b04"),
                                                      BandRef(f"{base}/B08.tif", 1, "NIR")]
    # the key of a multi-band asset: all its bands, named by eo:bands
    assert [(r.band, r.name) for r in item_bands(url, ["visual"])] == [(1, "red"), (2, "green"), (3, "blue")]


def test_stac_item_on_disk_resolves_relative_hrefs(tmp_path, monkeypatch):
    item = write_item(tmp_path / "catalog" / "s2")
    monkeypatch.chdir(tmp_path)
    relative = "catalog/s2/item.json"
    assert is_stac_item(relative)
    refs = item_bands(relative, ["swir16", "B02"])
    assert refs == [BandRef(str(item.parent / "B11.tif"), 1, "swir16"), BandRef(str(item.parent / "B02.tif"), 1, "B02")]
    assert all(Path(r.path).is_file() for r in refs)


def test_stac_item_without_bands_takes_the_data_geotiffs_in_order(tmp_path):
    folder = tmp_path / "item"
    folder.mkdir()
    write_cog(folder / "rgbn.tif", np.zeros((4, 32, 32), np.uint8))
    write_cog(folder / "mask.tif", np.zeros((1, 32, 32), np.uint8))
    write_cog(folder / "extra.tif", np.zeros((2, 32, 32), np.uint8))
    assets = {
        "rgbn": {"href": "rgbn.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                 "eo:bands": [{"name": "b1", "common_name": "red"}, {"name": "b2", "common_name": "green"},
                              {"name": "b3", "common_name": "blue"}, {"name": "b4", "common_name": "nir"}]},
        "mask": {"href": "mask.tif", "type": "image/tiff", "roles": ["cloud"]},
        "extra": {"href": "extra.tif", "type": "image/tiff", "roles": ["data"]},  # no eo:bands: opened to count
        "meta": {"href": "meta.xml", "type": "application/xml", "roles": ["metadata"]},
    }
    item = write_item(folder, assets)
    refs = item_bands(str(item), None)
    assert [(Path(r.path).name, r.band, r.name) for r in refs] == [
        ("rgbn.tif", 1, "red"), ("rgbn.tif", 2, "green"), ("rgbn.tif", 3, "blue"), ("rgbn.tif", 4, "nir"),
        ("extra.tif", 1, "extra.1"), ("extra.tif", 2, "extra.2")]
    # a name that only the cloud mask's key matches is still the user's to ask for
    assert item_bands(str(item), ["mask"]) == [BandRef(str(folder / "mask.tif"), 1, "mask")]
    with pytest.raises(LandcoverError) as exc:
        item_bands(str(item), ["meta"])
    assert "asset 'meta' is application/xml, not imagery" in one_line(exc)


def test_stac_11_bands_and_a_common_name_on_several_assets(tmp_path):
    """STAC 1.1 describes bands in ``bands`` with ``eo:common_name``; a JPEG 2000 twin of a COG and a true-colour
    image also carry ``red``: the single-band GeoTIFF with role data wins."""
    assets = {
        "visual": {"href": "tci.tif", "type": "image/tiff", "roles": ["visual"],
                   "bands": [{"name": "B04", "eo:common_name": "red"}, {"name": "B03", "eo:common_name": "green"}]},
        "red-jp2": {"href": "B04.jp2", "type": "image/jp2", "roles": ["data"],
                    "bands": [{"name": "B04", "eo:common_name": "red"}]},
        "B04": {"href": "B04.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                "bands": [{"name": "B04", "eo:common_name": "red"}]},
    }
    item = write_item(tmp_path / "i", assets)
    doc = json.loads(item.read_text())
    doc["stac_version"] = "1.1.0"
    item.write_text(json.dumps(doc))
    assert item_bands(str(item), ["red"]) == [BandRef(str(tmp_path / "i" / "B04.tif"), 1, "red")]
    assert item_bands(str(item), ["green"]) == [BandRef(str(tmp_path / "i" / "tci.tif"), 2, "green")]


def test_stac_missing_band_names_what_the_item_has(http_server):  # noqa: F811
    write_item(http_server.root / "s2")
    url = http_server.url("s2/item.json")
    with pytest.raises(LandcoverError) as exc:
        item_bands(url, ["red", "swir3"])
    assert one_line(exc) == (f"{url}: no asset or eo:bands common name 'swir3'; it has: B02 (blue), B03 (green), "
                             "B04 (red), B08 (nir), B11 (swir16), visual (red, green, blue)")


def test_json_that_is_not_a_stac_item(tmp_path, http_server):  # noqa: F811
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert not is_stac_item(str(collection))
    with pytest.raises(LandcoverError) as exc:
        item_bands(str(collection), ["red"])
    assert one_line(exc).startswith(f"{collection}: not a STAC Item (JSON of type 'FeatureCollection'")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert not is_stac_item(str(broken))
    with pytest.raises(LandcoverError, match=r"broken\.json: not JSON \("):
        item_bands(str(broken), None)
    assert not is_stac_item(str(tmp_path / "absent.json"))
    assert not is_stac_item(str(write_cog(tmp_path / "scene.tif", scene(1, 32))))
    # a .json URL that is not there, or a server that does not answer: the remote lines
    with pytest.raises(LandcoverError, match=r"item\.json: STAC Item not found \(HTTP 404\)$"):
        is_stac_item(http_server.url("item.json"))
    (http_server.root / "plain.json").write_text(json.dumps({"type": "Feature", "geometry": None}))
    assert not is_stac_item(http_server.url("plain.json"))
