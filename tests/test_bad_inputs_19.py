"""What a new user's probe of bad inputs still found (issue 19, item 7), run through ``landcover.cli.main`` as a
user runs it: each case is one line on stderr; a refusal exits with code 2 and leaves nothing behind.

- classify of all-nodata imagery says so (a warning: it is known only once every pixel was read);
- ``lr-find --out`` gets the output checks of every command (``--overwrite``, never a file of its own data);
- ``map --max-size`` must be a whole number > 0 (``render_map`` refuses it too);
- a full disk (or a file-size limit) is one line naming the output, never libtiff's hundreds of lines;
- a ``--pretrained`` pickle is refused without passing on torch's advice to unpickle it;
- a killed classify's hidden temporary COG and a finished run's work folder are cleaned on the next run.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import write_raster as _write_raster
from landcover.classes import ClassInfo
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.model import UNet
from landcover.package import ModelPackage, save_package

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRANSFORM = from_origin(500000.0, 4300000.0, 1.0, 1.0)
CLASSES = [ClassInfo(1, "Water", (0, 112, 255)), ClassInfo(2, "Trees", (38, 115, 0))]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_raster(path, array, **kw) -> Path:
    """A GeoTIFF whose bands are all data (4-band uint8 without ``photometric`` would be RGBA)."""
    return _write_raster(path, array, photometric="MINISBLACK", **kw)


def one_error_line(capsys_or_capfd, command: str) -> str:
    """The single stderr line of a refused command (asserted to be exactly one ``error:`` line)."""
    err = capsys_or_capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"landcover {command}: error: "), err
    return err


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LANDCOVER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained resnet18 U-Net package for 4-band uint8 imagery (the pixels it gives do not matter here)."""
    torch.manual_seed(0)
    net = UNet(4, len(CLASSES) + 1, "resnet18")
    pkg = ModelPackage(classes=CLASSES, backbone="resnet18", extract_bands=[0, 1, 2, 3], mean=[90.0] * 4,
                       std=[50.0] * 4, tile_size=64, band_names=["b1", "b2", "b3", "b4"], input_dtype="uint8",
                       state_dict={k: v.detach() for k, v in net.state_dict().items()})
    return save_package(pkg, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def imagery(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    return write_raster(tmp_path_factory.mktemp("img") / "scene.tif", rng.integers(1, 255, (4, 96, 96), np.uint8),
                        nodata=0, transform=TRANSFORM)


def classify(imagery, model, out, *extra) -> int:
    return main(["classify", "--imagery", str(imagery), "--model", str(model), "--out", str(out), "--quiet",
                 "--backend", "fp32", *map(str, extra)])


# --- 1. classify of all-nodata imagery ------------------------------------------------------------------------

def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_classify_all_nodata_imagery_says_so(tmp_path, model, capsys):
    """Whether any pixel is valid is known only after reading them all: the (valid, empty) map is written, and
    one warning line says why it is empty and what to check."""
    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 80, 80), np.uint8), nodata=0, transform=TRANSFORM)
    out = tmp_path / "map.tif"
    assert classify(empty, model, out) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"landcover classify: warning: {empty}: every pixel is nodata, so {out} holds no class; check "
                   "the imagery's nodata value (gdalinfo shows it, gdal_edit -a_nodata or -unsetnodata changes it)"]
    assert not _read(out).any() and not (tmp_path / "map.tif.blocks").exists()


def test_classify_extent_over_nodata_names_the_extent(tmp_path, model, capsys):
    img = np.random.default_rng(1).integers(1, 255, (4, 96, 96), np.uint8)
    img[:, :, :48] = 0  # the western half is nodata; tiles of the extent read the data beyond it as context
    path = write_raster(tmp_path / "half.tif", img, nodata=0, transform=TRANSFORM)
    x0, y1 = TRANSFORM.c, TRANSFORM.f
    assert classify(path, model, tmp_path / "west.tif", "--extent", x0, y1 - 96, x0 + 20, y1) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every pixel within the --extent is nodata" in err[0], err
    assert "check the --extent and the imagery's nodata value" in err[0]
    # an extent with data says nothing
    assert classify(path, model, tmp_path / "east.tif", "--extent", x0 + 60, y1 - 96, x0 + 96, y1) == 0
    assert capsys.readouterr().err == "" and _read(tmp_path / "east.tif").any()


def test_the_python_api_warns_too(tmp_path, model):
    from landcover.classify import ImageryWarning, classify_pixels

    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 70, 70), np.uint8), nodata=0, transform=TRANSFORM)
    with pytest.warns(ImageryWarning, match="empty.tif: every pixel is nodata"):
        out = classify_pixels(empty, model, tmp_path / "m.tif", progress=False, backend="fp32")
    assert not _read(out).any()


# --- 2. lr-find --out -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def png_chips(tmp_path_factory) -> Path:
    """A tiny PNG export (its chips are .png, the plot's own format)."""
    d = tmp_path_factory.mktemp("chips")
    rng = np.random.default_rng(3)
    img = write_raster(d / "rgb.tif", rng.integers(1, 255, (3, 64, 64), np.uint8), transform=TRANSFORM)
    lab = write_raster(d / "lab.tif", rng.integers(1, 3, (64, 64)).astype(np.uint8), nodata=0, transform=TRANSFORM)
    assert main(["export", "--imagery", str(img), "--labels", str(lab), "--out", str(d / "chips"), "--format",
                 "png", "--tile-size", "32", "--quiet"]) == 0
    return d / "chips"


def _no_training(monkeypatch):
    import landcover.cli.train as cli_train

    monkeypatch.setattr(cli_train, "_prepare", lambda *a, **k: pytest.fail("the check must come before training"))


def test_lr_find_never_replaces_a_training_chip(png_chips, monkeypatch, capsys):
    _no_training(monkeypatch)
    chip = sorted((png_chips / "images").glob("*.png"))[0]
    before = chip.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["lr-find", str(png_chips), "--out", str(chip), *extra]) == 2
        err = one_error_line(capsys, "lr-find")
        assert f"{chip}: would replace a file of the training data {png_chips}" in err
    assert chip.read_bytes() == before


def test_lr_find_refuses_an_existing_plot_without_overwrite(png_chips, tmp_path, monkeypatch, capsys):
    plot = tmp_path / "lr.png"
    plot.write_bytes(b"keep me")
    _no_training(monkeypatch)
    assert main(["lr-find", str(png_chips), "--out", str(plot)]) == 2
    assert one_error_line(capsys, "lr-find").endswith(f"{plot}: exists; add --overwrite to replace it")
    assert main(["lr-find", str(png_chips), "--out", str(tmp_path / "lr.txt")]) == 2
    assert "the plot is written as .png" in one_error_line(capsys, "lr-find")
    assert plot.read_bytes() == b"keep me"

    # with --overwrite it is replaced (the finder itself faked: this is about the output checks)
    import landcover.cli.train as cli_train

    class Fake:
        def lr_find(self, **kw):
            return 1e-3

        def lr_figure(self):
            import matplotlib.pyplot as plt

            return plt.figure()

    monkeypatch.setattr(cli_train, "_prepare", lambda *a, **k: (None, Fake()))
    assert main(["lr-find", str(png_chips), "--out", str(plot), "--overwrite"]) == 0
    assert plot.read_bytes().startswith(b"\x89PNG")


# --- 3. map --max-size --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-5", "0"])
def test_map_max_size_must_be_positive(tmp_path, capsys, value):
    classified = write_raster(tmp_path / "p.tif", np.ones((40, 40), np.uint8), nodata=0, transform=TRANSFORM)
    out = tmp_path / "map.png"
    assert main(["map", "--classified", str(classified), "--out", str(out), "--max-size", value]) == 2
    err = one_error_line(capsys, "map")
    assert f"--max-size {value}: must be a whole number greater than 0" in err
    assert not out.exists() and not list(tmp_path.glob(".map*"))


def test_render_map_checks_max_size_too(tmp_path):
    from landcover.maps import render_map

    classified = write_raster(tmp_path / "p.tif", np.ones((40, 40), np.uint8), nodata=0, transform=TRANSFORM)
    for bad in (0, -5, 2.5, True, float("nan"), "100"):
        with pytest.raises(LandcoverError, match=re.escape(f"max_size={bad!r}: must be a whole number greater")):
            render_map(classified, out=tmp_path / "m.png", max_size=bad)
    assert not (tmp_path / "m.png").exists()
    assert render_map(classified, out=tmp_path / "m.png", max_size=20).path.exists()


# --- 4. a full disk -------------------------------------------------------------------------------------------

@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(5)
    img = write_raster(tmp_path / "img.tif", rng.integers(1, 255, (4, 256, 256), np.uint8), transform=TRANSFORM)
    lab = write_raster(tmp_path / "lab.tif", rng.integers(1, 3, (256, 256)).astype(np.uint8), nodata=0,
                       transform=TRANSFORM)
    return img, lab


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_during_export_is_one_line_naming_the_folder(scene, tmp_path, monkeypatch, capfd):
    """Chips written to /dev/full: libtiff's real "No space left on device" messages, from the writer threads."""
    from landcover.export import chips

    full = tmp_path / "full.tif"
    full.symlink_to("/dev/full")  # a .tif name, so the chip writer picks GTiff (libtiff) as for a chip
    write = chips.ChipWriter._write
    monkeypatch.setattr(chips.ChipWriter, "_write", lambda self, path, *a: write(self, full, *a))
    out = tmp_path / "chips"
    capfd.readouterr()
    assert main(["export", "--imagery", str(scene[0]), "--labels", str(scene[1]), "--out", str(out),
                 "--tile-size", "64", "--workers", "2", "--quiet"]) == 2
    err = one_error_line(capfd, "export")  # capfd: C-level writes to stderr would show here
    # GDAL raised nothing for these writes (the export went on): libtiff's messages alone tell of the full disk
    assert err.startswith(f"landcover export: error: {out}: the disk is full") and "free some space" in err


def test_file_size_limit_during_export_is_one_line_not_a_silent_success(scene, tmp_path):
    """Under ``ulimit -f`` libtiff's writes fail, yet GDAL raised nothing and the export said it succeeded over
    truncated chips, after one libtiff line per failed write."""
    out = tmp_path / "chips"

    def limit():  # 16 KiB per file: each 128 x 128 x 4 chip is 64 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "landcover.cli", "export", "--imagery", str(scene[0]), "--labels",
                        str(scene[1]), "--out", str(out), "--tile-size", "128", "--quiet"],
                       capture_output=True, text=True, preexec_fn=limit, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"landcover export: error: {out}: a file grew past the file-size limit (ulimit -f, or the file system's "
        "largest file); raise the limit or write to another disk, then run again"]
    # the export stopped at the first short chip and removed what it had written: nothing looks complete
    assert not out.exists() or not any(out.rglob("*.tif"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_routed_keeps_libtiff_quiet_and_restores_it(capfd):
    from landcover.gdal_messages import routed

    def write_to_full():
        with rasterio.open("/dev/full", "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                           crs="EPSG:32617", transform=TRANSFORM) as ds:
            ds.write(np.ones((3, 256, 256), np.uint8))

    with pytest.raises(LandcoverError, match=r"^out: the disk is full; free some space$"):
        with routed("out"):
            write_to_full()
    assert capfd.readouterr().err == ""
    # outside the block libtiff's own handler is back (its lines are printed again)
    with pytest.raises(rasterio.errors.RasterioIOError):
        write_to_full()
    assert "No space left on device" in capfd.readouterr().err


# --- 5. --pretrained pickles ----------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pretrained_pickle_is_refused_without_torchs_advice(png_chips, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload(marker)}, evil)
    plain_numpy = tmp_path / "numpy.pt"
    torch.save({"conv1.weight": np.zeros(3)}, plain_numpy)
    for weights in (evil, plain_numpy):
        out = tmp_path / f"model_{weights.stem}"
        assert main(["train", str(png_chips), "--out", str(out), "--backbone", "resnet18", "--pretrained",
                     str(weights), "--epochs", "1", "--batch-size", "2"]) == 2
        err = one_error_line(capsys, "train")
        assert f"{weights}: not plain weights" in err and ".safetensors" in err and "state_dict()" in err
        assert "weights_only" not in err and "trust" not in err.lower()
        assert not out.exists()
    assert not marker.exists()


# --- 6. leftovers of a killed classify -------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    import landcover.classify.writer as writer
    from landcover.cli import main

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "cog":  # killed while GDAL writes the COG: its temporary file is there, still empty
        def copy_cog(vrt, dst, output, resampling):
            dst.write_bytes(b"")
            kill()
        writer._copy_cog = copy_cog
    else:  # killed right after the COG was renamed into place, before the work folder was removed
        rmtree = shutil.rmtree
        def rmtree_then_die(path, *a, **k):
            if str(path).endswith(".blocks"):
                kill()
            return rmtree(path, *a, **k)
        writer.shutil.rmtree = rmtree_then_die
    sys.exit(main(sys.argv[2:]))
""")


def _killed_run(when: str, imagery, model, out, *extra) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILLER, when, "classify", "--imagery", str(imagery), "--model",
                        str(model), "--out", str(out), "--quiet", "--backend", "fp32", *extra],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_a_kill_during_the_cog_write_leaves_nothing_after_the_next_run(tmp_path, imagery, model, capsys):
    out = tmp_path / "map.tif"
    _killed_run("cog", imagery, model, out)
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".map.")]
    assert len(partial) == 1 and partial[0].stat().st_size == 0  # the leftover the probe found
    assert (tmp_path / "map.tif.blocks").is_dir() and not out.exists()
    # not ours: another output's temporary file, and a name that does not follow our pattern
    decoys = [tmp_path / ".other.0123abcd.partial.tif", tmp_path / ".map.notahexid.partial.tif"]
    for d in decoys:
        d.write_bytes(b"")
    assert classify(imagery, model, out, "--resume") == 0
    assert out.exists() and not (tmp_path / "map.tif.blocks").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(d.name for d in decoys)


def test_a_kill_after_the_rename_leaves_no_work_folder_after_the_next_run(tmp_path, imagery, model, capsys):
    out = tmp_path / "map.tif"
    _killed_run("rename", imagery, model, out)
    assert out.exists() and (tmp_path / "map.tif.blocks").is_dir()
    assert classify(imagery, model, out) == 2  # the finished map is not replaced without --overwrite ...
    assert one_error_line(capsys, "classify").endswith("add --overwrite to replace it")
    assert not (tmp_path / "map.tif.blocks").exists()  # ... but the finished run's work folder is gone
    with rasterio.open(out) as ds:
        assert ds.read(1).any()


def test_an_unfinished_runs_work_folder_is_kept_for_resume(tmp_path, imagery, model):
    from landcover.classify.writer import MANIFEST, clear_leftovers

    out = tmp_path / "map.tif"
    assert classify(imagery, model, out) == 0
    work = tmp_path / "map.tif.blocks"
    # a later run over the same output (with --overwrite) that was stopped: its manifest is newer than the map
    work.mkdir()
    time.sleep(0.01)
    (work / MANIFEST).write_text('{"grid": {"width": 96, "height": 96}}')
    assert clear_leftovers(out) == [] and work.is_dir()
    # a run stopped before it wrote any map
    out.unlink()
    assert clear_leftovers(out) == [] and work.is_dir()
