"""A landcover package runs in ArcGIS Pro: its raster function, replayed as Pro calls it, without landcover.

tests/arcgis_pro_harness.py replays "Classify Pixels Using Deep Learning" (Esri's call order, pixel blocks with
padding, batch layout and mask) on the unzipped .dlpk, in a virtual environment holding numpy, torch and
safetensors only; its map must agree with classify_pixels on the same raster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import write_raster
from landcover.classes import ClassInfo
from landcover.classify import classify_pixels
from landcover.interop.arcgis_pro import FUNCTION_FILE, NETWORK_FILE, check_imports, network_source
from landcover.model import UNet
from landcover.package import ModelPackage, save_package

HARNESS = Path(__file__).with_name("arcgis_pro_harness.py")
NAIP = "chesapeake-naip-1m/tile_downsampled/m_3907833_nw_17_1_naip-new.tif"
CHESAPEAKE = [ClassInfo(1, "Water", (0, 112, 255)), ClassInfo(2, "Tree canopy", (38, 115, 0)),
              ClassInfo(3, "Low vegetation", (163, 255, 115)), ClassInfo(4, "Barren", (255, 170, 0)),
              ClassInfo(5, "Impervious", (156, 156, 156)), ClassInfo(6, "Road", (0, 0, 0))]
#: keys arcgis.learn writes for a UnetClassifier that ArcGIS Pro reads
PRO_KEYS = ("Framework", "ModelConfiguration", "ModelType", "InferenceFunction", "ModelFile", "ImageHeight",
            "ImageWidth", "ExtractBands", "Classes", "SupportsVariableTileSize", "ModelFormat", "IsMultispectral",
            "ImageSpaceUsed", "ModelName", "Version", "MinCellSize", "MaxCellSize")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the bare environment: numpy, torch and safetensors, without landcover -------------------------------------

@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A venv (no pip) whose site-packages holds links to numpy, torch, safetensors and what importing them
    imports, from this interpreter's site-packages; landcover is not importable there.

    ``$LANDCOVER_TEST_PRO_PYTHON``: another interpreter to run the harness with instead, e.g. a venv holding
    the torch release an ArcGIS Pro version ships (``pip install torch==2.9.1 numpy safetensors``)."""
    other = os.environ.get("LANDCOVER_TEST_PRO_PYTHON")
    if other:
        check = subprocess.run([other, "-c", "import landcover"], capture_output=True, text=True, env=_env())
        assert check.returncode != 0 and "No module named 'landcover'" in check.stderr
        return Path(other)
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    probe = ("import sys, sysconfig, numpy, torch, torch.nn.functional, safetensors.torch; "
             "sp = sysconfig.get_paths()['purelib']; "
             "print('\\n'.join(sorted({m.__file__[len(sp) + 1:].split('/')[0] for m in list(sys.modules.values()) "
             "if getattr(m, '__file__', None) and m.__file__.startswith(sp + '/')})))")
    ours = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    here = Path(subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name in ours:
        if name.endswith(".pth") or name.startswith("_distutils_hack"):
            continue
        (site / name).symlink_to(here / name)
        libs = here / f"{name}.libs"  # bundled shared libraries of manylinux wheels (numpy.libs)
        if libs.is_dir() and not (site / libs.name).exists():
            (site / libs.name).symlink_to(libs)
    assert {"numpy", "torch", "safetensors"} <= set(ours)
    check = subprocess.run([str(python), "-c", "import landcover"], capture_output=True, text=True, env=_env())
    assert check.returncode != 0 and "No module named 'landcover'" in check.stderr
    return python


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_harness(python: Path, package: Path, pixels: np.ndarray, mask: np.ndarray, tmp: Path,
                arguments: dict | None = None, transform=None) -> subprocess.CompletedProcess:
    np.save(tmp / "pixels.npy", pixels)
    np.save(tmp / "mask.npy", mask.astype(np.uint8))
    return subprocess.run([str(python), str(HARNESS), str(package), str(tmp / "pixels.npy"), str(tmp / "mask.npy"),
                           "--out", str(tmp / "out.npy"), "--arguments", json.dumps(arguments or {}),
                           "--geo", json.dumps(_geo(transform or from_origin(0, 0, 1, 1)))],
                          capture_output=True, text=True, env=_env(), cwd=tmp, timeout=300)


def _geo(transform) -> dict:
    return {"xmin": transform.c, "ymax": transform.f, "cx": transform.a, "cy": -transform.e}


# --- packages ------------------------------------------------------------------------------------------------

def fitted_package(img: np.ndarray, labels: np.ndarray, classes: list[ClassInfo], folder: Path,
                   cell: tuple[float, float] | None = None, crs_wkt: str | None = None, steps: int = 30) -> Path:
    """A resnet18 package fitted for ``steps`` steps to the raster's own labels: an untrained U-Net predicts
    one class everywhere, which would make agreement trivial."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mean = img.reshape(img.shape[0], -1).mean(1)
    std = img.reshape(img.shape[0], -1).std(1) + 1
    model = UNet(img.shape[0], len(classes) + 1, "resnet18")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    lut = np.zeros(256, np.int64)
    lut[[c.value for c in classes]] = np.arange(1, len(classes) + 1)
    x_all = ((img - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    # inverse-frequency class weights: real land cover is dominated by one class (NAIP here: 79 % trees)
    freq = np.bincount(lut[labels].ravel(), minlength=len(classes) + 1).astype(np.float32) + 1
    weight = torch.from_numpy(np.where(np.arange(len(freq)) == 0, 0, freq.sum() / freq)).float()
    for _ in range(steps):
        r = rng.integers(0, img.shape[1] - 64, 4)
        c = rng.integers(0, img.shape[2] - 64, 4)
        x = torch.from_numpy(np.stack([x_all[:, a: a + 64, b: b + 64] for a, b in zip(r, c, strict=True)]))
        y = torch.from_numpy(np.stack([lut[labels[a: a + 64, b: b + 64]] for a, b in zip(r, c, strict=True)]))
        loss = torch.nn.functional.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Batch-norm statistics as the mean over the whole raster: after a few steps the running averages are far
    # from them, and a model in that state gives tile-to-tile noise rather than a map.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(torch.from_numpy(x_all[None]))
    pkg = ModelPackage(classes=classes, backbone="resnet18", extract_bands=list(range(img.shape[0])),
                       mean=mean.tolist(), std=std.tolist(), tile_size=64, cell_size=cell, crs_wkt=crs_wkt,
                       band_names=[f"b{i + 1}" for i in range(img.shape[0])],
                       state_dict={k: v.detach() for k, v in model.state_dict().items()})
    return save_package(pkg, folder)


def unzipped_dlpk(package: Path, tmp: Path) -> Path:
    """The package's .dlpk extracted, as ArcGIS Pro extracts it."""
    out = tmp / "unzipped"
    with zipfile.ZipFile(next(package.glob("*.dlpk"))) as zf:
        zf.extractall(out)
    return out


def generated_scene(rng, h: int, w: int):
    """(img (4, h, w) uint8, labels (h, w)) of random rectangles of classes 1, 2, 3; nodata (0) top-left."""
    lab = np.full((h, w), 2, np.uint8)
    for _ in range(h * w // 250):
        y, x = rng.integers(0, h), rng.integers(0, w)
        lab[y: y + rng.integers(6, 30), x: x + rng.integers(6, 30)] = rng.choice([1, 2, 3])
    img = rng.normal(60, 12, (4, h, w))
    for k in (1, 2, 3):
        img[k - 1][lab == k] += 90
    img = np.clip(img, 1, 255).astype(np.uint8)
    img[:, :30, :45] = 0
    return img, lab


def agreement(classes: np.ndarray, reference: np.ndarray) -> float:
    return float((classes == reference).mean())


def check_not_trivial(reference: np.ndarray) -> None:
    counts = np.bincount(reference.ravel(), minlength=256)
    assert (counts[1:] > 0.03 * reference.size).sum() >= 2, counts[:8]  # at least two classes over 3 %


# --- tests ---------------------------------------------------------------------------------------------------

def test_package_carries_the_raster_function(tmp_path):
    img, lab = generated_scene(np.random.default_rng(0), 80, 80)
    package = fitted_package(img, lab, CHESAPEAKE[:3], tmp_path / "pkg", cell=(1.0, 1.0), crs_wkt="EPSG:32617",
                             steps=0)
    emd = json.loads(next(package.glob("*.emd")).read_text())
    assert emd["InferenceFunction"] == FUNCTION_FILE
    assert all(k in emd for k in PRO_KEYS), [k for k in PRO_KEYS if k not in emd]
    assert "ModelPadding" not in emd and "ArcGISLearnVersion" not in emd
    assert [c["Value"] for c in emd["Classes"]] == [1, 2, 3] and all(len(c["Color"]) == 3 for c in emd["Classes"])
    for folder in (package, unzipped_dlpk(package, tmp_path)):
        assert (folder / FUNCTION_FILE).is_file() and (folder / NETWORK_FILE).is_file()
    # The bundled network is landcover's own, importing torch only.
    assert (package / NETWORK_FILE).read_text() == network_source()
    check_imports(network_source(), NETWORK_FILE)
    with pytest.raises(RuntimeError, match="imports landcover"):
        check_imports("import torch\nfrom landcover.errors import LandcoverError\n", "x.py")


def test_pro_harness_on_real_naip_agrees_with_classify_pixels(shared_data, bare_python, tmp_path):
    path = shared_data / NAIP
    with rasterio.open(path) as ds:
        img = ds.read()
        cell, crs, transform = ds.res, ds.crs.to_wkt(), ds.transform
    with rasterio.open(str(path).replace("naip-new", "lc")) as ds:
        labels = ds.read(1)
    package = fitted_package(img, labels, CHESAPEAKE, tmp_path / "naip", cell=cell, crs_wkt=crs)
    reference = _read(classify_pixels(path, package, tmp_path / "ref.tif", backend="fp32", progress=False))
    check_not_trivial(reference)
    result = run_harness(bare_python, unzipped_dlpk(package, tmp_path), img, np.ones(img.shape[1:]), tmp_path,
                         transform=transform)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads(result.stdout)["config"]
    # blocks of the default batch (8 = 2 x 4 tiles of stride 64 - 2 * 16) with a tile of context on each side
    assert (config["padding"], config["ty"], config["tx"]) == (64, 64, 128)
    assert json.loads(result.stdout)["arguments"]["padding"] == "16"  # a quarter of the tile, as classify_pixels
    mosaic = np.load(tmp_path / "out.npy")
    assert mosaic.shape == reference.shape
    assert agreement(mosaic, reference) >= 0.99, agreement(mosaic, reference)


def test_pro_harness_arguments_and_nodata(bare_python, tmp_path):
    img, lab = generated_scene(np.random.default_rng(1), 110, 140)
    raster = write_raster(tmp_path / "scene.tif", img, nodata=0, transform=from_origin(500000, 4300000, 1, 1))
    package = fitted_package(img, lab, CHESAPEAKE[:3], tmp_path / "gen", cell=(1.0, 1.0), crs_wkt="EPSG:32617")
    folder = unzipped_dlpk(package, tmp_path)
    valid = (img != 0).any(axis=0)
    cases = [({}, {}, 2 * (64 - 2 * 16)),  # the default batch of 8: 2 x 4 tiles of stride 32
             ({"padding": "8", "batch_size": "4", "test_time_augmentation": "True"},
              {"padding": 8, "batch_size": 4, "test_time_augmentation": True}, 2 * (64 - 2 * 8)),
             # a larger tile keeps the model's context (a quarter of its 64 px), as classify_pixels
             ({"tile_size": "128", "batch_size": "4"}, {"tile_size": 128, "batch_size": 4}, 2 * (128 - 2 * 16))]
    for args, kw, ty in cases:
        reference = _read(classify_pixels(raster, package, tmp_path / "ref.tif", backend="fp32", overwrite=True,
                                          progress=False, **kw))
        check_not_trivial(reference)
        result = run_harness(bare_python, folder, img, valid, tmp_path, args, transform=from_origin(500000, 4300000, 1, 1))
        assert result.returncode == 0, result.stderr[-3000:]
        mosaic = np.load(tmp_path / "out.npy")
        assert (mosaic[~valid] == 0).all() and (mosaic[valid] > 0).all()  # nodata in, nodata out
        assert agreement(mosaic, reference) >= 0.99, (args, agreement(mosaic, reference))
        assert json.loads(result.stdout)["config"]["ty"] == ty, args


def test_pro_harness_block_with_fewer_bands_is_one_clear_error(bare_python, tmp_path):
    img, lab = generated_scene(np.random.default_rng(2), 70, 70)
    package = fitted_package(img, lab, CHESAPEAKE[:3], tmp_path / "gen", steps=0)
    result = run_harness(bare_python, unzipped_dlpk(package, tmp_path), img[:3], np.ones((70, 70)), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["ERROR: LandcoverClassifier: the pixel block has 3 band(s) but the model reads 4 (ExtractBands "
                     "[0, 1, 2, 3]); give the raster the model was trained on, with all its bands"], lines


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)
