"""Inference backends, and the automatic choice among them.

Every backend maps normalized tiles ``(bands, h, w)`` float32 and their blending weights ``(h, w)`` to the
weighted logits ``(C, h, w)`` float32 and, where it can do so inside its graph, to class values ``(h, w)``
uint8 (argmax with the excluded classes masked, then the index-to-value lookup). Tiles are padded to a
multiple of 32 here, as the U-Net does internally, so all backends see the same input.

CPU backends: ``fp32`` (eager, the reference), ``bf16`` (batch norm folded into the convolutions, bfloat16
weights, channels-last), ``bf16-compiled`` (the same compiled ahead of time by AOTInductor with frozen
weights, which fuses convolutions with their activations), ``onnx`` (ONNX Runtime, fp32) and ``int8`` (ONNX
Runtime, static int8 QDQ calibrated on tiles of the raster). GPU: ``cuda`` (autocast bf16 or fp16).
:func:`choose_backend` times the candidates on a few real tiles and keeps the fastest whose class map agrees
with ``fp32`` on at least 99.5 % of the valid pixels; the decision and the exported/compiled models are cached
per model (weights hash) under :func:`cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import LandcoverError, arg
from ..raster import atomic_output
from .blend import ClassDecoder

#: class-map agreement with fp32 eager that a faster backend must reach
MIN_AGREEMENT = 0.995
CPU_BACKENDS = ("fp32", "bf16", "bf16-compiled", "onnx", "int8")
#: backends that run from a prepared file (exported or compiled model)
ARTIFACT_BACKENDS = ("onnx", "int8", "bf16-compiled")
BACKENDS = ("auto", "cpu", *CPU_BACKENDS, "cuda")
#: changes when a compiled graph does (2: unrolled argmax): cached compiled models and backend decisions made
#: with an older graph are then rebuilt instead of reused
GRAPH_VERSION = 2


def cache_dir() -> Path:
    """Where exported models and backend decisions are kept (``$LANDCOVER_CACHE`` or ~/.cache/landcover)."""
    root = os.environ.get("LANDCOVER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "landcover")
    return Path(root) / "classify"


def weights_hash(pkg) -> str:
    """SHA-256 over the package's tensors (names, shapes, dtypes, bytes) and its class/band settings."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps([pkg.backbone, pkg.extract_bands, pkg.mean, pkg.std, pkg.num_classes]).encode())
    for key in sorted(pkg.state_dict or {}):
        t = pkg.state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _pad32(x: np.ndarray) -> np.ndarray:
    """Pad (B, c, h, w) at the bottom/right to a multiple of 32 the way the U-Net does (reflect if possible)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "edge"
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    return x


class Engine:
    """A backend. ``engine.run(tiles, weights)`` returns, per tile, the logits multiplied by the tile's
    blending weights (C, h, w) float32 and the class values (h, w) uint8, or None if the backend leaves the
    argmax to the caller. Where the weight is 1 the weighted logits are the logits themselves."""

    name = "engine"
    #: whether several tiles go through one call (False: one compiled shape, one tile at a time)
    batched = True

    def run(self, tiles: list[np.ndarray], weights: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        out: list = [None] * len(tiles)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tiles):
            groups.setdefault(t.shape, []).append(i)
        for shape, idx in groups.items():
            chunks = [idx] if self.batched else [[i] for i in idx]
            h, w = shape[-2:]
            for chunk in chunks:
                if len(chunk) == 1 and h % 32 == 0 and w % 32 == 0:  # no copies for the common case
                    x = np.ascontiguousarray(tiles[chunk[0]], dtype=np.float32)[None]
                    wt = np.ascontiguousarray(weights[chunk[0]], dtype=np.float32)[None, None]
                else:
                    x = _pad32(np.stack([tiles[i] for i in chunk]).astype(np.float32, copy=False))
                    wt = np.zeros((len(chunk), 1, *x.shape[-2:]), np.float32)
                    for k, i in enumerate(chunk):
                        wt[k, 0, :h, :w] = weights[i]
                lw, classes = self._forward(x, wt)
                for k, i in enumerate(chunk):
                    y = lw[k] if lw.shape[-2:] == (h, w) else np.ascontiguousarray(lw[k, :, :h, :w])
                    c = None if classes is None else classes[k, :h, :w]
                    out[i] = (y, c)
        return out

    def _forward(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise LandcoverError(f"backend {self.name} cannot run")  # overridden by every backend


def _core(model):
    """The U-Net without its input padding (callers pad to a multiple of 32), traceable by fx and ONNX."""
    import torch

    class Core(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.encoder, self.decoder, self.head = m.encoder, m.decoder, m.head

        def forward(self, x):
            return self.head(self.decoder(self.encoder(x)))

    return Core(model).eval()


def _folded(model):
    """The core with batch norm folded into the preceding convolutions (fewer passes over memory)."""
    from torch.fx.experimental.optimization import fuse

    core = _core(model)
    try:
        return fuse(core, inplace=False)
    except Exception:  # a model fx cannot trace still runs, just unfused
        return core


def _decode_head(core, decoder: ClassDecoder, in_dtype=None, unrolled_argmax: bool = False):
    """Wrap ``core``: (x, w) -> (logits * w as float32, class values) with the argmax inside the graph.

    ``unrolled_argmax``: the argmax as one compare-and-select per class (for a compiler, which fuses them into
    one pass vectorized across pixels) instead of ``torch.argmax``."""
    import torch

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.core = core
            self.register_buffer("bias", torch.from_numpy(decoder.bias).reshape(1, -1, 1, 1))
            self.register_buffer("lut", torch.from_numpy(decoder.lut.astype(np.uint8)))

        def forward(self, x, w):
            if in_dtype is not None:
                x = x.to(in_dtype)
            logits = self.core(x).float()
            scores = logits + self.bias
            idx = _first_argmax(scores) if unrolled_argmax else torch.argmax(scores, dim=1)
            return (logits * w).contiguous(), self.lut[idx]

    return Decode().eval()


def _first_argmax(scores):
    """``torch.argmax(scores, dim=1)`` (the first index of the maximum) as a chain of compare-and-select.

    Compiled, torch.argmax over channels-last logits reduces each pixel's few contiguous class scores with
    masked vector instructions: ~15 ms of a 130 ms forward on a 960² tile. The unrolled chain becomes one
    elementwise pass vectorized across pixels (measured: 131 -> 116 ms), with bit-identical classes. Strict
    ``>`` keeps the first index on ties, as argmax (and numpy's, used where tiles are blended) does."""
    import torch

    best = scores[:, 0]
    idx = torch.zeros_like(best, dtype=torch.int64)
    for c in range(1, scores.shape[1]):
        higher = scores[:, c] > best
        best = torch.where(higher, scores[:, c], best)
        idx = torch.where(higher, torch.full_like(idx, c), idx)
    return idx


class TorchEngine(Engine):
    """Eager torch on CPU: fp32 (reference) or bf16 with folded batch norm and channels-last."""

    def __init__(self, model, precision: str = "fp32"):
        import torch

        self.name = precision
        self.precision = precision
        if precision == "fp32":
            self.model = _core(model)
        else:
            self.model = _folded(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _forward(self, x, w):
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.precision == "bf16":
                t = t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            y = (self.model(t).float() * torch.from_numpy(w)).contiguous()
        return y.numpy(), None


class CompiledEngine(Engine):
    """bf16 compiled ahead of time by AOTInductor (weights frozen in; convolutions fused with their
    activations, weighting and argmax in the graph), for any tile height and width that are multiples of 32.
    The compiled package is built once per model and cached, so worker processes only load it. Tiles run one
    at a time."""

    name = "bf16-compiled"
    batched = False

    def __init__(self, artifact: str | os.PathLike):
        import torch

        try:
            # The C++ loader directly: importing torch._inductor for aoti_load_package costs ~1-2 s per process.
            loader = torch._C._aoti.AOTIModelPackageLoader(str(artifact), "model", False, 1, -1)
            self.runner = lambda x, w: loader.boxed_run([x, w])
        except (AttributeError, TypeError, RuntimeError):
            self.runner = torch._inductor.aoti_load_package(str(artifact))

    def _forward(self, x, w):
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            y, c = self.runner(t, torch.from_numpy(w))
        return y.numpy(), c.numpy()


def compile_aoti(model, decoder: ClassDecoder, path: Path) -> Path:
    """Compile the bf16 model with AOTInductor for tiles of 32..8192 pixels (multiples of 32) into ``path``
    (~20 s; :func:`prepare_artifact` keeps it in the cache)."""
    import torch
    from torch.export import Dim

    folded = _folded(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
    for p in folded.parameters():
        p.requires_grad_(False)
    module = _decode_head(folded, decoder, in_dtype=torch.bfloat16, unrolled_argmax=True)
    x = torch.zeros(1, model.in_channels, 256, 256).contiguous(memory_format=torch.channels_last)
    w = torch.ones(1, 1, 256, 256)
    h32, w32 = Dim("h32", min=1, max=256), Dim("w32", min=1, max=256)
    dynamic = {"x": {2: 32 * h32, 3: 32 * w32}, "w": {2: 32 * h32, 3: 32 * w32}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, torch.no_grad():
        exported = torch.export.export(module, (x, w), dynamic_shapes=dynamic)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp),
                                                 inductor_configs={"freezing": True})
    return path


def compiled_path(decoder: ClassDecoder, folder: Path) -> Path:
    """Where :func:`compile_aoti` keeps the compiled model of this decoding, torch version and CPU."""
    return folder / f"model-{decoder.key}-bf16-{_compiled_tag()}.pt2"


def _compiled_tag() -> str:
    """What a compiled model depends on besides its weights and decoding: the CPU and software (torch
    included, see :func:`_device_signature`) and the graph's version."""
    return hashlib.sha256(f"{_device_signature(None)}|graph {GRAPH_VERSION}".encode()).hexdigest()[:8]


class OnnxEngine(Engine):
    """ONNX Runtime (fp32 or static int8 QDQ) on an exported model with weighting and argmax in its graph."""

    def __init__(self, path: str | os.PathLike, name: str, threads: int | None = None):
        import onnxruntime as ort

        self.name = name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise LandcoverError(f"{path}: ONNX Runtime cannot load the exported model ({exc})") from None

    def _forward(self, x, w):
        lw, classes = self.session.run(None, {"x": x, "w": w})
        return lw, classes


class CudaEngine(Engine):
    """torch on a CUDA GPU with autocast (bf16 where supported, else fp16); batches padded to a fixed size
    so that cuDNN picks the same algorithm for every batch (identical results whatever the block cut)."""

    name = "cuda"

    def __init__(self, model, decoder: ClassDecoder, batch_size: int):
        import torch

        self.device = torch.device("cuda")
        self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.batch_size = batch_size
        core = _core(model).to(self.device).to(memory_format=torch.channels_last)
        self.module = _decode_head(core, decoder).to(self.device)
        torch.backends.cudnn.benchmark = False

    def _forward(self, x, w):
        import torch

        n = x.shape[0]
        if n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
            w = np.concatenate([w, np.zeros((self.batch_size - n, *w.shape[1:]), w.dtype)])
        with torch.inference_mode(), torch.autocast("cuda", dtype=self.dtype):
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            y, c = self.module(t, torch.from_numpy(w).to(self.device))
        return y[:n].float().cpu().numpy(), c[:n].cpu().numpy()


class TTAEngine(Engine):
    """Test-time augmentation: the mean of the logits over the 8 flips/rotations (dihedral group D4)."""

    def __init__(self, base: Engine):
        self.base = base
        self.name = f"{base.name}+tta"
        self.batched = base.batched

    def run(self, tiles, weights):
        totals: list = [None] * len(tiles)
        for k in range(4):
            for flip in (False, True):
                xs = [np.ascontiguousarray(np.rot90(np.flip(t, 2) if flip else t, k, axes=(1, 2))) for t in tiles]
                ones = [np.ones(x.shape[-2:], np.float32) for x in xs]
                for i, (y, _) in enumerate(self.base.run(xs, ones)):
                    y = np.rot90(y, -k, axes=(1, 2))
                    y = np.flip(y, 2) if flip else y
                    totals[i] = np.array(y, dtype=np.float32) if totals[i] is None else totals[i] + y
        return [(t * np.float32(1 / 8) * w, None) for t, w in zip(totals, weights, strict=True)]


# --- building backends ---------------------------------------------------------------------------------------

def export_onnx(model, decoder: ClassDecoder, path: Path) -> Path:
    """Export the model (with argmax and value lookup) to ONNX, batch/height/width dynamic."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    module = _decode_head(_core(model), decoder)
    x, w = torch.zeros(1, model.in_channels, 64, 64), torch.ones(1, 1, 64, 64)
    import warnings

    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x, w), str(tmp), dynamo=False, input_names=["x", "w"],
            output_names=["weighted", "classes"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "w": {0: "n", 2: "h", 3: "w"},
                          "weighted": {0: "n", 2: "h", 3: "w"}, "classes": {0: "n", 1: "h", 2: "w"}},
            opset_version=17,
        )
    return path


def quantize_int8(fp32_path: Path, calibration: np.ndarray, path: Path) -> Path:
    """Static int8 QDQ quantization of an exported model, calibrated on real (normalized) tiles.

    Weights per channel (int8), activations per tensor (uint8), ranges by min/max over the calibration tiles.
    The ArgMax/lookup at the end stays in float, so class values come out exactly as for fp32.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            xs = [_pad32(calibration[i: i + 1]) for i in range(len(calibration))]
            self.items = iter([{"x": x, "w": np.ones((1, 1, *x.shape[-2:]), np.float32)} for x in xs])

        def get_next(self):
            return next(self.items, None)

    pre = path.with_name(f".{path.stem}.{os.getpid()}.pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with atomic_output(path) as tmp, warnings.catch_warnings():
            # numpy's "invalid value encountered in cast" from onnxruntime's zero-point arithmetic (quant_utils)
            # is noise to a user: the agreement check judges the quantized model's class map either way.
            warnings.simplefilter("ignore", RuntimeWarning)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=_float_tail(pre))
    finally:
        pre.unlink(missing_ok=True)
        for side in path.parent.glob(f".{path.stem}*.data"):
            side.unlink(missing_ok=True)
    return path


def _float_tail(path: Path) -> list[str]:
    """Names of the nodes that must stay in float: the last convolution (the logits are blended, so they
    must not be rounded to 256 levels) and everything downstream of it (argmax, lookup)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get("weighted")
    while node is not None and node.op_type != "Conv":
        node = producer.get(node.input[0])
    if node is None:
        return []
    tail, frontier = [node.name], set(node.output)
    while frontier:
        nxt = [n for n in graph.node if n.name not in tail and frontier & set(n.input)]
        tail += [n.name for n in nxt]
        frontier = {o for n in nxt for o in n.output}
    return tail


def build_engine(backend: str, pkg, decoder: ClassDecoder, artifact: str | None = None, batch_size: int = 8,
                 threads: int | None = None, model=None) -> Engine:
    """Build one backend; ``artifact`` is its prepared file (ONNX for ``onnx``/``int8``, an AOTInductor
    package for ``bf16-compiled``, see :func:`prepare_artifact`)."""
    if backend in ARTIFACT_BACKENDS and (not artifact or not Path(artifact).is_file()):
        raise LandcoverError(f"{artifact}: the prepared model for backend {backend} is missing")
    if backend in ("onnx", "int8"):
        return OnnxEngine(artifact, backend, threads)
    if backend == "bf16-compiled":
        return CompiledEngine(artifact)
    model = model if model is not None else pkg.build_model()
    if backend in ("fp32", "bf16"):
        return TorchEngine(model, backend)
    if backend == "cuda":
        return CudaEngine(model, decoder, batch_size)
    raise LandcoverError(f"{arg('backend', backend)}: unknown backend (choose from {', '.join(BACKENDS)})")


def prepare_artifact(backend: str, pkg, decoder: ClassDecoder, model_hash: str,
                     calibration: np.ndarray | None = None, model=None) -> str | None:
    """The file a backend runs from, built once and cached under :func:`cache_dir` (None for torch eager):
    the exported ONNX model, its int8 quantization (calibrated on ``calibration``), or the AOTInductor
    package. Callers hold :func:`cache_lock`."""
    if backend not in ARTIFACT_BACKENDS:
        return None
    folder = cache_dir() / model_hash[:16]

    # The model is built only when a file must be made (~0.2 s that a run with a warm cache need not pay).
    def built():
        return model if model is not None else pkg.build_model()

    if backend == "bf16-compiled":
        path = compiled_path(decoder, folder)
        return str(path if path.is_file() else compile_aoti(built(), decoder, path))
    onnx_fp32 = folder / f"model-{decoder.key}.onnx"
    if not onnx_fp32.is_file():
        export_onnx(built(), decoder, onnx_fp32)
    if backend == "onnx":
        return str(onnx_fp32)
    if calibration is None:
        raise LandcoverError("int8: no valid tiles in the raster to calibrate the quantized model on")
    int8 = folder / f"model-{decoder.key}-int8-{hashlib.sha256(calibration.tobytes()).hexdigest()[:12]}.onnx"
    if not int8.is_file():
        quantize_int8(onnx_fp32, calibration, int8)
    return str(int8)


def cache_lock(model_hash: str):
    """A lock on the model's cache folder, so concurrent runs (and threads) do not build the same files at once."""
    from filelock import FileLock

    folder = cache_dir() / model_hash[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".lock"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _compiler_available() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _device_signature(threads: int | None) -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|{os.cpu_count()}|{threads}|torch {torch.__version__}|ort {onnxruntime.__version__}"


def choose_backend(pkg, decoder: ClassDecoder, calibration: np.ndarray, valid: np.ndarray, *, model_hash: str,
                   candidates: tuple[str, ...] = CPU_BACKENDS, threads: int | None = None, tile: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """Pick the fastest backend whose class map agrees with fp32 eager on >= 99.5 % of valid pixels.

    ``calibration`` are a few real normalized tiles of the raster (N, bands, h, w) with their validity masks.
    Returns ``{"backend", "artifact", "agreement", "mps", "key"}``. The decision and the exported models are
    cached under :func:`cache_dir` by model hash, requested ``tile`` size (the tiles themselves are shrunk to fit
    each raster), decoder and machine, so the measurement runs once.
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
        json.dumps([tile, decoder.key, list(candidates), _device_signature(threads), GRAPH_VERSION]).encode()
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

    engines = {"fp32": build_engine("fp32", pkg, decoder, model=model)}  # those that agree, timed again below
    reference, ref_mps = timed(engines["fp32"])
    results["fp32"] = {"mps": ref_mps, "agreement": 1.0}
    say(f"backend fp32: {ref_mps:.2f} MP/s (reference)")
    artifacts: dict[str, str | None] = {}
    for name in candidates:
        if name == "fp32" or (name == "bf16-compiled" and not _compiler_available()):
            continue
        try:
            artifacts[name] = prepare_artifact(name, pkg, decoder, model_hash, calibration, model)
            engine = build_engine(name, pkg, decoder, artifacts[name], threads=threads, model=model)
            classes, mps = timed(engine)
        except LandcoverError:
            raise
        except Exception as exc:  # a backend that fails to build here is simply not a candidate
            say(f"backend {name}: unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        agree = float((classes == reference)[valid].mean()) if valid.any() else 1.0
        results[name] = {"mps": mps, "agreement": agree}
        say(f"backend {name}: {mps:.2f} MP/s, agreement with fp32 {agree:.4%}")
        if agree >= MIN_AGREEMENT:
            engines[name] = engine
    # A second round over the candidates that agree, each keeping its better time: the machine's speed drifts
    # (here by 10-20 % within minutes, and once a compiled model timed at 60 % of its speed right after being
    # built), and one slow moment must not decide a choice that is cached for good.
    if len(engines) > 1:
        for name, engine in engines.items():
            results[name]["mps"] = max(results[name]["mps"], timed(engine)[1])
        say("fastest of two rounds: " + ", ".join(f"{n} {results[n]['mps']:.2f}" for n in engines) + " MP/s")
    ok = {n: r for n, r in results.items() if r["agreement"] >= MIN_AGREEMENT}
    best = max(ok, key=lambda n: ok[n]["mps"])
    return {"backend": best, "artifact": artifacts.get(best), "results": results}
