"""Whole-raster classification: a tiny model trained here on generated scenes classifies generated rasters."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import write_raster
from landcover.classes import ClassInfo, read_class_table
from landcover.classify import blocks as blocks_mod
from landcover.classify import classify_pixels
from landcover.classify.blend import ClassDecoder
from landcover.classify.choose import cached_decision, choose_backend, cpu_has_native_bf16
from landcover.classify.engine import Engine, TTAEngine, _first_argmax, weights_hash
from landcover.classify.plan import TilePlan
from landcover.errors import LandcoverError
from landcover.model import UNet
from landcover.package import ModelPackage, load_package, save_package

VALUES = (1, 2, 5)
CLASSES = [ClassInfo(1, "Water", (0, 112, 255)), ClassInfo(2, "Trees", (38, 115, 0)),
           ClassInfo(5, "Built", (255, 0, 0))]
MEAN, STD = 90.0, 50.0
TRANSFORM = from_origin(500000.0, 4300000.0, 1.0, 1.0)


def scene(rng, h, w, min_size=6, max_size=30):
    """A label map of random rectangles; class value v brightens band VALUES.index(v)."""
    lab = np.full((h, w), 1, np.uint8)
    for _ in range(max(3, h * w // (3 * max_size * max_size // 4))):
        y, x = rng.integers(0, h), rng.integers(0, w)
        lab[y: y + rng.integers(min_size, max_size), x: x + rng.integers(min_size, max_size)] = rng.choice(VALUES)
    img = rng.normal(60, 12, (4, h, w))
    for k, v in enumerate(VALUES):
        img[k][lab == v] += 90
    return np.clip(img, 1, 255).astype(np.uint8), lab


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LANDCOVER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A resnet18 U-Net trained for a few dozen steps to tell the three classes apart, as a package."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(4, len(VALUES) + 1, "resnet18")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    lut = np.zeros(256, np.int64)
    lut[list(VALUES)] = np.arange(1, len(VALUES) + 1)
    for _ in range(40):
        xs, ys = zip(*(scene(rng, 64, 64) for _ in range(3)), strict=True)
        x = torch.from_numpy((np.stack(xs).astype(np.float32) - MEAN) / STD)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(lut[np.stack(ys)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pkg = ModelPackage(classes=CLASSES, backbone="resnet18", extract_bands=[0, 1, 2, 3], mean=[MEAN] * 4,
                       std=[STD] * 4, tile_size=64, band_names=["b1", "b2", "b3", "b4"], input_dtype="uint8",
                       state_dict={k: v.detach() for k, v in model.state_dict().items()})
    return save_package(pkg, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def raster(tmp_path_factory):
    """(path, labels) of a 230 x 300 generated scene with nodata (0) in its top-left corner."""
    img, lab = scene(np.random.default_rng(1), 230, 300, 12, 50)
    img[:, :40, :60] = 0
    path = write_raster(tmp_path_factory.mktemp("img") / "scene.tif", img, nodata=0, transform=TRANSFORM)
    return path, lab


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


# --- plan and blending ------------------------------------------------------------------------------------------

def test_plan_covers_every_pixel_with_weight_and_no_rim():
    plan = TilePlan.build(300, 230, 64, 16, 100)
    for axis in (plan.rows, plan.cols):
        total = np.zeros(axis.size)
        for k, s in enumerate(axis.starts):
            total[s: s + axis.tile] += axis.window(k)
            assert 0 <= s and s + axis.tile <= axis.size  # no tile reads past the raster
        assert total.min() > 0.999  # every pixel has weight
        assert np.allclose(total, 1)  # across every overlap the two ramps add up to one
        assert axis.window(0)[0] == 1 and axis.window(axis.count - 1)[-1] == 1  # raster edges: full weight
        assert axis.window(1)[0] == 0  # interior edges: the least-context pixels are not used
        segs = axis.segments
        assert segs[0].start == 0 and segs[-1].stop == axis.size
        assert all(a.stop == b.start for a, b in zip(segs, segs[1:], strict=False))
    pieces = plan.pieces()
    assert sum(plan.piece_rect(p)[2] * plan.piece_rect(p)[3] for p in pieces) == 300 * 230


def test_a_window_is_tiled_as_the_whole_raster():
    whole = TilePlan.build(300, 230, 64, 16, 100)
    part = TilePlan.build(150, 90, 64, 16, 100, window=(37, 140, 300, 230))
    for a, b, offset in ((whole.rows, part.rows, 37), (whole.cols, part.cols, 140)):
        assert a.tile == b.tile
        weights_a, weights_b = np.zeros((a.count, a.size)), np.zeros((a.count, a.size))
        for k in range(a.count):
            weights_a[k, a.starts[k]: a.starts[k] + a.tile] = a.window(k)
        first = a.starts.index(b.starts[0] + offset)
        for k in range(b.count):  # the window's tiles are the whole raster's, with the same weights
            assert b.starts[k] + offset == a.starts[first + k]
            weights_b[first + k, offset + b.starts[k]: offset + b.starts[k] + b.tile] = b.window(k)
        inside = slice(offset, offset + b.size)
        assert np.array_equal(weights_a[:, inside], weights_b[:, inside])  # no weight inside is missed
        assert b.segments[0].start == 0 and b.segments[-1].stop == b.size
        assert [(s.start + offset, s.stop + offset) for s in b.segments] == [
            (max(s.start, offset), min(s.stop, offset + b.size)) for s in a.segments
            if s.stop > offset and s.start < offset + b.size]
    assert part.rows.starts[0] < 0  # the first tile reads context above the window
    with pytest.raises(ValueError):
        TilePlan.build(150, 90, 64, 16, 100, window=(200, 0, 300, 230))


def test_decoder_excludes_background_and_ignored():
    logits = np.zeros((4, 1, 3), np.float32)
    logits[0] = 5  # background wins unless excluded
    logits[2, 0, 1] = 1
    logits[3, 0, 2] = 1
    lut = np.array([0, 1, 2, 5], np.uint8)
    assert ClassDecoder.build(lut, True).classes(logits).tolist() == [[0, 0, 0]]
    assert ClassDecoder.build(lut, False).classes(logits).tolist() == [[1, 2, 5]]
    assert ClassDecoder.build(lut, False, ignore_values=[2]).classes(logits).tolist() == [[1, 1, 5]]
    probs = ClassDecoder.build(lut, False).probabilities(logits)
    assert probs.shape == (3, 1, 3) and abs(int(probs[:, 0, 0].sum()) - 255) <= 2


def test_tta_inverts_each_transform():
    class Pointwise(Engine):  # a per-pixel model is equivariant, so TTA must return exactly its output
        def _forward(self, x, w):
            return np.concatenate([x, x ** 2], axis=1) * w, None

    rng = np.random.default_rng(0)
    tiles = [rng.random((2, 32, 32)).astype(np.float32), rng.random((2, 40, 24)).astype(np.float32)]
    weights = [rng.random(t.shape[1:]).astype(np.float32) for t in tiles]
    for (base, _), (tta, classes) in zip(Pointwise().run(tiles, weights), TTAEngine(Pointwise()).run(tiles, weights),
                                         strict=True):
        assert classes is None and np.allclose(tta, base, atol=1e-6)


# --- classification ------------------------------------------------------------------------------------------------

def test_classifies_generated_raster(model_dir, raster, tmp_path):
    path, lab = raster
    out = classify_pixels(path, model_dir, tmp_path / "map.tif", padding=8, progress=False)
    classes = read(out)
    valid = np.ones(lab.shape, bool)
    valid[:40, :60] = False
    assert (classes[~valid] == 0).all()  # nodata where the input is nodata
    assert (classes[valid] != 0).all()
    assert (classes[valid] == lab[valid]).mean() > 0.8
    # no rim: the outermost rows and columns are as good as the interior
    edge = np.zeros_like(valid)
    edge[[0, 1, -2, -1], :] = edge[:, [0, 1, -2, -1]] = True
    assert (classes[edge & valid] == lab[edge & valid]).mean() > 0.75
    with rasterio.open(out) as ds, rasterio.open(path) as src:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0 and ds.count == 1
        assert ds.profile["compress"] == "deflate" and ds.profile["tiled"]
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        cmap = ds.colormap(1)
        assert cmap[1][:3] == (0, 112, 255) and cmap[5][:3] == (255, 0, 0)
    assert read_class_table(out) == CLASSES  # names from the attribute table (.aux.xml)
    assert "Built" in out.with_suffix(".qml").read_text()
    assert not (tmp_path / "map.tif.blocks").exists()


def test_block_cut_does_not_change_pixels(model_dir, raster, tmp_path):
    path, _ = raster
    kw = dict(padding=8, progress=False, predict_background=False)
    one = classify_pixels(path, model_dir, tmp_path / "one.tif", block_size=10_000,
                          probabilities=tmp_path / "p1.tif", **kw)
    many = classify_pixels(path, model_dir, tmp_path / "many.tif", block_size=60, batch_size=3,
                           probabilities=tmp_path / "p2.tif", **kw)
    assert np.array_equal(read(one), read(many))
    with rasterio.open(tmp_path / "p1.tif") as a, rasterio.open(tmp_path / "p2.tif") as b:
        pa, pb = a.read(), b.read()
        assert np.array_equal(pa, pb)
        assert a.count == 3 and a.descriptions == ("Water", "Trees", "Built")
        mask = a.dataset_mask()
        assert (mask[:40, :60] == 0).all() and (mask[40:, 60:] == 255).all()
    classes = read(one)
    valid = classes > 0
    top = np.array(VALUES, np.uint8)[pa.argmax(axis=0)]
    assert (top[valid] == classes[valid]).mean() > 0.99  # probabilities agree with the class map
    sums = pa.sum(axis=0, dtype=int)[valid]
    assert sums.min() >= 250 and sums.max() <= 260


@pytest.mark.parametrize("cell", [None, 1.5])
def test_an_extent_gives_the_whole_runs_pixels(model_dir, raster, tmp_path, cell):
    """An extent is snapped to the whole raster's cells (at the cell size asked for) and tiled as the whole
    raster, reading context beyond its edges: its map is the whole map's window, pixel for pixel, so maps of
    adjacent extents join without a seam."""
    path, _ = raster
    kw = dict(padding=8, progress=False, block_size=60, cell_size=cell)
    whole_path = classify_pixels(path, model_dir, tmp_path / "whole.tif", probabilities=tmp_path / "wp.tif", **kw)
    with rasterio.open(whole_path) as ds, rasterio.open(tmp_path / "wp.tif") as prob:
        whole, whole_p, t = ds.read(1), prob.read(), ds.transform
    assert whole.shape == ((230, 300) if cell is None else (154, 200))  # whole cells covering the raster
    for name, (r0, r1, c0, c1) in {"inner": (50, 120, 70, 151), "edge": (0, 97, 133, 200),
                                   "tiny": (101, 103, 55, 56)}.items():
        # an extent a little inside those cells: it is snapped outward to them
        x_min, y_max = t * (c0 + 0.3, r0 + 0.2)
        x_max, y_min = t * (c1 - 0.4, r1 - 0.1)
        out = classify_pixels(path, model_dir, tmp_path / f"{name}.tif", extent=(x_min, y_min, x_max, y_max),
                              probabilities=tmp_path / f"{name}-p.tif", **kw)
        with rasterio.open(out) as ds, rasterio.open(tmp_path / f"{name}-p.tif") as prob:
            assert (ds.height, ds.width) == (r1 - r0, c1 - c0)
            assert ds.transform == t * rasterio.Affine.translation(c0, r0)
            assert np.array_equal(ds.read(1), whole[r0:r1, c0:c1]), name
            assert np.array_equal(prob.read(), whole_p[:, r0:r1, c0:c1]), name


def test_pieces_are_raw_only_when_the_disk_has_room(model_dir, raster, tmp_path, monkeypatch):
    """Class pieces skip deflate when the disk has room; on a full disk they are compressed. Same pixels."""
    import shutil

    from landcover.classify import writer as writer_mod

    path, _ = raster
    seen: list[str] = []
    original = blocks_mod.profile_for

    def recording(*args, **kwargs):
        profile = original(*args, **kwargs)
        if args[2] == 1:  # class pieces (the probabilities' are always deflated)
            seen.append(profile["compress"])
        return profile

    monkeypatch.setattr(writer_mod, "profile_for", recording)
    monkeypatch.setattr(blocks_mod, "profile_for", recording)
    roomy = read(classify_pixels(path, model_dir, tmp_path / "roomy.tif", padding=8, block_size=60,
                                 progress=False))
    assert seen and set(seen) == {"none"}
    seen.clear()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**29))
    full = read(classify_pixels(path, model_dir, tmp_path / "full.tif", padding=8, block_size=60, progress=False))
    assert seen and set(seen) == {"deflate"}
    assert np.array_equal(roomy, full)


def test_overviews_are_gdal_mode_and_masked(model_dir, tmp_path):
    """Rasters larger than a COG block get overviews: the classes' are GDAL's MODE of the full resolution
    (nodata excluded), the probabilities' keep the nodata mask."""
    img, _ = scene(np.random.default_rng(7), 700, 1100, 12, 50)
    img[:, :100, :300] = 0
    path = write_raster(tmp_path / "wide.tif", img, nodata=0, transform=TRANSFORM)
    out = classify_pixels(path, model_dir, tmp_path / "wide-map.tif", padding=8, block_size=400,
                          probabilities=tmp_path / "wide-p.tif", progress=False)
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4] and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        full = ds.read(1)
    with rasterio.open(out, overview_level=0) as ov:
        level = ov.read(1)
    with rasterio.MemoryFile() as mem, mem.open(driver="GTiff", width=1100, height=700, count=1, dtype="uint8",
                                                nodata=0, crs="EPSG:32617", transform=TRANSFORM) as plain:
        plain.write(full, 1)
        expected = plain.read(1, out_shape=(350, 550), resampling=rasterio.enums.Resampling.mode)
    assert np.array_equal(level, expected)
    assert (level[:50, :150] == 0).all() and (level[50:, 150:] > 0).all()
    assert not list(tmp_path.glob("*.mosaic.tif")) and not (tmp_path / "wide-map.tif.blocks").exists()
    with rasterio.open(tmp_path / "wide-p.tif", overview_level=0) as ov:
        assert ov.count == 3 and ov.height == 350
        mask = ov.dataset_mask()
        assert (mask[:50, :150] == 0).all() and (mask[50:, 150:] == 255).all()


def test_cog_write_failure_is_one_line(tmp_path):
    from landcover.classify.writer import _copy_cog

    vrt = tmp_path / "classes.vrt"  # a mosaic whose piece is gone
    vrt.write_text('<VRTDataset rasterXSize="600" rasterYSize="600"><VRTRasterBand dataType="Byte" band="1">'
                   '<SimpleSource><SourceFilename relativeToVRT="1">gone.tif</SourceFilename>'
                   '<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    with pytest.raises(LandcoverError, match="out.tif: could not write the COG"):
        _copy_cog(vrt, tmp_path / "tmp.tif", tmp_path / "out.tif", "MODE")
    assert not (tmp_path / "classes.mosaic.tif").exists() and not (tmp_path / "tmp.tif").exists()


def test_tta_and_extent_with_cell_size(model_dir, raster, tmp_path):
    path, lab = raster
    # an extent in another CRS, resampled to 2 m cells
    from rasterio.warp import transform_bounds

    left, top = TRANSFORM.c + 70, TRANSFORM.f - 50
    bounds = transform_bounds("EPSG:32617", "EPSG:4326", left, top - 160, left + 200, top)
    out = classify_pixels(path, model_dir, tmp_path / "sub.tif", padding=8, extent=bounds, extent_crs="EPSG:4326",
                          cell_size=2, test_time_augmentation=True, progress=False)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32617 and ds.res == (2.0, 2.0)
        assert ds.bounds.left >= left - 10 and ds.bounds.right <= left + 210
        classes = ds.read(1)
        rows, cols = np.mgrid[0: ds.height, 0: ds.width]
        xs, ys = ds.xy(rows.ravel(), cols.ravel())
    r, c = rasterio.transform.rowcol(TRANSFORM, xs, ys)
    truth = lab[np.clip(r, 0, 229), np.clip(c, 0, 299)].reshape(classes.shape)
    assert (classes == truth).mean() > 0.75


def test_background_is_not_predicted_when_no_class_has_value_0(model_dir, raster, tmp_path):
    # The background (index 0) is never trained on; a model whose background score wins everywhere must still
    # give classes, as arcgis.learn turns predict_background off when no class has value 0.
    pkg = load_package(model_dir)
    state = dict(pkg.state_dict)
    state["head.bias"] = state["head.bias"].clone()
    state["head.bias"][0] = 1e4
    loud = save_package(ModelPackage(**{**vars(pkg), "state_dict": state}), tmp_path / "loud")
    assert all(c.value != 0 for c in pkg.classes)
    path, _ = raster
    classes = read(classify_pixels(path, loud, tmp_path / "c.tif", padding=8, progress=False))
    assert (classes[40:, 60:] > 0).all()


def test_small_and_all_nodata_rasters(model_dir, tmp_path):
    img, _ = scene(np.random.default_rng(3), 40, 50)
    small = classify_pixels(write_raster(tmp_path / "small.tif", img, nodata=0), model_dir, tmp_path / "s.tif",
                            progress=False)
    assert read(small).shape == (40, 50) and (read(small) > 0).all()  # smaller than a tile: classified
    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 90, 100), np.uint8), nodata=0)
    assert (read(classify_pixels(empty, model_dir, tmp_path / "e.tif", progress=False)) == 0).all()


def test_resume_after_a_crash_gives_identical_pixels(model_dir, raster, tmp_path, monkeypatch):
    path, _ = raster
    kw = dict(padding=8, block_size=60, progress=False)
    reference = read(classify_pixels(path, model_dir, tmp_path / "ref.tif", **kw))
    out = tmp_path / "run.tif"
    real_run, calls = blocks_mod._BlockRun.run, []

    def crashing(self):
        calls.append(self.block)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real_run(self)

    monkeypatch.setattr(blocks_mod._BlockRun, "run", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        classify_pixels(path, model_dir, out, **kw)
    assert not out.exists() and (tmp_path / "run.tif.blocks" / "manifest.json").exists()
    with pytest.raises(LandcoverError, match=r"add resume=True to continue it, or overwrite=True"):
        classify_pixels(path, model_dir, out, **kw)
    with pytest.raises(LandcoverError, match="tile"):
        classify_pixels(path, model_dir, out, tile_size=96, resume=True, **kw)
    monkeypatch.setattr(blocks_mod._BlockRun, "run", real_run)
    calls.clear()
    seen = []
    monkeypatch.setattr(blocks_mod._BlockRun, "run", lambda self: seen.append(self.block) or real_run(self))
    classify_pixels(path, model_dir, out, resume=True, **kw)
    assert len(seen) == len(TilePlan.build(230, 300, 64, 8, 60).blocks) - 3  # finished blocks were skipped
    assert np.array_equal(read(out), reference)
    assert not (tmp_path / "run.tif.blocks").exists()


def test_resume_after_a_crash_in_the_cog_write(model_dir, raster, tmp_path, monkeypatch):
    """Killed while writing the COG, after the seams were assembled and their contributions removed."""
    from landcover.classify import writer as writer_mod

    path, _ = raster
    kw = dict(padding=8, block_size=60, progress=False)
    reference = read(classify_pixels(path, model_dir, tmp_path / "ref.tif", **kw))
    out = tmp_path / "run.tif"
    work = tmp_path / "run.tif.blocks"
    real_copy = writer_mod._copy_cog

    def crashing(*args):
        assert list(work.glob("s*.tif")) and not list(work.glob("*.seams"))
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(writer_mod, "_copy_cog", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        classify_pixels(path, model_dir, out, **kw)
    monkeypatch.setattr(writer_mod, "_copy_cog", real_copy)
    monkeypatch.setattr(blocks_mod._BlockRun, "run", lambda self: pytest.fail("a finished block ran again"))
    classify_pixels(path, model_dir, out, resume=True, **kw)
    assert np.array_equal(read(out), reference)
    assert not work.exists()


def test_backend_choice_agrees_and_is_cached(model_dir, raster, monkeypatch):
    pkg = load_package(model_dir)
    decoder = ClassDecoder.build(pkg.index_to_value, True)
    img, _ = scene(np.random.default_rng(5), 64, 64)
    calib = ((img.astype(np.float32) - MEAN) / STD)[None]
    valid = np.ones((1, 64, 64), bool)
    decision = choose_backend(pkg, decoder, calib, valid, model_hash=weights_hash(pkg),
                              candidates=("fp32", "bf16", "onnx", "int8"))
    results = decision["results"]
    assert decision["backend"] in results and results[decision["backend"]]["agreement"] >= 0.995
    assert {"fp32", "bf16", "onnx", "int8"} <= set(results)
    assert results["onnx"]["agreement"] > 0.99  # the exported graph computes the same classes
    monkeypatch.setattr("landcover.classify.choose._measure", lambda *a, **k: pytest.fail("not cached"))
    again = choose_backend(pkg, decoder, calib, valid, model_hash=weights_hash(pkg),
                           candidates=("fp32", "bf16", "onnx", "int8"))
    assert again["backend"] == decision["backend"]
    # what classify_pixels looks up before it reads any calibration tiles
    cached = cached_decision(decoder, model_hash=weights_hash(pkg), candidates=("fp32", "bf16", "onnx", "int8"),
                             tile=[64, 64])
    assert cached == decision
    assert cached_decision(decoder, model_hash=weights_hash(pkg), candidates=("fp32",), tile=[64, 64]) is None


def test_unrolled_argmax_is_argmax():
    # Integer scores make ties common (the first index must win); -inf columns are excluded classes.
    scores = torch.randint(-3, 4, (2, 9, 17, 23)).float()
    scores[:, 0] = float("-inf")
    scores[:, 5] = float("-inf")
    got = _first_argmax(scores)
    assert torch.equal(got, torch.argmax(scores, dim=1))
    assert np.array_equal(got.numpy(), scores.numpy().argmax(axis=1))  # as the blended pixels decode


# bf16-compiled compiles for about a minute on 2 cores: tested where auto may pick it, on a CPU with native bf16
@pytest.mark.parametrize("backend", ["bf16", "onnx", pytest.param("bf16-compiled", marks=[
    pytest.mark.slow, pytest.mark.skipif(not cpu_has_native_bf16(), reason="compiled bf16 is tested on CPUs with "
                                         "native bf16 (avx512_bf16/amx_bf16), where auto may pick it")])])
def test_other_backends_classify_alike(model_dir, raster, tmp_path, backend):
    path, _ = raster
    ref = read(classify_pixels(path, model_dir, tmp_path / "fp32.tif", padding=8, progress=False))
    out = read(classify_pixels(path, model_dir, tmp_path / f"{backend}.tif", padding=8, backend=backend,
                               progress=False))
    assert (out == ref).mean() > 0.99


# --- Dask ------------------------------------------------------------------------------------------------------

def test_local_dask_cluster_gives_the_same_raster(model_dir, raster, tmp_path, monkeypatch):
    path, _ = raster
    kw = dict(padding=8, block_size=100, progress=False)
    ref = read(classify_pixels(path, model_dir, tmp_path / "local.tif", **kw))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    out = classify_pixels(path, model_dir, tmp_path / "dask.tif", workers=2, **kw)
    assert np.array_equal(read(out), ref)
    # Dask's nanny sets these to 1 in this process's environment for its workers; the run puts them back, so
    # later subprocesses (a notebook kernel, landcover train) are not left single-threaded
    assert os.environ["OMP_NUM_THREADS"] == "2" and "MKL_NUM_THREADS" not in os.environ


# --- bad input ---------------------------------------------------------------------------------------------------

def cli(capsys, *args) -> tuple[int, str]:
    from landcover.cli import main

    code = main(["classify", "--quiet", *map(str, args)])
    return code, capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(model_dir, raster, tmp_path, capsys):
    path, _ = raster
    out = tmp_path / "out.tif"
    bad_emd = tmp_path / "bad" / "bad.emd"
    bad_emd.parent.mkdir()
    bad_emd.write_text("{not json")
    three = write_raster(tmp_path / "three.tif", np.ones((3, 20, 20), np.uint8))
    uint16 = write_raster(tmp_path / "u16.tif", np.ones((4, 20, 20), np.uint16))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    img, _ = scene(np.random.default_rng(4), 90, 100)
    no_crs = write_raster(tmp_path / "nocrs.tif", img, crs=None)
    full = write_raster(tmp_path / "full.tif", img, tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    truncated = tmp_path / "truncated.tif"  # its header opens, its pixels do not
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    copy = write_raster(tmp_path / "copy.tif", img)
    before = copy.read_bytes()
    folder = tmp_path / "afolder"
    folder.mkdir()
    cases = [
        (["--model", model_dir, "--imagery", no_crs, "--out", out], "no CRS"),
        (["--model", model_dir, "--imagery", truncated, "--out", out, "--tile-size", 32], "truncated or corrupt"),
        (["--model", model_dir, "--imagery", copy, "--out", copy, "--overwrite"], "which it is made from"),
        (["--model", model_dir, "--imagery", path, "--out", folder, "--overwrite"], "is a folder"),
        (["--model", model_dir, "--imagery", path, "--out", tmp_path / "out.png"], "give it a .tif"),
        (["--model", model_dir, "--imagery", path, "--out", out, "--cell-size", "nan"], "--cell-size"),
        (["--model", model_dir, "--imagery", path, "--out", out, "--tile-size", 0], "at least 16"),
        (["--model", tmp_path / "nope.emd", "--imagery", path, "--out", out], "model not found"),
        (["--model", bad_emd, "--imagery", path, "--out", out], "not valid JSON"),
        (["--model", model_dir, "--imagery", three, "--out", out], "band"),
        (["--model", model_dir, "--imagery", uint16, "--out", out], "uint16"),
        (["--model", model_dir, "--imagery", path, "--out", out, "--extent", 0, 0, 10, 10], "does not overlap"),
        (["--model", model_dir, "--imagery", path, "--out", blocker / "out.tif"], "is a file, not a folder"),
        (["--model", model_dir, "--imagery", path, "--out", out, "--scheduler", "tcp://127.0.0.1:9"], "scheduler"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", model_dir, "--imagery", path, "--out", out, "--backend", "cuda"], "no CUDA GPU"))
    for args, message in cases:
        code, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / "out.tif.blocks").exists()
    assert copy.read_bytes() == before and list(folder.iterdir()) == []
    out.write_bytes(b"precious")
    code, err = cli(capsys, "--model", model_dir, "--imagery", path, "--out", out)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"precious"


def test_messages_name_arguments_as_the_user_gave_them(model_dir, raster, tmp_path, capsys):
    """The same mistake reads ``tile_size=0`` from Python and ``--tile-size 0`` from the command line."""
    path, _ = raster
    out = tmp_path / "out.tif"
    taken = tmp_path / "taken.tif"
    taken.write_bytes(b"x")
    cases = [  # (API keywords, CLI arguments, API words, CLI words)
        ({"tile_size": 0}, ["--tile-size", 0], "tile_size=0: must be at least 16", "--tile-size 0: must be at least 16"),
        ({"backend": "gpu"}, ["--backend", "gpu"], "backend='gpu': unknown backend", "--backend gpu: unknown backend"),
        ({"extent": (10, 0, 0, 10)}, ["--extent", 10, 0, 0, 10], "extent=(10.0, 0.0, 0.0, 10.0): xmin must be <",
         "--extent 10.0 0.0 0.0 10.0: xmin must be <"),
        ({"extent_crs": "EPSG:nope", "extent": (0, 0, 1, 1)}, ["--extent-crs", "EPSG:nope", "--extent", 0, 0, 1, 1],
         "extent_crs='EPSG:nope': not a CRS", "--extent-crs EPSG:nope: not a CRS"),
        ({"output": taken}, ["--out", taken], "exists; add overwrite=True to replace it",
         "exists; add --overwrite to replace it"),
    ]
    for kwargs, argv, api_words, cli_words in cases:
        with pytest.raises(LandcoverError) as info:
            classify_pixels(**{"input_raster": path, "model": model_dir, "output": out, "progress": False, **kwargs})
        assert api_words in str(info.value) and "--" not in str(info.value), info.value
        code, err = cli(capsys, "--model", model_dir, "--imagery", path, *(argv if "--out" in argv else
                                                                          ["--out", out, *argv]))
        assert code == 2 and cli_words in err, err
    assert not out.exists()


def test_cli_classifies(model_dir, raster, tmp_path, capsys):
    path, lab = raster
    out = tmp_path / "cli.tif"
    from landcover.cli import main

    code = main(["classify", "--model", str(model_dir / "tiny.dlpk"), "--imagery", str(path), "--out", str(out),
                 "--padding", "8", "--no-predict-background"])
    assert code == 0
    assert "MP/s" in capsys.readouterr().err.strip().splitlines()[-1]
    classes = read(out)
    assert (classes[40:, 60:] == lab[40:, 60:]).mean() > 0.8
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags(1)["LANDCOVER_CLASSES"])[0]["Name"] == "Water"


def test_cli_system_errors_and_interrupts_are_one_line(raster, tmp_path, capsys, monkeypatch):
    import errno

    import landcover.classify as classify_mod

    path, _ = raster
    for exc, code, words in [(OSError(errno.EACCES, "Permission denied", "/data/x.tif"), 2,
                              "error: /data/x.tif: Permission denied"),
                             (KeyboardInterrupt(), 130, "interrupted; rerun with --resume")]:
        def fail(*_a, _exc=exc, **_k):
            raise _exc

        monkeypatch.setattr(classify_mod, "classify_pixels", fail)
        got, err = cli(capsys, "--model", tmp_path / "m", "--imagery", path, "--out", tmp_path / "o.tif")
        assert got == code and words in err and len(err.strip().splitlines()) == 1, err


def test_resume_refusal_names_the_innermost_difference():
    from landcover.classify.writer import _first_difference

    grid = {"crs": "PROJCS[...long...]", "transform": [0.5, 0, 10], "width": 9}
    assert _first_difference("grid", grid, {**grid, "transform": [0.1, 0, 10]}) == (
        "grid.transform", [0.5, 0, 10], [0.1, 0, 10])
    assert _first_difference("tile", 64, 96) == ("tile", 64, 96)


def test_cell_size_far_from_the_models_is_warned(model_dir, raster, tmp_path, capsys):
    """A model trained at 0.5 m applied to 1 m imagery: a warning naming the cell size to resample to (one line
    from the CLI); none when the cell size is given or matches."""
    import dataclasses
    import warnings

    from rasterio.crs import CRS

    from landcover.classify import CellSizeWarning
    from landcover.package import load_package

    path, _ = raster
    pkg = load_package(model_dir)
    fine = save_package(dataclasses.replace(pkg, cell_size=(0.5, 0.5), crs_wkt=CRS.from_epsg(32617).to_wkt()),
                        tmp_path / "fine")
    same = save_package(dataclasses.replace(pkg, cell_size=(1.0, 1.0), crs_wkt=CRS.from_epsg(32617).to_wkt()),
                        tmp_path / "same")
    expected = r"cell size 1 m, the model was trained at 0.5 m.*with cell_size=0.5 to"
    with pytest.warns(CellSizeWarning, match=expected) as rec:
        classify_pixels(path, fine, tmp_path / "a.tif", padding=8, progress=False)
    assert rec[0].filename == __file__  # the user's line, not the package's
    with warnings.catch_warnings():
        warnings.simplefilter("error", CellSizeWarning)
        classify_pixels(path, same, tmp_path / "b.tif", padding=8, progress=False)
        classify_pixels(path, fine, tmp_path / "c.tif", padding=8, cell_size=2, progress=False)
    code, err = cli(capsys, "--model", fine, "--imagery", path, "--out", tmp_path / "d.tif", "--padding", 8)
    assert code == 0
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and lines[0].startswith("landcover classify: warning: ") and "--cell-size 0.5" in lines[0]


def test_arcgis_learn_call_classifies_like_the_plain_one(model_dir, raster, tmp_path):
    """arcgis.learn's call (model_arguments as strings, output_name, a context with cellSize, an Esri envelope
    and processorType) gives the pixels of landcover's own arguments with that meaning."""
    from rasterio.warp import transform_bounds

    path, _ = raster
    left, top = TRANSFORM.c + 70, TRANSFORM.f - 50
    bounds = transform_bounds("EPSG:32617", "EPSG:3857", left, top - 160, left + 200, top)
    envelope = dict(zip(("xmin", "ymin", "xmax", "ymax"), bounds, strict=True), spatialReference={"wkid": 102100})
    out = classify_pixels(input_raster=path, model=model_dir, output_name=str(tmp_path / "seed"), progress=False,
                          model_arguments={"padding": "8", "batch_size": "4", "predict_background": "False",
                                           "test_time_augmentation": "True", "tile_size": "64"},
                          context={"cellSize": "2", "extent": envelope, "processorType": "CPU"})
    assert out == tmp_path / "seed.tif"
    dotted = classify_pixels(path, {"uri": str(model_dir)}, output_name=str(tmp_path / "kent.2019"), padding=8,
                             process_all_raster_items=False, progress=False)
    assert dotted == tmp_path / "kent.2019.tif" and dotted.exists()
    named = classify_pixels(path, model_dir, tmp_path / "cpu.tif", padding=8, backend="fp32",
                            context={"processorType": "CPU"}, progress=False)  # a CPU backend by name fits CPU
    assert np.array_equal(read(named), read(dotted))
    plain = classify_pixels(path, model_dir, tmp_path / "plain.tif", padding=8, batch_size=4,
                            predict_background=False, test_time_augmentation=True, tile_size=64, cell_size=2,
                            extent=bounds, extent_crs="EPSG:3857", backend="cpu", progress=False)
    with rasterio.open(out) as a, rasterio.open(plain) as b:
        assert a.res == (2.0, 2.0) and (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        assert np.array_equal(a.read(1), b.read(1))


@pytest.mark.parametrize("kwargs, words", [
    ({"model_arguments": {"threshold": "0.5"}}, "not an argument of landcover's U-Net"),
    ({"model_arguments": {"padding": "eight"}}, "give a whole number"),
    ({"model_arguments": {"padding": "16"}, "padding": 8}, "give it once"),
    ({"model_arguments": {"batch_size": "4"}, "batch_size": 8}, "batch_size=8 and model_arguments['batch_size']=4"),
    ({"model_arguments": {"predict_background": "False"}, "predict_background": True}, "give it once"),
    ({"model_arguments": {"batch_size": "4"}, "context": {"batch_size": 8}}, "batch_size=4 and context['batch_size']=8"),
    ({"context": {"processorType": "TPU"}}, "give 'CPU' or 'GPU'"),
    ({"context": {"outSR": 4326}}, "reproject the result"),
    ({"gis": object()}, "drop gis="),
    ({"future": True}, "future=True: not supported"),
    ({"model": {"url": "https://host/model.emd"}}, "on this machine"),
    ({"padding": 8.5}, "padding=8.5: give a whole number"),
    ({"context": {"processorType": "GPU"}, "backend": "fp32"}, "give one of them" if torch.cuda.is_available()
     else "torch sees no CUDA GPU here; give 'CPU'"),
])
def test_arcgis_learn_forms_landcover_cannot_honour_are_refused(model_dir, raster, tmp_path, kwargs, words):
    import re

    with pytest.raises(LandcoverError, match=re.escape(words)):
        classify_pixels(**{"input_raster": raster[0], "model": model_dir, "output": tmp_path / "x.tif",
                           "progress": False, **kwargs})
    with pytest.raises(LandcoverError, match="model_arguments"):  # arcgis.learn's third positional argument
        classify_pixels(raster[0], model_dir, {"padding": "8"})
    assert not list(tmp_path.iterdir())


def test_larger_tiles_keep_the_models_context(model_dir, raster, tmp_path, capsys):
    """The tile defaults to the model's, the padding to a quarter of the model's tile, as arcgis.learn's
    ``ImageHeight // 4``, whatever tile is asked for (a smaller one gets a quarter of its own)."""
    from landcover.classify.plan import default_tiling
    from landcover.cli import main

    assert default_tiling(64) == (64, 16) and default_tiling(400) == (400, 100)
    assert default_tiling(64, 256) == (256, 16) and default_tiling(256, 128) == (128, 32)
    assert default_tiling(64, None, 8) == (64, 8) and default_tiling(64, 96, 40) == (96, 40)
    path, labels = raster  # 230 x 300: the 256-px tile is fitted to it, 2 x 2 of 192 px
    assert main(["classify", "--model", str(model_dir), "--imagery", str(path), "--out", str(tmp_path / "a.tif"),
                 "--backend", "fp32", "--tile-size", "256"]) == 0
    captured = capsys.readouterr()
    line = next(ln for ln in (captured.out + captured.err).splitlines() if ln.startswith("classified "))
    assert re.search(r"\b4 tiles of 192 px, padding 16\b", line), line
    small = read(classify_pixels(path, model_dir, tmp_path / "b.tif", backend="fp32", progress=False))
    large = read(tmp_path / "a.tif")
    assert (large == labels)[labels > 0].mean() >= (small == labels)[labels > 0].mean() - 0.01
