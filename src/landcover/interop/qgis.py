"""A landcover model as an ONNX model for QGIS's "Deepness" plugin (``landcover export-onnx``).

Deepness runs an ONNX model over a map layer tile by tile and reads what it needs from the model's metadata
(``metadata_props``, each value JSON): ``model_type`` (``"Segmentor"``), ``class_names`` (class index -> name),
``resolution`` (cm per pixel), ``tiles_size`` (pixels), ``tiles_overlap`` (percent of the tile),
``standardization_mean``/``standardization_std`` and ``seg_thresh``. Before the model it divides the pixel values
by 255 and then standardizes with those mean/std; after it, a segmentation model's output is the per-class
probabilities (N, classes, H, W), thresholded by ``seg_thresh`` and arg-maxed, index 0 being the background.

So the graph takes Deepness's input (the bands / 255, NCHW float32, tiles of the package's size) and multiplies
it back by 255 before our normalization ``(x - mean) / std``; the written standardization is the identity (mean
0, std 1). The classes the model may not predict (background unless a class has value 0 or there is only one,
and the package's ignored classes, as in ``classify_pixels``) get probability 0, and ``seg_thresh`` is 0, so
Deepness keeps the most probable class everywhere, as ``classify_pixels`` does. Class index ``i`` is the
package's class ``i`` (index 0 NoData): Deepness's output rasters hold indices, named by ``class_names``.

Deepness completes its last tiles by reading past the layer's east and north edges (zeros there). Pixels 0 in
every band are masked at the input of every convolution and pooling in the graph, so the model treats them as it
treats the border of a tile in ``classify_pixels`` and in training (zero padding), not as a dark surface.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import LandcoverError, arg
from ..raster import atomic_output

#: Deepness's metadata keys, in the order written
METADATA_KEYS = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap", "standardization_mean",
                 "standardization_std", "seg_thresh")
#: the ONNX opset (the one landcover's ONNX Runtime backend uses; Deepness's onnxruntime reads it)
OPSET = 17


def deepness_metadata(pkg, tile_size: int, padding: int) -> dict[str, str]:
    """The metadata Deepness reads, as the JSON strings it parses. ``padding``: context on each side of a
    tile's kept core, i.e. an overlap of ``2 * padding`` pixels between neighbouring tiles."""
    names = {0: "NoData"} | {i + 1: c.name for i, c in enumerate(pkg.classes)}
    meta = {
        "model_type": "Segmentor",
        "class_names": {str(k): v for k, v in names.items()},
        "tiles_size": int(tile_size),
        "tiles_overlap": int(round(200 * padding / tile_size)),
        "standardization_mean": [0.0] * pkg.in_channels,
        "standardization_std": [1.0] * pkg.in_channels,
        "seg_thresh": 0.0,
    }
    cm = resolution_cm(pkg)
    if cm is not None:
        meta["resolution"] = cm
    return {k: json.dumps(meta[k]) for k in METADATA_KEYS if k in meta}


def resolution_cm(pkg) -> float | None:
    """The package's training cell size in centimetres per pixel, if it has one in a projected CRS."""
    if not pkg.cell_size or not pkg.crs_wkt:
        return None
    import rasterio

    try:
        _, factor = rasterio.crs.CRS.from_wkt(pkg.crs_wkt).linear_units_factor
    except (rasterio.errors.CRSError, ValueError, AttributeError):
        return None  # geographic: no cell size in metres
    return round(float(pkg.cell_size[0]) * float(factor) * 100.0, 4)


def deepness_module(pkg, model=None):
    """torch module: Deepness's input (bands / 255) -> class probabilities, normalization inside.

    ``model`` (the package's network if already built) is copied, never changed: the module adds hooks to it.
    """
    import copy

    import torch

    from ..classify.blend import ClassDecoder

    net = copy.deepcopy(model) if model is not None else pkg.build_model()
    decoder = ClassDecoder.for_package(pkg)

    class Deepness(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.eval()
            std = np.asarray(pkg.std, np.float32).reshape(1, -1, 1, 1)
            mean = np.asarray(pkg.mean, np.float32).reshape(1, -1, 1, 1)
            # (255 x - mean) / std as one multiply-add
            self.register_buffer("scale", torch.from_numpy(255.0 / std))
            self.register_buffer("shift", torch.from_numpy(-mean / std))
            # a large negative score rather than -inf: softmax gives exactly 0 and no NaN can arise
            self.register_buffer("bias", torch.from_numpy(np.where(decoder.allowed, 0.0, -1e9).astype(np.float32))
                                 .reshape(1, -1, 1, 1))
            self.masks: dict = {}
            for layer in self.net.modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
                    layer.register_forward_pre_hook(self._mask_input)

        def _mask_input(self, _layer, inputs):
            """Zero a layer's input where the tile has no pixels, at the input's own resolution."""
            x = inputs[0]
            size = tuple(int(n) for n in x.shape[-2:])
            if size not in self.masks:  # a resolution not on the pyramid (odd sizes): the nearest cells
                self.masks[size] = torch.nn.functional.interpolate(self.masks["valid"], size=size, mode="nearest")
            return (x * self.masks[size], *inputs[1:])

        def forward(self, x):
            # Pixels 0 in every band are nodata, and Deepness's fill past the layer's edge (its edge tiles reach
            # up to a stride past the layer's east and north sides). Every convolution and pooling sees them as
            # zero padding, as a tile's border in classify_pixels and in training: the model's predictions
            # near the layer's edge are those it makes at a tile's edge, not guesses about a flat surface.
            valid = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
            h, w = x.shape[-2:]
            ph, pw = (-h) % 32, (-w) % 32  # the U-Net pads its input to a multiple of 32: so does the mask
            mask = torch.nn.functional.pad(valid, (0, pw, 0, ph), mode="replicate") if ph or pw else valid
            self.masks = {"valid": mask, tuple(int(n) for n in mask.shape[-2:]): mask}
            for _ in range(5):  # strides 2 .. 32: a cell is valid if any pixel under it is
                mask = torch.nn.functional.max_pool2d(mask, 2, 2, ceil_mode=True)
                self.masks[tuple(int(n) for n in mask.shape[-2:])] = mask
            scores = self.net(x * self.scale + self.shift).float() + self.bias
            self.masks = {}
            return torch.softmax(scores, dim=1)

    return Deepness().eval()


def export_deepness_onnx(pkg, path: str | os.PathLike, tile_size: int | None = None, padding: int | None = None,
                         model=None) -> Path:
    """Write ``pkg`` as an ONNX model with Deepness's metadata; returns the path.

    ``tile_size`` (default the package's) is the model's fixed input size, ``padding`` (default a quarter of it,
    as ``classify_pixels``) the context Deepness keeps around each tile's core (``tiles_overlap``). ``model``:
    the package's network if already built.
    """
    import onnx
    import torch

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise LandcoverError(f"{path}: the output must be an .onnx file")
    tile = int(pkg.tile_size if tile_size is None else tile_size)
    pad = tile // 4 if padding is None else int(padding)
    if tile < 32:
        raise LandcoverError(f"{arg('tile_size', tile)}: must be at least 32 pixels")
    if pad < 0 or 2 * pad >= tile:
        raise LandcoverError(f"{arg('padding', pad)}: must be >= 0 and less than half the tile size ({tile})")
    module = deepness_module(pkg, model)
    x = torch.zeros(1, pkg.in_channels, tile, tile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The same exporter settings as landcover's ONNX Runtime backend (classify.engine.export_onnx); the
        # graph differs (one input, probabilities out, fixed tile), so it is exported here.
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
                          opset_version=OPSET)
        proto = onnx.load(str(tmp))
        for key, value in deepness_metadata(pkg, tile, pad).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return path
