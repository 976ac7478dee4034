"""Which backend a run uses: the one room where it is decided (:func:`choose_engine`).

``--backend auto`` keeps the fastest backend whose class map agrees with fp32 eager on at least 99.5 % of the
valid pixels of a few real tiles of the raster. The choice is made cheap where it can be:

- a small job (under ~30 s of fp32 model time) runs fp32 without measuring anything;
- a CPU without native bfloat16 (``avx512_bf16``/``amx_bf16`` in its flags) never tries the bf16 backends, which
  it would emulate several times slower than fp32; compiling (``bf16-compiled``, ~20 s) is tried only for long
  jobs on a CPU with native bf16, and only where eager bf16 agrees with fp32 and is not so far behind the fastest
  backend measured that even compiling could not catch up (on a CPU with fast int8 it is not compiled);
- the calibration tiles are a few MP whatever the raster's size (memory and time bounded), read once and shared
  by the timing, the agreement check and the int8 quantizations;
- the decision and the prepared models are cached per model, tile size, decoding, CPU and software under
  :func:`.engine.cache_dir`, so later runs read it without reading a tile.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from ..errors import LandcoverError, arg
from ..raster import GridReader, atomic_output
from .artifacts import cache_lock, cached_quantized, device_signature, prepare_artifact, work_copy_name
from .blend import ClassDecoder
from .blocks import normalize_tile
from .engine import (
    CPU_BACKENDS,
    GRAPH_VERSION,
    Engine,
    build_engine,
    cache_dir,
    cuda_available,
)

#: class-map agreement with fp32 eager that a faster backend must reach
MIN_AGREEMENT = 0.995
#: jobs whose fp32 model time is estimated below this many seconds run fp32 without measuring backends
SMALL_JOB_SECONDS = 30
#: compiling the model (once per model, cached) costs ~20 s; worth it only for long jobs
COMPILE_JOB_SECONDS = 120
#: pixels of calibration tiles: timing, agreement and int8 calibration (a few seconds of fp32 per backend,
#: 32 MB of float32 tiles at most whatever the raster's size)
CALIBRATION_PX = 2.0e6
#: calibration tiles at most (small tiles: more of them, so that int8 ranges see the raster's variety), and the
#: tiles spread over the raster they are picked from (the most valid)
CALIBRATION_TILES, CALIBRATION_PICK = 32, 64
#: candidates timed a second time (the fastest that agree after the first round) ...
SECOND_ROUND = 3
#: ... of those at least this fraction of the fastest's first-round speed: the worst slow moment seen (a compiled
#: model timed at 60 % of its speed right after being built) cannot lift a backend further behind past the
#: fastest; timing fp32 eager again (0.25-0.45 of openvino-int8 on a Zen 3) cost 8-12 s of a first run's setup
SECOND_ROUND_WITHIN = 0.6
#: what compiling gains over eager bf16 at most, as measured (1.16x on a Zen 5 with a ResNet-34 in 2026-11,
#: 1.42x with the input skip's full-resolution block): compiling (~20 s) is skipped where even this gain would
#: not make it the fastest backend that agrees
COMPILE_GAIN = 1.5


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX); elsewhere torch emulates it,
    measured 2.6× slower than fp32 on an Ice Lake Xeon."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return bool({"avx512_bf16", "amx_bf16"} & set(flags))
    except OSError:  # not Linux: ask torch
        import torch

        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_candidates(fp32_seconds: float) -> tuple[str, ...]:
    """The CPU backends ``auto`` measures for a job of ``fp32_seconds`` of fp32 model time on this CPU."""
    from .artifacts import compiler_available
    from .openvino import openvino_available

    names = ["fp32", "onnx", "int8"]
    if openvino_available():
        names += ["openvino", "openvino-int8"]
    if cpu_has_native_bf16():
        names.append("bf16")
        if fp32_seconds > COMPILE_JOB_SECONDS and compiler_available():
            names.append("bf16-compiled")
    return tuple(names)


def choose_engine(backend: str, previous: dict | None, pkg, decoder: ClassDecoder, ds, grids, plan, tile: int,
                  model_hash: str, tta: bool, threads: int | None, say: Callable[[str], None]) -> dict:
    """The backend a run uses: ``{"backend", "artifact" (its prepared file in the cache, or None), "engine" (the
    name of the run's own copy of it in the work folder, or None)}``.

    The resumed run's (``previous``: its manifest), CUDA where there is a GPU and ``backend`` is ``auto``, the
    backend given by name (its prepared file built or read from the cache), fp32 for small jobs, else measured
    (:func:`choose_backend`). ``ds``/``grids``/``plan``: the open imagery, the run's grid and the whole grid it is
    read within, and its tiling, from which calibration tiles are read when needed. ``threads``: each engine's
    compute threads in the run (the decision is measured, and cached, for that many)."""
    if previous is not None and backend in ("auto", "cpu", previous.get("backend")):
        # Resuming: the run's own backend (and its copy of the prepared model in the work folder).
        return {"backend": previous.get("backend", "fp32"), "engine": previous.get("engine")}
    if backend == "auto" and cuda_available():
        backend = "cuda"
    backend = "auto" if backend == "cpu" else backend
    if backend == "cuda" and not cuda_available():
        raise LandcoverError(f"{arg('backend', 'cuda')}: torch sees no CUDA GPU here (torch.cuda.is_available() is "
                             f"False); use {arg('backend', 'auto')}, or install a CUDA build of torch")
    fp32_seconds = plan.tile_count * plan.rows.tile * plan.cols.tile * (8 if tta else 1) / 1.0e6
    if backend == "auto" and fp32_seconds < SMALL_JOB_SECONDS:
        backend = "fp32"
    if backend in ("fp32", "bf16", "cuda"):
        return {"backend": backend, "artifact": None, "engine": None}
    if backend == "auto":
        candidates = auto_candidates(fp32_seconds)
        # A decision measured before for this model, tile size, threads and machine needs no calibration tiles.
        decision = cached_decision(decoder, model_hash=model_hash, candidates=candidates, threads=threads, tile=tile)
        if decision is None:
            calib, valid = calibration(pkg, ds, grids, plan)
            if calib is None:
                return {"backend": "fp32", "artifact": None, "engine": None}
            say(f"choosing a backend among {', '.join(candidates)} on {len(calib)} tile(s) of the raster (once "
                "for this model) ...")
            decision = choose_backend(pkg, decoder, calib, valid, model_hash=model_hash, candidates=candidates,
                                      threads=threads, tile=tile, log=say)
        say(f"backend: {decision['backend']}")
        backend, artifact = decision["backend"], decision.get("artifact")
    else:
        with cache_lock(model_hash):
            artifact = cached_quantized(backend, decoder, model_hash)
            if artifact is None:
                calib = calibration(pkg, ds, grids, plan)[0] if backend in ("int8", "openvino-int8") else None
                artifact = prepare_artifact(backend, pkg, decoder, model_hash, calib)
    return {"backend": backend, "artifact": artifact, "engine": work_copy_name(artifact) if artifact else None}


def calibration(pkg, ds, grids, plan, target_px: float = CALIBRATION_PX):
    """A few normalized tiles of the raster (the most valid of up to 64 spread over it; about ``target_px``
    pixels, at most 32 tiles) and their validity masks, or (None, None) when no tile is mostly valid.
    ``grids``: the run's grid and the whole grid it is read within."""
    count = max(1, min(CALIBRATION_TILES, round(target_px / (plan.rows.tile * plan.cols.tile))))
    ids = np.unique(np.linspace(0, plan.tile_count - 1, min(CALIBRATION_PICK, plan.tile_count)).round().astype(int))
    reader = GridReader(ds, grids[0], indexes=[b + 1 for b in pkg.extract_bands], within=grids[1], beyond=True)
    tiles = []
    try:
        for tid in ids:
            r, c = divmod(int(tid), plan.cols.count)
            row, col, h, w = plan.tile_window(r, c)
            data, valid = reader.read(Window(col, row, w, h))
            if valid.mean() > 0.5:
                tiles.append((valid.mean(), data, valid))
                tiles = sorted(tiles, key=lambda t: -t[0])[:count]  # never more than the tiles kept in memory
    finally:
        reader.close()
    if not tiles:
        return None, None
    x = np.stack([normalize_tile(pkg, d, v) for _, d, v in tiles])
    return x, np.stack([v for _, _, v in tiles])


def choose_backend(pkg, decoder: ClassDecoder, calibration: np.ndarray, valid: np.ndarray, *, model_hash: str,
                   candidates: tuple[str, ...] = CPU_BACKENDS, threads: int | None = None, tile: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """Pick the fastest backend whose class map agrees with fp32 eager on >= 99.5 % of valid pixels.

    ``calibration`` are a few real normalized tiles of the raster (N, bands, h, w) with their validity masks.
    Returns ``{"backend", "artifact", "results", "key", "tile"}``. The decision and the prepared models are
    cached under :func:`.engine.cache_dir` by model hash, requested ``tile`` size (the tiles themselves are shrunk
    to fit each raster), decoder, ``threads`` and machine, so the measurement runs once.
    """
    tile = tile or list(calibration.shape[2:])
    key = _decision_key(decoder, candidates, threads, tile)
    decisions_path = _decisions_path(model_hash)
    with cache_lock(model_hash):
        decisions = _read_json(decisions_path)
        cached = _usable(decisions.get(key))
        if cached:
            return cached
        decision = _measure(pkg, decoder, calibration, valid, model_hash, candidates, threads, log)
        decision.update(key=key, tile=tile)
        decisions[key] = decision
        with atomic_output(decisions_path) as tmp:
            tmp.write_text(json.dumps(decisions, indent=1))
    return decision


def cached_decision(decoder: ClassDecoder, *, model_hash: str, candidates: tuple[str, ...] = CPU_BACKENDS,
                    threads: int | None = None, tile=None) -> dict | None:
    """The decision :func:`choose_backend` cached for these arguments, or None (then it must measure)."""
    key = _decision_key(decoder, candidates, threads, tile)
    with cache_lock(model_hash):
        return _usable(_read_json(_decisions_path(model_hash)).get(key))


def _decisions_path(model_hash: str) -> Path:
    return cache_dir() / model_hash[:16] / "decisions.json"


def _decision_key(decoder: ClassDecoder, candidates, threads, tile) -> str:
    return hashlib.sha256(
        json.dumps([tile, decoder.key, list(candidates), device_signature(threads), GRAPH_VERSION]).encode()
    ).hexdigest()[:16]


def _usable(decision: dict | None) -> dict | None:
    """A cached decision whose prepared model file still exists."""
    if decision and (decision.get("artifact") is None or Path(decision["artifact"]).is_file()):
        return decision
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's threads set to ``threads`` inside the block (the eager engines use torch's global setting)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _measure(pkg, decoder, calibration, valid, model_hash, candidates, threads, log) -> dict:
    model = pkg.build_model()
    say = log or (lambda _msg: None)
    results: dict[str, dict] = {}
    ones = [np.ones(calibration.shape[-2:], np.float32)]

    def timed(engine: Engine) -> tuple[np.ndarray, float]:
        engine.run([calibration[0]], ones)  # warm-up (allocations, caches)
        t0 = time.perf_counter()
        outs = [engine.run([t], ones)[0] for t in calibration]
        dt = time.perf_counter() - t0
        classes = np.stack([c if c is not None else decoder.classes(y) for y, c in outs])
        return classes, calibration.shape[0] * calibration.shape[2] * calibration.shape[3] / dt / 1e6

    # One engine at a time: each holds its own buffers for calibration-sized tiles (hundreds of MB at 960 x 960
    # for a ResNet-34), and five alive together peaked at 4.85 GB. The second round rebuilds its few from their
    # prepared files, which costs a second each.
    with _torch_threads(threads):
        reference, ref_mps = timed(build_engine("fp32", pkg, decoder, model=model))
        results["fp32"] = {"mps": ref_mps, "agreement": 1.0}
        say(f"backend fp32: {ref_mps:.2f} MP/s (reference)")
        artifacts: dict[str, str | None] = {"fp32": None}
        for name in candidates:
            if name == "fp32":
                continue
            if name == "bf16-compiled" and (why := _not_worth_compiling(results)):
                say(f"backend bf16-compiled: not compiled ({why})")
                continue
            try:
                artifacts[name] = prepare_artifact(name, pkg, decoder, model_hash, calibration, model)
                classes, mps = timed(build_engine(name, pkg, decoder, artifacts[name], threads=threads, model=model))
            except LandcoverError:
                raise
            except Exception as exc:  # a backend that fails to build here is simply not a candidate
                say(f"backend {name}: unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            finally:
                gc.collect()  # the engine just timed (and its buffers) goes before the next is built
            agree = float((classes == reference)[valid].mean()) if valid.any() else 1.0
            results[name] = {"mps": mps, "agreement": agree}
            say(f"backend {name}: {mps:.2f} MP/s, agreement with fp32 {agree:.4%}")
        # A second round over the fastest that agree, each keeping its better time: the machine's speed drifts
        # (here by 10-20 % within minutes, and once a compiled model timed at 60 % of its speed right after
        # being built), and one slow moment must not decide a choice that is cached for good.
        top = _second_round(results)
        if top:
            for name in top:
                engine = build_engine(name, pkg, decoder, artifacts[name], threads=threads, model=model)
                results[name]["mps"] = max(results[name]["mps"], timed(engine)[1])
                del engine
                gc.collect()
            say("fastest of two rounds: " + ", ".join(f"{n} {results[n]['mps']:.2f}" for n in top) + " MP/s")
    best = _agreeing(results)[0]  # fp32 itself always agrees
    return {"backend": best, "artifact": artifacts.get(best), "results": results}


def _agreeing(results: dict[str, dict]) -> list[str]:
    """The backends measured so far whose class map agrees with fp32 (``MIN_AGREEMENT``), fastest first."""
    return sorted((n for n, r in results.items() if r["agreement"] >= MIN_AGREEMENT), key=lambda n: -results[n]["mps"])


def _second_round(results: dict[str, dict]) -> list[str]:
    """The backends timed again after the first round: up to ``SECOND_ROUND`` of the fastest that agree with
    fp32, those within ``SECOND_ROUND_WITHIN`` of the fastest's speed; none when that leaves one (its rank
    cannot change). ``results`` holds fp32, which agrees with itself."""
    agreeing = _agreeing(results)
    floor = results[agreeing[0]]["mps"] * SECOND_ROUND_WITHIN
    top = [n for n in agreeing[:SECOND_ROUND] if results[n]["mps"] >= floor]
    return top if len(top) > 1 else []


def _not_worth_compiling(results: dict[str, dict]) -> str | None:
    """Why compiling bf16 cannot pay off, judged from the backends measured so far (None: it may). The compiled
    model computes what eager bf16 computes, so it agrees no better, and it ran at most ``COMPILE_GAIN`` times
    eager bf16's speed: on a CPU where int8 is faster still, the ~20 s of compiling would be lost on first use."""
    bf16 = results.get("bf16")
    if bf16 is None:
        return None
    if bf16["agreement"] < MIN_AGREEMENT:
        return f"bf16 agrees with fp32 on {bf16['agreement']:.2%} of pixels"
    best = _agreeing(results)[0]
    mps = results[best]["mps"]
    if bf16["mps"] * COMPILE_GAIN <= mps:
        return f"{best} at {mps:.2f} MP/s is faster than compiling bf16 ({bf16['mps']:.2f} MP/s eager) could be"
    return None


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU as the benchmarks report it beside every figure: model, cores and the flags that decide which
    backend is fast (native bf16, AMX, VNNI for int8, AVX-512)."""
    from ..threads import available_cores

    model, flags = "", set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {"model": model, "cores": available_cores(), "flags": [f for f in wanted if f in flags],
            "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags)}
