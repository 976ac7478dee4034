"""OpenVINO backends: ``openvino`` (fp32) and ``openvino-int8`` (post-training quantization with NNCF).

Both run the exported ONNX graph (:func:`.artifacts.export_onnx`: logits weighted and the argmax with the class
lookup inside the graph), read by OpenVINO's own ONNX reader. ``openvino-int8`` is that graph quantized by NNCF
on tiles of the user's raster (the tiles the backend choice measures on), as ``int8`` (ONNX Runtime) is:
weights per output channel (int8, symmetric), activations per tensor, the last convolution and everything after
it in float (the logits are blended across tile overlaps, so they must not be rounded to 256 levels; the argmax
and lookup must give class values exactly). The quantized model is kept as one ``.ovz`` file (a zip of the IR's
``model.xml`` and ``model.bin``), so a run can keep its own copy as it does for the other prepared models.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import LandcoverError
from ..raster import atomic_output
from .engine import Engine, _pad32


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here (it is a dependency, but a platform may lack a wheel)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _core():
    import openvino as ov

    return ov.Core()


def _compile(model, threads: int | None):
    """Compile for the CPU: fp32 arithmetic (on a CPU with bf16, OpenVINO would otherwise run fp32 models in
    bf16), one stream, ``threads`` threads, and threads left unpinned: two single-thread worker processes would
    otherwise both be pinned to the first core."""
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "ENABLE_CPU_PINNING": "NO"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    return _core().compile_model(model, "CPU", config)


class OpenVinoEngine(Engine):
    """OpenVINO on the CPU, from an exported ONNX model (``openvino``) or a quantized ``.ovz`` (``openvino-int8``)."""

    def __init__(self, path: str | os.PathLike, name: str, threads: int | None = None):
        self.name = name
        try:
            model = read_ovz(path) if str(path).endswith(".ovz") else _core().read_model(str(path))
            self.compiled = _compile(model, threads)
        except LandcoverError:
            raise
        except Exception as exc:
            raise LandcoverError(f"{path}: OpenVINO cannot load the prepared model ({str(exc).splitlines()[0]})"
                                 ) from None
        self.request = self.compiled.create_infer_request()
        weighted, classes = (self.compiled.output(i) for i in range(2))
        self.channels = weighted.get_partial_shape()[1].get_length()
        self.class_dtype = classes.get_element_type().to_dtype()

    def _forward(self, x, w):
        import openvino as ov

        # The request writes straight into new arrays, which the caller keeps: its own output buffers are reused
        # by its next call, and copying 14 logits of a 960² tile out of them cost ~4 ms a tile (2 % of the run).
        n, _, h, wd = x.shape
        weighted = np.empty((n, self.channels, h, wd), np.float32)
        classes = np.empty((n, h, wd), self.class_dtype)
        self.request.set_output_tensor(0, ov.Tensor(weighted, shared_memory=True))
        self.request.set_output_tensor(1, ov.Tensor(classes, shared_memory=True))
        self.request.infer({"x": x, "w": w}, share_inputs=True)
        return weighted, classes


def quantize_openvino(onnx_path: Path, calibration: np.ndarray, path: Path) -> Path:
    """Post-training int8 quantization of the exported ONNX model with NNCF, calibrated on ``calibration``
    (normalized tiles (N, bands, h, w) of the raster); written to ``path`` (``.ovz``)."""
    import openvino as ov

    nncf = _import_nncf()
    model = _core().read_model(str(onnx_path))
    items = [_pad32(calibration[i: i + 1]) for i in range(len(calibration))]
    data = nncf.Dataset([{"x": x, "w": np.ones((1, 1, *x.shape[-2:]), np.float32)} for x in items])
    # MIXED: symmetric per-channel int8 weights, asymmetric activations (ReLU outputs use the whole range).
    # Fast bias correction re-centres each quantized convolution's output on the calibration tiles.
    # NNCF draws rich progress bars on stdout: noise in a CLI whose own output is one line per step.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(
            model, data, preset=nncf.QuantizationPreset.MIXED, subset_size=len(items), fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=float_tail(model), validate=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_xml = path.with_name(f".{path.stem}.{os.getpid()}.xml")
    try:
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            z.write(tmp_xml, "model.xml")
            z.write(tmp_xml.with_suffix(".bin"), "model.bin")
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    return path


def read_ovz(path: str | os.PathLike):
    """The OpenVINO model kept in an ``.ovz`` file by :func:`quantize_openvino`."""
    import openvino as ov

    try:
        with zipfile.ZipFile(path) as z:
            xml = z.read("model.xml").decode()
            weights = np.frombuffer(z.read("model.bin"), np.uint8)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise LandcoverError(f"{path}: not a readable OpenVINO model ({exc}); remove it to build it again") from None
    return _core().read_model(xml, ov.Tensor(weights))


def float_tail(model) -> list[str]:
    """Names of the operations that stay in float: the last convolution (whose logits are blended) and every
    operation after it (weighting, argmax, class lookup)."""
    output = next((out for out in model.outputs if "weighted" in out.get_names()), None)
    if output is None:
        return []
    node = output.get_node()
    if node.get_type_name() == "Result":
        node = node.input_value(0).get_node()
    while node is not None and node.get_type_name() != "Convolution":
        node = node.input_value(0).get_node() if node.get_input_size() else None
    if node is None:
        return []
    names, frontier = [node.get_friendly_name()], [node]
    seen = {node.get_friendly_name()}
    while frontier:
        nxt = []
        for n in frontier:
            for out in n.outputs():
                for target in out.get_target_inputs():
                    t = target.get_node()
                    name = t.get_friendly_name()
                    if name not in seen and t.get_type_name() != "Result":
                        seen.add(name)
                        names.append(name)
                        nxt.append(t)
        frontier = nxt
    return names


def _import_nncf():
    """NNCF, with its usage telemetry off: without a consent file it would send usage events to Intel's
    analytics service, and landcover sends nothing off the machine. ``NNCF_CI`` is the variable NNCF reads to
    turn it off (it changes nothing else)."""
    os.environ.setdefault("NNCF_CI", "1")
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)  # its INFO lines are noise to a user
    return nncf
