"""Inference backends: each maps normalized tiles to weighted logits and, inside its graph where it can, classes.

Every backend maps normalized tiles ``(bands, h, w)`` float32 and their blending weights ``(h, w)`` to the
weighted logits ``(C, h, w)`` float32 and, where it can do so inside its graph, to class values ``(h, w)``
uint8 (argmax with the excluded classes masked, then the index-to-value lookup). Tiles are padded to a
multiple of 32 here, as the U-Net does internally, so all backends see the same input.

CPU backends: ``fp32`` (eager, the reference), ``bf16`` (batch norm folded into the convolutions, bfloat16
weights, channels-last), ``bf16-compiled`` (the same compiled ahead of time by AOTInductor with frozen
weights, which fuses convolutions with their activations), ``onnx`` (ONNX Runtime, fp32), ``int8`` (ONNX
Runtime, static int8 QDQ calibrated on tiles of the raster), ``openvino`` (OpenVINO, fp32) and
``openvino-int8`` (OpenVINO, int8 quantized by NNCF on tiles of the raster; :mod:`.openvino`). GPU: ``cuda``
(autocast bf16 or fp16). The files some of them run from are built in :mod:`.artifacts`; which one a run uses
is decided in :mod:`.choose`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..cache import cache_root
from ..errors import LandcoverError, arg
from .blend import ClassDecoder

CPU_BACKENDS = ("fp32", "bf16", "bf16-compiled", "onnx", "int8", "openvino", "openvino-int8")
#: backends that run from a prepared file (exported, quantized or compiled model; see :mod:`.artifacts`)
ARTIFACT_BACKENDS = ("onnx", "int8", "bf16-compiled", "openvino", "openvino-int8")
#: backends that compute in bfloat16: slower than fp32 on a CPU without native bf16 (emulated)
BF16_BACKENDS = ("bf16", "bf16-compiled")
BACKENDS = ("auto", "cpu", *CPU_BACKENDS, "cuda")
#: changes when a compiled graph does (2: unrolled argmax): cached compiled models and backend decisions made
#: with an older graph are then rebuilt instead of reused
GRAPH_VERSION = 2


def cache_dir() -> Path:
    """Where exported models and backend decisions are kept: ``classify/`` in :func:`landcover.cache.cache_root`."""
    return cache_root() / "classify"


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



def build_engine(backend: str, pkg, decoder: ClassDecoder, artifact: str | None = None, batch_size: int = 8,
                 threads: int | None = None, model=None) -> Engine:
    """Build one backend; ``artifact`` is its prepared file (ONNX for ``onnx``/``int8``/``openvino``, ``.ovz``
    for ``openvino-int8``, an AOTInductor package for ``bf16-compiled``; see :func:`.artifacts.prepare_artifact`).
    ``threads``: the backend's compute threads (None: its default, all cores)."""
    if backend in ARTIFACT_BACKENDS and (not artifact or not Path(artifact).is_file()):
        raise LandcoverError(f"{artifact}: the prepared model for backend {backend} is missing")
    if backend in ("onnx", "int8"):
        return OnnxEngine(artifact, backend, threads)
    if backend in ("openvino", "openvino-int8"):
        from .openvino import OpenVinoEngine

        return OpenVinoEngine(artifact, backend, threads)
    if backend == "bf16-compiled":
        return CompiledEngine(artifact)
    model = model if model is not None else pkg.build_model()
    if backend in ("fp32", "bf16"):
        return TorchEngine(model, backend)
    if backend == "cuda":
        return CudaEngine(model, decoder, batch_size)
    raise LandcoverError(f"{arg('backend', backend)}: unknown backend (choose from {', '.join(BACKENDS)})")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

