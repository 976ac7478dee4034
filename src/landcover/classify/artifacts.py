"""Prepared models: the files some backends run from, built once per model and kept under :func:`.engine.cache_dir`.

``onnx`` and ``openvino`` run the exported ONNX graph (weighting, argmax and class lookup inside it); ``int8`` its
static QDQ quantization by ONNX Runtime and ``openvino-int8`` its quantization by NNCF (:mod:`.openvino`), both
calibrated on tiles of the raster; ``bf16-compiled`` an AOTInductor package. A file depends on the weights (the
folder is named by their hash), the decoding (which classes may be predicted), the calibration tiles (hashed into
the quantized files' names) and, for compiled code, the CPU and software (:func:`device_signature`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..errors import LandcoverError
from ..raster import atomic_output
from .blend import ClassDecoder
from .engine import ARTIFACT_BACKENDS, GRAPH_VERSION, _core, _decode_head, _folded, _pad32, cache_dir

#: the name of a run's own copy of its prepared model in the work folder, by the file's suffix
WORK_COPY = {".pt2": "engine.pt2", ".onnx": "engine.onnx", ".ovz": "engine.ovz"}


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
    included, see :func:`device_signature`) and the graph's version."""
    return hashlib.sha256(f"{device_signature(None)}|graph {GRAPH_VERSION}".encode()).hexdigest()[:8]


def export_onnx(model, decoder: ClassDecoder, path: Path) -> Path:
    """Export the model (with argmax and value lookup) to ONNX, batch/height/width dynamic."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    module = _decode_head(_core(model), decoder)
    x, w = torch.zeros(1, model.in_channels, 64, 64), torch.ones(1, 1, 64, 64)
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



def prepare_artifact(backend: str, pkg, decoder: ClassDecoder, model_hash: str,
                     calibration: np.ndarray | None = None, model=None) -> str | None:
    """The file a backend runs from, built once and cached under :func:`.engine.cache_dir` (None for torch
    eager): the exported ONNX model (``onnx``, ``openvino``), its int8 quantization calibrated on ``calibration``
    (``int8``: ONNX Runtime; ``openvino-int8``: NNCF), or the AOTInductor package. Callers hold :func:`cache_lock`."""
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
    if backend in ("onnx", "openvino"):
        return str(onnx_fp32)
    if calibration is None:
        raise LandcoverError(f"{backend}: no valid tiles in the raster to calibrate the quantized model on")
    tag = hashlib.sha256(calibration.tobytes()).hexdigest()[:12]
    if backend == "openvino-int8":
        from .openvino import quantize_openvino

        path = folder / f"model-{decoder.key}-ovint8-{tag}.ovz"
        return str(path if path.is_file() else quantize_openvino(onnx_fp32, calibration_crops(calibration), path))
    path = folder / f"model-{decoder.key}-int8-{tag}.onnx"
    return str(path if path.is_file() else quantize_int8(onnx_fp32, calibration_crops(calibration), path))


#: the edge of the pieces calibration tiles are cut into for quantization
CALIBRATION_CROP = 256


def calibration_crops(tiles: np.ndarray, size: int = CALIBRATION_CROP) -> np.ndarray:
    """The calibration tiles ``(N, bands, h, w)`` cut into ``size`` x ``size`` pieces (the same pixels; the
    remainder past the last whole piece is dropped, unless a tile is smaller than a piece). The quantizers run
    the model on each and hold what it computes: ONNX Runtime's calibration peaked at 3.5 GB on three 864 x 864
    tiles of a ResNet-34 U-Net and at 1.1 GB on the same pixels in 256 x 256 pieces, for the same ranges."""
    n, c, h, w = tiles.shape
    if h <= size and w <= size:
        return tiles
    ph, pw = min(size, h), min(size, w)
    pieces = [tiles[:, :, r:r + ph, q:q + pw] for r in range(0, h - ph + 1, ph) for q in range(0, w - pw + 1, pw)]
    return np.ascontiguousarray(np.concatenate(pieces))


def cached_quantized(backend: str, decoder: ClassDecoder, model_hash: str) -> str | None:
    """The newest int8 model already quantized for this model and decoding (on any raster's tiles), or None.

    A backend given by name reuses it instead of reading calibration tiles again on every run, as ``auto``
    reuses its cached decision: a quantization calibrated on one raster of a sensor serves the next (and the
    choice's agreement check judged it on real tiles when ``auto`` made it)."""
    pattern = {"int8": f"model-{decoder.key}-int8-*.onnx", "openvino-int8": f"model-{decoder.key}-ovint8-*.ovz"}
    if backend not in pattern:
        return None
    found = sorted((cache_dir() / model_hash[:16]).glob(pattern[backend]), key=lambda f: f.stat().st_mtime)
    return str(found[-1]) if found else None


def work_copy_name(artifact: str) -> str:
    """The name of a run's own copy of ``artifact`` in its work folder."""
    return WORK_COPY.get(Path(artifact).suffix, "engine" + Path(artifact).suffix)


def cache_lock(model_hash: str):
    """A lock on the model's cache folder, so concurrent runs (and threads) do not build the same files at once."""
    from filelock import FileLock

    folder = cache_dir() / model_hash[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".lock"))



def compiler_available() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def device_signature(threads: int | None) -> str:
    """The CPU, its core count, the threads asked for and the software versions: what a compiled model and a
    measured backend decision depend on."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import openvino

        ov = openvino.__version__
    except ImportError:
        ov = None
    return f"{cpu}|{os.cpu_count()}|{threads}|torch {torch.__version__}|ort {onnxruntime.__version__}|ov {ov}"

