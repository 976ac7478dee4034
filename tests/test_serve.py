"""``landcover serve`` end to end on loopback: a real service process on a free port, a small model package, a real
NAIP raster from ../shared/data; jobs killed and resumed, tiles and COGs compared with a local classify_pixels run,
bad requests, a bounded load test, the CLI's --server, and the web page in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("fastapi")
pytest.importorskip("rio_tiler")

from conftest import torch_threads  # noqa: E402
from landcover.classes import ClassInfo  # noqa: E402

pytestmark = pytest.mark.realdata

TOKEN = "test-token-123"
NAIP = "chesapeake-naip-1m/tile_downsampled/m_3907833_nw_17_1_naip-new.tif"
CLASSES = [ClassInfo(1, "Water", (0, 112, 255)), ClassInfo(2, "Trees", (38, 115, 0)),
           ClassInfo(5, "Built", (255, 0, 0))]
#: the main job: NAIP resampled to 30 m (205 x 256 px), small blocks so that a kill finds it half done
MAIN_JOB = {"cell_size": 15.0, "padding": 8, "block_size": 64}  # ~40 blocks: the kill lands mid-job
ENDED = ("finished", "failed", "cancelled")


# --- helpers -----------------------------------------------------------------------------------------------

def call(base: str, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
         headers: dict | None = None, timeout: float = 60) -> tuple[int, object]:
    """(status, JSON or bytes) of a request to the service."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    if body is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, content, kind = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, content, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, json.loads(content) if kind.startswith("application/json") else content


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A ``landcover serve`` process (started, stopped, killed and restarted by the tests)."""

    def __init__(self, home: Path, roots: list[Path], log: Path, extra: tuple[str, ...] = ()):
        self.home, self.roots, self.log, self.extra = home, roots, log, extra
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        args = [sys.executable, "-m", "landcover.cli", "serve", "--port", str(self.port), "--home", str(self.home),
                *[a for r in self.roots for a in ("--data-root", str(r))], *self.extra]
        env = {**os.environ, "LANDCOVER_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if call(self.base, "GET", "/api", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the service did not answer within 60 s")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None

    def get(self, path: str):
        status, body = call(self.base, "GET", path)
        assert status == 200, (path, status, body)
        return body

    def wait(self, job_id: int, until=lambda j: j["state"] not in ("queued", "running"), timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/jobs/{job_id}")
            if until(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


def random_package(folder: Path, raster: Path) -> Path:
    """A small U-Net package with random weights whose batch-norm statistics are measured on the raster, so that
    it predicts several classes (the service only has to run it as classify_pixels does)."""
    import torch

    from landcover.model import UNet
    from landcover.package import ModelPackage, save_package

    torch.manual_seed(3)
    model = UNet(4, len(CLASSES) + 1, "resnet18")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the average over the calibration chips
    with rasterio.open(raster) as src, torch.no_grad():
        chips = np.stack([src.read(window=((r, r + 64), (c, c + 64))) for r in (0, 90, 180) for c in (0, 90, 180)])
        model.train()
        model((torch.from_numpy(chips.astype(np.float32)) - 110.0) / 40.0)
    model.eval()
    pkg = ModelPackage(classes=CLASSES, backbone="resnet18", extract_bands=[0, 1, 2, 3], mean=[110.0] * 4,
                       std=[40.0] * 4, tile_size=64, band_names=["red", "green", "blue", "nir"], input_dtype="uint8",
                       state_dict={k: v.detach() for k, v in model.state_dict().items()})
    return save_package(pkg, folder)


def png_rgba(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def colormap() -> dict:
    cmap = {c.value: (*c.color, 255) for c in CLASSES}
    cmap[0] = (0, 0, 0, 0)
    return cmap


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data):
    """The data root (package, a link out of it), the NAIP raster, and the local reference result."""
    from landcover.classify import classify_pixels

    naip = shared_data / NAIP
    if not naip.is_file():
        pytest.skip(f"{naip} is not present")
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "root"
    root.mkdir()
    pkg = random_package(root / "tiny", naip)
    shutil.copyfile(naip, tmp / "outside.tif")
    (root / "escape.tif").symlink_to(tmp / "outside.tif")  # inside the root, pointing out of it
    (root / "not-a-package.emd").write_text("{}")
    (root / "escape.vrt").write_text(  # a VRT inside the root whose source is outside
        f'<VRTDataset rasterXSize="260" rasterYSize="260"><SRS>EPSG:26917</SRS><VRTRasterBand dataType="Byte" '
        f'band="1"><SimpleSource><SourceFilename relativeToVRT="0">{tmp / "outside.tif"}</SourceFilename>'
        f'<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    (root / "linked").mkdir()  # a package folder whose weights are a link out of the root
    shutil.copyfile(pkg / "tiny.emd", root / "linked" / "tiny.emd")
    shutil.copyfile(pkg / "tiny.safetensors", tmp / "tiny.safetensors")
    (root / "linked" / "tiny.safetensors").symlink_to(tmp / "tiny.safetensors")
    env = pytest.MonkeyPatch()
    env.setenv("LANDCOVER_CACHE", str(tmp / "cache"))  # the service (it inherits it) and the reference
    with torch_threads(1):
        ref = classify_pixels(naip, pkg, tmp / "reference.tif", progress=False, **MAIN_JOB)
    yield {"tmp": tmp, "root": root, "naip": naip, "pkg": pkg, "reference": ref, "roots": [root, naip.parent]}
    env.undo()


@pytest.fixture(scope="module")
def service(world):
    svc = Service(world["tmp"] / "home", world["roots"], world["tmp"] / "serve.log").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def main_job(world, service):
    """Install the package, submit the main job, kill the service half way, restart it: the finished job."""
    status, model = call(service.base, "POST", "/api/models", {"path": "tiny"})
    assert status == 201, model
    assert [c["name"] for c in model["classes"]] == ["Water", "Trees", "Built"]
    assert model["bands"]["names"] == ["red", "green", "blue", "nir"] and model["tile_size"] == 64
    status, job = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": str(world["naip"]),
                                                          **MAIN_JOB})
    assert status == 201 and job["state"] == "queued", job
    half = service.wait(job["id"], lambda j: j["progress"]["blocks_done"] >= 2 or j["state"] in ENDED)
    assert half["state"] == "running" and half["progress"]["blocks_done"] < half["progress"]["blocks_total"], half
    service.stop(signal.SIGKILL)  # no goodbye: the job's process dies with the service
    work = service.home / "jobs" / str(job["id"]) / "classes.tif.blocks"
    kept = sorted(p.name for p in work.glob("*.done"))
    assert kept, "the killed job kept no finished block"
    time.sleep(0.5)
    assert sorted(p.name for p in work.glob("*.done")) == kept, "a job process outlived the killed service"
    service.start()
    done = service.wait(job["id"])
    assert done["state"] == "finished", done
    assert done["attempts"] == 2 and done["progress"]["blocks_done"] == done["progress"]["blocks_total"]
    return done


# --- tests -------------------------------------------------------------------------------------------------

def test_killed_service_resumes_job_with_identical_pixels(world, service, main_job, tmp_path):
    status, cog = call(service.base, "GET", f"/api/jobs/{main_job['id']}/cog")
    assert status == 200
    (tmp_path / "served.tif").write_bytes(cog)
    with rasterio.open(tmp_path / "served.tif") as got, rasterio.open(world["reference"]) as ref:
        assert got.profile["driver"] == "GTiff" and got.profile.get("tiled")
        assert (got.width, got.height, got.crs, got.transform) == (ref.width, ref.height, ref.crs, ref.transform)
        a, b = got.read(1), ref.read(1)
        assert np.array_equal(a, b)
        assert len(np.unique(a)) >= 2  # a map, not a constant
        assert got.colormap(1)[5][:3] == (255, 0, 0)


def test_tiles_match_local_result(world, service, main_job):
    from rio_tiler.io import Reader

    job = main_job["id"]
    tj = service.get(f"/api/jobs/{job}/tilejson.json")
    with Reader(str(world["reference"])) as r:
        bounds = r.get_geographic_bounds(r.tms.rasterio_geographic_crs)
        assert tj["bounds"] == pytest.approx(list(bounds))
        z = r.maxzoom
        tiles = list(r.tms.tiles(*bounds, zooms=[z]))
        assert tiles and tj["tiles"][0].endswith(f"/api/jobs/{job}/tiles/{{z}}/{{x}}/{{y}}.png")
        for t in tiles[:4]:
            status, png = call(service.base, "GET", f"/api/jobs/{job}/tiles/{t.z}/{t.x}/{t.y}.png")
            assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
            local = r.tile(t.x, t.y, t.z, tilesize=256, indexes=1, resampling_method="nearest",
                           reproject_method="nearest").render(img_format="PNG", colormap=colormap())
            assert np.array_equal(png_rgba(png), png_rgba(local))
        # the class colours and no data (transparent) only
        colours = {tuple(c) for c in png_rgba(png).reshape(-1, 4)}
        assert colours <= {(*c.color, 255) for c in CLASSES} | {(0, 0, 0, 0)}
        t = tiles[0]
    status, png = call(service.base, "GET", f"/api/jobs/{job}/imagery/{t.z}/{t.x}/{t.y}.png")
    rgba = png_rgba(png)
    assert status == 200 and rgba.shape == (256, 256, 4) and rgba[..., :3].std() > 5  # real imagery
    assert call(service.base, "GET", f"/api/jobs/{job}/tiles/3/1/1.png")[0] == 404  # far from the layer

    # The class at a point: the COG's value at that pixel's centre.
    from pyproj import Transformer

    with rasterio.open(world["reference"]) as ref:
        values = ref.read(1)
        row, col = 200, 150
        x, y = ref.xy(row, col)
        lon, lat = Transformer.from_crs(ref.crs, "EPSG:4326", always_xy=True).transform(x, y)
    point = service.get(f"/api/jobs/{job}/point?lon={lon}&lat={lat}")
    assert point["value"] == int(values[row, col])
    assert point["name"] == next(c.name for c in CLASSES if c.value == point["value"])

    # WMTS capabilities that QGIS / ArcGIS Pro read: both layers, Web Mercator, a REST template
    status, xml = call(service.base, "GET", f"/api/jobs/{job}/WMTSCapabilities.xml")
    ns = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
    doc = ET.fromstring(xml)
    layers = doc.findall("w:Contents/w:Layer", ns)
    assert [la.find("ows:Identifier", ns).text for la in layers] == [f"job{job}-classes", f"job{job}-imagery"]
    template = layers[0].find("w:ResourceURL", ns).get("template")
    assert template == f"{service.base}/api/jobs/{job}/tiles/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
    tms = doc.find("w:Contents/w:TileMatrixSet", ns)
    assert tms.find("ows:SupportedCRS", ns).text.endswith("EPSG::3857")
    assert len(tms.findall("w:TileMatrix", ns)) == tj["maxzoom"] + 1


def _snapshot(world, service) -> tuple:
    home = service.home
    return (sorted(p.name for p in (home / "jobs").iterdir()), sorted(p.name for p in (home / "models").iterdir()),
            len(service.get("/api/jobs?limit=1000")["jobs"]), len(service.get("/api/models")["models"]))


def test_bad_requests_are_4xx_json_and_leave_nothing(world, service, main_job):
    before = _snapshot(world, service)
    naip = str(world["naip"])
    good = {"model": "tiny", "imagery": naip}
    cases = [
        ("POST", "/api/jobs", good, None, 401, "token"),
        ("POST", "/api/jobs", good, "wrong", 403, "wrong token"),
        ("POST", "/api/jobs", {**good, "model": "nope"}, TOKEN, 404, "'nope' is not installed"),
        ("POST", "/api/jobs", {**good, "imagery": "/etc/hostname"}, TOKEN, 403, "outside"),
        ("POST", "/api/jobs", {**good, "imagery": "../serve/reference.tif"}, TOKEN, 403, "'..'"),
        ("POST", "/api/jobs", {**good, "imagery": "escape.tif"}, TOKEN, 403, "outside"),
        ("POST", "/api/jobs", {**good, "imagery": "escape.vrt"}, TOKEN, 403, "outside"),
        ("POST", "/api/jobs", {**good, "mosaic": [naip, "escape.tif"], "imagery": None}, TOKEN, 403, "outside"),
        ("POST", "/api/jobs", {**good, "imagery": "missing.tif"}, TOKEN, 404, "no such file"),
        ("POST", "/api/jobs", {**good, "imagery": "/vsicurl/http://127.0.0.1:1/x.tif"}, TOKEN, 403, "not a path"),
        ("POST", "/api/jobs", {**good, "extent": [0, 0, 10, 10]}, TOKEN, 422, "does not overlap"),
        ("POST", "/api/jobs", {**good, "padding": 40}, TOKEN, 422, "padding"),
        ("POST", "/api/jobs", {**good, "tile_size": 8}, TOKEN, 422, "tile_size"),
        ("POST", "/api/jobs", {**good, "colour": "red"}, TOKEN, 422, "colour"),
        ("POST", "/api/jobs", {"model": "tiny"}, TOKEN, 422, "exactly one"),
        ("POST", "/api/jobs", {**good, "backend": "gpu9"}, TOKEN, 422, "backend"),
        ("POST", "/api/models", {"path": "tiny"}, TOKEN, 409, "already installed"),
        ("POST", "/api/models", {"path": "not-a-package.emd", "name": "bad"}, TOKEN, 422, "not-a-package.emd"),
        ("POST", "/api/models", {"path": "/etc"}, TOKEN, 403, "outside"),
        ("POST", "/api/models", {"path": "linked", "name": "linked"}, TOKEN, 403, "links outside"),
        ("POST", "/api/models", {"path": "tiny", "name": "../x"}, TOKEN, 400, "model name"),
        ("DELETE", "/api/models/nope", None, TOKEN, 404, "not installed"),
        ("DELETE", "/api/models/tiny", None, None, 401, "token"),
        ("POST", f"/api/jobs/{main_job['id']}/cancel", None, TOKEN, 409, "finished"),
        ("GET", "/api/jobs/9999", None, None, 404, "job 9999"),
        ("GET", "/api/jobs/9999/tiles/1/0/0.png", None, None, 404, "job 9999"),
        ("GET", f"/api/jobs/{main_job['id']}/tiles/30/0/0.png", None, None, 404, "zoom"),
    ]
    for method, path, body, token, code, words in cases:
        status, answer = call(service.base, method, path, body, token=token)
        assert status == code and isinstance(answer, dict), (path, body, status, answer)
        assert words in answer["error"] and "\n" not in answer["error"], (body, answer)
    # malformed JSON, an oversized body, a garbage upload
    status, answer = call(service.base, "POST", "/api/jobs", raw=b'{"model": "tiny",',
                          headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = call(service.base, "POST", "/api/jobs", raw=b"{" + b" " * 200_000 + b"}",
                          headers={"Content-Type": "application/json"})
    assert status == 413 and "limit" in answer["error"]
    status, answer = call(service.base, "POST", "/api/models?name=junk", raw=b"PK\x03\x04 not a zip",
                          headers={"Content-Type": "application/octet-stream"})
    assert status == 422 and "junk.dlpk" in answer["error"], answer
    status, answer = call(service.base, "POST", "/api/models?name=huge", raw=b"x" * 16,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(2 << 30)})
    assert status == 413
    assert _snapshot(world, service) == before


def test_upload_show_uninstall(world, service, main_job):
    dlpk = (world["pkg"] / "tiny.dlpk").read_bytes()
    status, model = call(service.base, "POST", "/api/models?name=uploaded", raw=dlpk,
                         headers={"Content-Type": "application/zip"})
    assert status == 201 and model["name"] == "uploaded" and model["file"] == "uploaded.dlpk", model
    shown = service.get("/api/models/uploaded")
    assert shown["classes"] == model["classes"] and shown["cell_size"] is None
    assert call(service.base, "DELETE", "/api/models/uploaded")[0] == 200
    assert not (service.home / "models" / "uploaded").exists()
    assert call(service.base, "GET", "/api/models/uploaded")[0] == 404


def test_load_tiles_and_fair_queue_and_cancel(world, service, main_job):
    job = main_job["id"]
    from rio_tiler.io import Reader

    with Reader(str(world["reference"])) as r:
        bounds = r.get_geographic_bounds(r.tms.rasterio_geographic_crs)
        tiles = [t for z in (r.maxzoom, r.maxzoom + 1) for t in r.tms.tiles(*bounds, zooms=[z])]
    paths = [f"/api/jobs/{job}/tiles/{t.z}/{t.x}/{t.y}.png" for t in (tiles * 50)[:50]]
    t0 = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda p: call(service.base, "GET", p, timeout=60), paths))
    elapsed = time.monotonic() - t0
    assert all(s == 200 and png[:4] == b"\x89PNG" for s, png in results)
    assert elapsed < 30, f"50 concurrent tiles took {elapsed:.1f} s"

    # 5 small jobs from two owners; with one job at a time they start alternately by owner
    x0, y0 = 672000.0, 4370000.0
    owners = ["ann", "ann", "ann", "bob", "bob"]
    ids = []
    for k, owner in enumerate(owners):
        extent = [x0 + 300 * k, y0, x0 + 300 * k + 900, y0 + 900]  # 39 x 31 px: one or two tiles
        status, j = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": str(world["naip"]),
                                                             "extent": extent, "padding": 8, "owner": owner})
        assert status == 201, j
        ids.append(j["id"])
    status, extra = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": str(world["naip"])})
    status, cancelled = call(service.base, "POST", f"/api/jobs/{extra['id']}/cancel")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert call(service.base, "DELETE", "/api/models/tiny")[0] == 409  # in use by queued jobs
    jobs = [service.wait(i, timeout=150) for i in ids]
    assert [j["state"] for j in jobs] == ["finished"] * 5, [j.get("error") for j in jobs]
    order = [j["owner"] for j in sorted(jobs, key=lambda j: j["started_at"])]
    assert order == ["ann", "bob", "ann", "bob", "ann"], order
    assert service.get(f"/api/jobs/{extra['id']}")["state"] == "cancelled"
    folder = service.home / "jobs" / str(extra["id"])
    assert not folder.exists() or [p.name for p in folder.iterdir()] in ([], ["worker.log"])


def test_cancel_running_job_cleans_up(world, service, main_job):
    status, job = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": str(world["naip"]),
                                                          **MAIN_JOB})
    # queued behind it: a job whose imagery is gone by the time it runs fails with the one-line reason
    shutil.copyfile(world["naip"], world["root"] / "gone.tif")
    status, doomed = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": "gone.tif"})
    assert status == 201, doomed
    (world["root"] / "gone.tif").unlink()
    service.wait(job["id"], lambda j: j["progress"]["blocks_done"] >= 1 or j["state"] in ENDED)
    status, answer = call(service.base, "POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 200 and answer["state"] == "cancelled"
    folder = service.home / "jobs" / str(job["id"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(p.name != "worker.log" for p in folder.iterdir()):
        time.sleep(0.1)
    assert [p.name for p in folder.iterdir()] in ([], ["worker.log"])
    assert service.get(f"/api/jobs/{job['id']}")["state"] == "cancelled"
    failed = service.wait(doomed["id"])
    assert failed["state"] == "failed" and "gone.tif" in failed["error"] and "\n" not in failed["error"], failed
    assert {p.name for p in (service.home / "jobs" / str(doomed["id"])).iterdir()} <= {"worker.log", "status.json"}


def test_classify_cli_with_server(world, service, main_job, tmp_path, monkeypatch, capsys):
    from landcover.classify import classify_pixels
    from landcover.cli import main

    monkeypatch.setenv("LANDCOVER_TOKEN", TOKEN)
    out, local = tmp_path / "remote.tif", tmp_path / "local.tif"
    extent = ["672000", "4370000", "673500", "4371500"]
    args = ["classify", "--server", service.base, "--model", "tiny", "--imagery", str(world["naip"]),
            "--out", str(out), "--extent", *extent, "--padding", "8"]
    assert main(args) == 0
    with torch_threads(1):
        classify_pixels(world["naip"], world["pkg"], local, extent=[float(v) for v in extent], padding=8,
                        progress=False)
    with rasterio.open(out) as got, rasterio.open(local) as ref:
        assert got.transform == ref.transform and np.array_equal(got.read(1), ref.read(1))
    assert out.with_suffix(".qml").exists() and Path(str(out) + ".aux.xml").exists()
    err = capsys.readouterr().err
    assert "submitted" in err and "finished" in err
    # the service's refusal is one line, exit 2, and nothing is written
    bad = tmp_path / "bad.tif"
    assert main(["classify", "--server", service.base, "--model", "nope", "--imagery", str(world["naip"]),
                 "--out", str(bad)]) == 2
    assert "'nope' is not installed" in capsys.readouterr().err and not bad.exists()
    monkeypatch.setenv("LANDCOVER_TOKEN", "wrong")
    assert main(["classify", "--server", service.base, "--model", "tiny", "--imagery", str(world["naip"]),
                 "--out", str(bad)]) == 2
    assert "wrong token" in capsys.readouterr().err


def test_serve_refuses_bad_options(tmp_path, capsys):
    from landcover.cli import main

    assert main(["serve", "--data-root", str(tmp_path / "missing")]) == 2
    assert "--data-root" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port), "--home", str(tmp_path / "h")]) == 2
        assert "give another --port" in capsys.readouterr().err


# --- the web page in headless Chromium ----------------------------------------------------------------------

CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1200,800"]


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_in_headless_chromium(world, service, main_job, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    job = main_job["id"]
    browser.get(f"{service.base}/#job={job}")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend .legend-name")) == 3)
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#legend .legend-name")] == [
        "Water", "Trees", "Built"]
    assert browser.find_element(By.CSS_SELECTOR, "#models [data-model=tiny]")
    assert "finished" in browser.find_element(By.CSS_SELECTOR, f"#jobs [data-job='{job}']").text
    loaded = "return Array.from(document.querySelectorAll('.lc-classes img.leaflet-tile-loaded'))" \
             ".filter(function (i) { return i.naturalWidth === 256; }).length"
    wait.until(lambda d: d.execute_script(loaded) > 0)
    wait.until(lambda d: d.execute_script("return document.querySelectorAll("
                                          "'.leaflet-tile-pane img.leaflet-tile-loaded').length")
               > d.execute_script(loaded))  # imagery tiles under the classes
    src = browser.execute_script("return document.querySelector('.lc-classes img.leaflet-tile-loaded').src")
    assert f"/api/jobs/{job}/tiles/" in src
    browser.save_screenshot(str(tmp_path / "serve-page.png"))

    # the opacity slider sets the class layer's opacity
    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 25; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert browser.execute_script("return window.landcoverServe.state.classes.options.opacity") == 0.25

    # the class under the cursor, where the local result has a known class
    from pyproj import Transformer

    with rasterio.open(world["reference"]) as ref:
        row, col = 200, 150
        value = int(ref.read(1)[row, col])
        lon, lat = Transformer.from_crs(ref.crs, "EPSG:4326", always_xy=True).transform(*ref.xy(row, col))
    # zoomed in on that pixel (a pixel covers many screen pixels), the cursor at the map's centre
    browser.execute_script("window.landcoverServe.map.setView([arguments[0], arguments[1]], 17, {animate: false});",
                           lat, lon)
    mapdiv = browser.find_element(By.ID, "map")
    ActionChains(browser).move_to_element_with_offset(mapdiv, 5, 5).perform()
    ActionChains(browser).move_to_element(mapdiv).perform()
    name = next(c.name for c in CLASSES if c.value == value)
    wait.until(lambda d: d.find_element(By.ID, "cursor").text.startswith(f"Class: {name} ({value})"))
    browser.save_screenshot(str(tmp_path / "serve-page-cursor.png"))
