"""Inference backends beyond torch (OpenVINO fp32 and int8), the automatic choice's candidates, and threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from conftest import write_raster
from landcover.classes import ClassInfo
from landcover.classify import choose as choose_mod
from landcover.classify import classify_pixels
from landcover.classify.artifacts import cache_lock, calibration_crops, prepare_artifact, work_copy_name
from landcover.classify.blend import ClassDecoder
from landcover.classify.engine import CPU_BACKENDS, build_engine, weights_hash
from landcover.errors import LandcoverError
from landcover.model import UNet
from landcover.package import ModelPackage, load_package, save_package
from landcover.threads import ENV, available_cores, split_threads, thread_budget, training_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VALUES = (1, 2, 5)
MEAN, STD = 90.0, 50.0


def scene(rng, h, w):
    """Random rectangles of three classes; class k brightens band k."""
    lab = np.full((h, w), 1, np.uint8)
    for _ in range(h * w // 300):
        y, x = rng.integers(0, h), rng.integers(0, w)
        lab[y: y + rng.integers(6, 24), x: x + rng.integers(6, 24)] = rng.choice(VALUES)
    img = rng.normal(60, 12, (4, h, w))
    for k, v in enumerate(VALUES):
        img[k][lab == v] += 90
    return np.clip(img, 1, 255).astype(np.uint8), lab


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A resnet18 U-Net trained for a few steps to tell three classes apart (logits far from ties, as a
    trained model's are: random weights say nothing about int8 agreement)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(4, len(VALUES) + 1, "resnet18")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    lut = np.zeros(256, np.int64)
    lut[list(VALUES)] = np.arange(1, len(VALUES) + 1)
    for _ in range(30):
        xs, ys = zip(*(scene(rng, 64, 64) for _ in range(3)), strict=True)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy((np.stack(xs) - MEAN) / STD).float()),
                                                 torch.from_numpy(lut[np.stack(ys)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    classes = [ClassInfo(v, f"class {v}", (40 * v, 0, 0)) for v in VALUES]
    pkg = ModelPackage(classes=classes, backbone="resnet18", extract_bands=[0, 1, 2, 3], mean=[MEAN] * 4,
                       std=[STD] * 4, tile_size=64, input_dtype="uint8",
                       state_dict={k: v.detach() for k, v in model.eval().state_dict().items()})
    return save_package(pkg, tmp_path_factory.mktemp("model") / "m")


def _tiles(n=3, size=96, seed=7):
    rng = np.random.default_rng(seed)
    return np.stack([((scene(rng, size, size)[0].astype(np.float32) - MEAN) / STD) for _ in range(n)])


@pytest.mark.parametrize("backend,floor", [("openvino", 0.999), ("openvino-int8", 0.98)])
def test_openvino_backends_agree_with_fp32(model_dir, backend, floor):
    pytest.importorskip("openvino")
    if backend == "openvino-int8":
        pytest.importorskip("nncf")
    pkg = load_package(model_dir)
    decoder = ClassDecoder.for_package(pkg, True)
    h = weights_hash(pkg)
    calib = _tiles(2, seed=3)
    with cache_lock(h):
        artifact = prepare_artifact(backend, pkg, decoder, h, calib)
    assert artifact.endswith(".ovz" if backend == "openvino-int8" else ".onnx")
    assert work_copy_name(artifact) == ("engine.ovz" if backend == "openvino-int8" else "engine.onnx")
    engine = build_engine(backend, pkg, decoder, artifact, threads=1)
    reference = build_engine("fp32", pkg, decoder)
    tiles = list(_tiles(3, size=80))  # 80: not a multiple of 32, padded as for every backend
    ones = [np.ones(t.shape[-2:], np.float32) for t in tiles]
    for (y, c), (y_ref, _) in zip(engine.run(tiles, ones), reference.run(tiles, ones), strict=True):
        assert y.shape == y_ref.shape and c.shape == y.shape[-2:] and c.dtype == np.uint8
        expected = decoder.classes(y_ref)
        assert (c == expected).mean() >= floor, f"{backend}: {(c == expected).mean():.4f}"
        assert np.array_equal(c, decoder.classes(y))  # the in-graph argmax is the argmax of its own logits
        # the logits stay float (the last convolution is not quantized): close to fp32's, not 256 levels
        assert np.abs(y - y_ref).mean() < (0.05 if backend == "openvino" else 0.6) * np.abs(y_ref).mean()
    # a second preparation reads the cache instead of quantizing again
    with cache_lock(h):
        assert prepare_artifact(backend, pkg, decoder, h, calib) == artifact


def test_openvino_int8_by_name_classifies_like_fp32(model_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("nncf")
    rng = np.random.default_rng(11)
    img, _ = scene(rng, 200, 232)
    path = write_raster(tmp_path / "img.tif", img, transform=from_origin(500000.0, 4300000.0, 1.0, 1.0))
    monkeypatch.setenv(ENV, "1")
    fp32 = classify_pixels(path, model_dir, tmp_path / "fp32.tif", padding=8, backend="fp32", progress=False)
    out = classify_pixels(path, model_dir, tmp_path / "ov.tif", padding=8, backend="openvino-int8")
    import rasterio

    with rasterio.open(fp32) as a, rasterio.open(out) as b:
        assert (a.read(1) == b.read(1)).mean() >= 0.98
    final = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(openvino-int8, 1 thread (LANDCOVER_THREADS=1)," in final, final
    # the next run reuses the quantized model: no calibration tiles read, no quantization
    monkeypatch.setattr(choose_mod, "calibration", lambda *a: pytest.fail("read calibration tiles again"))
    again = classify_pixels(path, model_dir, tmp_path / "ov2.tif", padding=8, backend="openvino-int8",
                            progress=False)
    with rasterio.open(out) as a, rasterio.open(again) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_auto_skips_bf16_without_native_bf16(monkeypatch):
    monkeypatch.setattr(choose_mod, "cpu_has_native_bf16", lambda: False)
    names = choose_mod.auto_candidates(1e6)
    assert "bf16" not in names and "bf16-compiled" not in names and names[0] == "fp32"
    assert {"onnx", "int8"} <= set(names) and set(names) <= set(CPU_BACKENDS)
    try:
        import openvino  # noqa: F401
        assert {"openvino", "openvino-int8"} <= set(names)
    except ImportError:
        assert "openvino" not in names
    monkeypatch.setattr(choose_mod, "cpu_has_native_bf16", lambda: True)
    assert "bf16" in choose_mod.auto_candidates(60)
    assert "bf16-compiled" not in choose_mod.auto_candidates(60)  # compiling pays off only for long jobs


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    emulated = tmp_path / "icelake"
    emulated.write_text("model name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    native = tmp_path / "sapphire"
    native.write_text("model name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert not choose_mod.cpu_has_native_bf16(emulated)
    assert choose_mod.cpu_has_native_bf16(native)


def test_a_cached_choice_reads_no_calibration_tiles(model_dir, monkeypatch):
    """--backend auto on a job too big for the fp32 shortcut: measured once, then read from the cache
    without reading a tile or timing anything."""
    pkg = load_package(model_dir)
    decoder = ClassDecoder.for_package(pkg, True)
    h = weights_hash(pkg)
    calib, valid = _tiles(2), np.ones((2, 96, 96), bool)
    monkeypatch.setattr(choose_mod, "cpu_has_native_bf16", lambda: False)
    candidates = ("fp32", "onnx")
    monkeypatch.setattr(choose_mod, "auto_candidates", lambda _s: candidates)
    decision = choose_mod.choose_backend(pkg, decoder, calib, valid, model_hash=h, candidates=candidates,
                                         threads=1, tile=64)
    assert decision["backend"] in candidates and decision["results"]["onnx"]["agreement"] > 0.999

    class Plan:  # a job of ~100 s of fp32 model time: measured, not the small-job shortcut
        tile_count, rows, cols = 25_000, type("A", (), {"tile": 64}), type("A", (), {"tile": 64})

    monkeypatch.setattr(choose_mod, "calibration", lambda *a: pytest.fail("read calibration tiles"))
    monkeypatch.setattr(choose_mod, "_measure", lambda *a: pytest.fail("measured again"))
    said = []
    choice = choose_mod.choose_engine("auto", None, pkg, decoder, None, None, Plan, 64, h, False, 1, said.append)
    assert choice["backend"] == decision["backend"] and said == [f"backend: {decision['backend']}"]


def test_threads_never_exceed_the_budget(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    cores = available_cores()
    assert thread_budget() == (cores, "cores")
    monkeypatch.setenv(ENV, "2")
    four = split_threads(4)
    assert (four.processes, four.threads, four.total, four.asked) == (2, 1, 2, 4)
    assert four.describe() == "2 workers x 1 thread (LANDCOVER_THREADS=2; 4 workers asked)"
    one = split_threads(1)
    assert (one.processes, one.threads) == (1, 2) and one.describe() == "2 threads (LANDCOVER_THREADS=2)"
    monkeypatch.setenv(ENV, "5")
    two = split_threads(2)
    assert (two.processes, two.threads) == (2, 2) and two.total <= 5
    assert split_threads(3, threads=7, name="threads").describe() == "3 workers x 2 threads (threads=7)"
    for budget in range(1, 9):
        for procs in range(1, 10):
            plan = split_threads(procs, threads=budget)
            assert 1 <= plan.total <= budget and plan.processes == min(procs, budget)
    # training: DataLoader worker processes (one thread each) + the training process's torch threads
    assert training_threads(0, threads=4).threads == 4
    assert training_threads(1, threads=4).threads == 3
    assert training_threads(8, threads=2).threads == 1  # never below one
    assert training_threads(1, threads=4).describe() == "3 threads + 1 DataLoader worker (threads=4)"
    assert training_threads(0, threads=2).describe() == "2 threads (threads=2)"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_settings_are_one_line(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(LandcoverError, match=f"LANDCOVER_THREADS='{value}': give a whole number") as err:
        split_threads(1)
    assert "\n" not in str(err.value)
    monkeypatch.delenv(ENV)
    with pytest.raises(LandcoverError, match="threads=0: give a whole number"):
        thread_budget(0)


def test_threads_flag_is_checked_and_named_as_given(model_dir, tmp_path, capsys):
    from landcover.cli import main

    img, _ = scene(np.random.default_rng(1), 64, 64)
    path = write_raster(tmp_path / "img.tif", img)
    assert main(["classify", "--model", str(model_dir), "--imagery", str(path), "--out", str(tmp_path / "o.tif"),
                 "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--threads 0: give a whole number of threads, at least 1") and "\n" not in err
    assert not (tmp_path / "o.tif").exists()


def test_quantizers_calibrate_on_pieces_of_the_tiles():
    """Quantization runs the model on calibration pieces of at most 256 x 256 (bounded memory whatever the tile
    size); the pieces are the tiles' own pixels."""
    tiles = np.arange(2 * 3 * 600 * 520, dtype=np.float32).reshape(2, 3, 600, 520)
    pieces = calibration_crops(tiles)
    assert pieces.shape == (2 * 2 * 2, 3, 256, 256) and pieces.flags.c_contiguous
    assert np.array_equal(pieces[0], tiles[0, :, :256, :256]) and np.array_equal(pieces[-1], tiles[1, :, 256:512,
                                                                                                    256:512])
    small = tiles[:, :, :96, :80]
    assert calibration_crops(small) is small
    assert calibration_crops(tiles[:, :, :100, :]).shape == (2 * 2, 3, 100, 256)


def test_bf16_is_compiled_only_where_it_could_win():
    """Compiling bf16 (~20 s on first use) is skipped where eager bf16 disagrees with fp32 (the compiled model
    computes the same) or where a backend measured before it is faster than compiling could make bf16."""
    why = choose_mod._not_worth_compiling
    fp32 = {"mps": 0.8, "agreement": 1.0}
    assert why({"fp32": fp32}) is None  # eager bf16 not measured: nothing to judge by
    assert why({"fp32": fp32, "bf16": {"mps": 3.2, "agreement": 0.9999}, "int8": {"mps": 4.0, "agreement": 0.999}}) \
        is None  # an AMX-like CPU: compiled bf16 may beat int8
    slow = why({"fp32": fp32, "bf16": {"mps": 1.7, "agreement": 0.9999}, "openvino-int8": {"mps": 3.5,
                                                                                        "agreement": 0.998}})
    assert slow and slow.startswith("openvino-int8 at 3.50 MP/s")
    # a faster backend that disagrees does not count
    assert why({"fp32": fp32, "bf16": {"mps": 1.7, "agreement": 0.9999}, "int8": {"mps": 3.5, "agreement": 0.6}}) \
        is None
    assert "agrees with fp32 on 85.00%" in why({"fp32": fp32, "bf16": {"mps": 1.7, "agreement": 0.85}})


def test_the_second_round_times_again_only_backends_that_could_still_win():
    """The second timing round (against the machine's drift) covers the fastest backends that agree with fp32,
    but not one so far behind that no slow moment explains it: fp32 eager at 0.4 of OpenVINO's speed on a Zen 3
    cost ~12 s of a first run's setup to time again."""
    again = choose_mod._second_round
    fp32 = {"mps": 0.24, "agreement": 1.0}
    results = {"fp32": fp32, "onnx": {"mps": 0.49, "agreement": 0.9999}, "int8": {"mps": 0.80, "agreement": 0.52},
               "openvino": {"mps": 0.62, "agreement": 0.9999}, "openvino-int8": {"mps": 0.80, "agreement": 0.63}}
    assert again(results) == ["openvino", "onnx"]  # int8 paths disagree; fp32 is too far behind to win
    assert again({"fp32": fp32, "onnx": {"mps": 0.30, "agreement": 1.0}}) == ["onnx", "fp32"]
    assert again({"fp32": fp32, "openvino-int8": {"mps": 0.9, "agreement": 0.999}}) == []  # nothing to reorder
    assert again({"fp32": fp32}) == []
    many = {n: {"mps": m, "agreement": 1.0} for n, m in [("a", 1.0), ("b", 0.9), ("c", 0.8), ("d", 0.7)]}
    assert again(many) == ["a", "b", "c"]  # at most SECOND_ROUND
