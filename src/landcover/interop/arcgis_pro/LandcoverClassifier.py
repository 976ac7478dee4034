"""ArcGIS raster function of a landcover model package: "Classify Pixels Using Deep Learning" runs it.

Esri's Python raster function interface for deep learning (Esri/raster-deep-learning): ArcGIS calls
``initialize`` with the ``.emd``, ``getParameterInfo`` for the tool's arguments, ``getConfiguration`` for the
bands, context and pixel-block size it needs, ``updateRasterInfo`` for the output's description, then
``updatePixels`` once per pixel block (``rows x cols`` times the tile stride: the batch).

Each block is classified on the tile grid landcover's ``classify_pixels`` lays over the whole raster
(``landcover_plan.py``): tiles every ``tile_size - 2 * padding`` pixels, none reading past the raster, their
logits blended across the overlaps with raised-cosine ramps; the allowed class with the highest score is
written as its class value (u1, 0 = nodata). The block asks ArcGIS for ``tile_size`` pixels of context on each
side, enough to compute every tile that reaches into it, so the map is the one ``classify_pixels`` makes.
Where the input is nodata (the mask), the output is nodata.

Self-contained: runs with numpy, torch (2.0 or later) and safetensors only, the networks coming from
``landcover_unet.py`` beside this file. Written by landcover into every package; do not edit it there.
"""

import importlib.util
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np

#: arguments whose strings ArcGIS passes as booleans
_TRUE = ("true", "1", "t", "y", "yes")


def _flag(value, name):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in ("false", "0", "f", "n", "no"):
        return text in _TRUE
    raise ValueError(f"LandcoverClassifier: argument {name}={value!r} is not True or False")


def _whole(value, name):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise ValueError(f"LandcoverClassifier: argument {name}={value!r} is not a whole number")
    return int(number)


def _grid(batch_size):
    """rows x cols = batch_size, as close to square as possible (rows <= cols), as Esri's templates do."""
    rows = max(r for r in range(1, int(math.isqrt(batch_size)) + 1) if batch_size % r == 0)
    return rows, batch_size // rows


def _load_module(folder, name):
    """A module bundled in the package (``landcover_unet``, ``landcover_plan``), imported from its file."""
    path = os.path.join(folder, name + ".py")
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the module runs
    spec.loader.exec_module(module)
    return module


class LandcoverClassifier:
    """Pixel classification with a landcover U-Net package (one u1 band of class values, 0 = nodata)."""

    def __init__(self):
        self.name = "Landcover Classifier"
        self.description = "Classifies pixels with a landcover U-Net model package."
        self.emd = None

    # --- ArcGIS's calls ---------------------------------------------------------------------------------------

    def initialize(self, **kwargs):
        """Read the .emd (a path or its JSON text) and load the model on the device (-1 CPU, >= 0 a GPU)."""
        import torch
        from safetensors.torch import load_file

        model = kwargs["model"]
        if os.path.isfile(str(model)):
            with open(model, encoding="utf-8-sig") as f:
                self.emd = json.load(f)
            folder = os.path.dirname(os.path.abspath(model))
        else:
            self.emd = json.loads(model)
            folder = os.path.dirname(os.path.abspath(__file__))
        emd = self.emd
        self.classes = emd["Classes"]
        self.extract_bands = [int(b) for b in emd["ExtractBands"]]
        norm = emd["NormalizationStats"]
        bands = len(self.extract_bands)
        self.mean = np.asarray(norm["band_mean_values"], np.float32).reshape(bands, 1, 1)
        self.std = np.asarray(norm["band_std_values"], np.float32).reshape(bands, 1, 1)
        self.lut = np.array([0] + [int(c["Value"]) for c in self.classes], np.uint8)
        self.tile_size = int(emd["ImageHeight"])
        device = _whole(kwargs.get("device", -1), "device")
        self.device = torch.device(f"cuda:{device}" if device >= 0 and torch.cuda.is_available() else "cpu")
        here = os.path.dirname(os.path.abspath(__file__))
        network, self.plan = _load_module(here, "landcover_unet"), _load_module(here, "landcover_plan")
        weights = load_file(os.path.join(folder, emd["ModelFile"]))
        backbone = emd["ModelParameters"]["backbone"]
        if "layers.0.0.weight" in weights:  # fastai's DynamicUnet (a model fine-tuned from arcgis.learn's)
            net = network.DynamicUnet.from_state_dict(weights, backbone, emd["ModelFile"])
        else:
            net = network.UNet(bands, len(self.classes) + 1, backbone, input_skip=network.has_input_skip(weights))
            net.load_state_dict(weights)  # strict: a package whose weights do not fit fails here, not later
        self.net = net.to(self.device).eval()
        self.padding, self.batch_size = self.tile_size // 4, 8
        self.predict_background, self.tta = True, False
        self.cache = OrderedDict()

    def getParameterInfo(self):
        """The tool's inputs and its Arguments, named and defaulted as arcgis.learn's UnetClassifier's."""
        tile = self.tile_size if self.emd else 256
        params = [
            {"name": "raster", "dataType": "raster", "required": True, "displayName": "Raster",
             "description": "Input raster"},
            {"name": "model", "dataType": "string", "required": True, "displayName": "Input Model Definition (EMD) File",
             "description": "Input model definition (EMD) JSON file"},
            {"name": "device", "dataType": "numeric", "required": False, "displayName": "Device ID",
             "description": "Device ID (-1: CPU)"},
            {"name": "padding", "dataType": "numeric", "value": str(tile // 4), "required": False,
             "displayName": "Padding", "description": "Pixels of context on each side of a tile"},
            {"name": "batch_size", "dataType": "numeric", "value": "8", "required": False,
             "displayName": "Batch Size", "description": "Tiles per batch"},
            {"name": "predict_background", "dataType": "string", "value": "True", "required": False,
             "displayName": "Predict Background",
             "description": "Predict the background class (off when no class has value 0 and there are several)"},
            {"name": "test_time_augmentation", "dataType": "string", "value": "False", "required": False,
             "displayName": "Test Time Augmentation", "description": "Average the 8 flips and rotations"},
        ]
        if not self.emd or self.emd.get("SupportsVariableTileSize", False):
            params.append({"name": "tile_size", "dataType": "numeric", "value": str(tile), "required": False,
                           "displayName": "Tile Size", "description": "Model input size in pixels"})
        return params

    def getConfiguration(self, **scalars):
        """Bands, padding and the pixel-block size (a rows x cols batch of tiles) ArcGIS is to deliver."""
        self.tile_size = _whole(scalars.get("tile_size") or self.emd["ImageHeight"], "tile_size")
        given = scalars.get("padding")
        # arcgis.learn's default: a quarter of the model's tile (the context it was trained with), not of the tile
        model_tile = _whole(self.emd["ImageHeight"], "ImageHeight")
        self.padding = min(model_tile, self.tile_size) // 4 if given in (None, "") else _whole(given, "padding")
        given = scalars.get("batch_size")
        self.batch_size = 8 if given in (None, "") else _whole(given, "batch_size")
        self.predict_background = _flag(scalars.get("predict_background", True), "predict_background")
        self.tta = _flag(scalars.get("test_time_augmentation", False), "test_time_augmentation")
        if self.tile_size < 16:
            raise ValueError(f"LandcoverClassifier: tile_size={self.tile_size}: must be at least 16 pixels")
        if self.padding < 0 or 2 * self.padding >= self.tile_size:
            raise ValueError(f"LandcoverClassifier: padding={self.padding}: must be >= 0 and less than half the "
                             f"tile size ({self.tile_size})")
        if self.batch_size < 1:
            raise ValueError(f"LandcoverClassifier: batch_size={self.batch_size}: must be at least 1")
        self.rows, self.cols = _grid(self.batch_size)
        step = self.tile_size - 2 * self.padding
        self.cache = OrderedDict()
        return {
            "extractBands": tuple(self.extract_bands),
            # every tile with weight in the block starts less than a tile before it and ends less than a tile after
            "padding": self.tile_size,
            "tx": step * self.cols,
            "ty": step * self.rows,
            "fixedTileSize": 1,
            "inheritProperties": 4 | 8,  # dimensions and resampling; pixel type and NoData are this function's
            "invalidateProperties": 2 | 4 | 8,
            "inputMask": True,
        }

    def updateRasterInfo(self, **kwargs):
        """One u1 band of class values, 0 = nodata, with the classes' attribute table."""
        info = kwargs["output_info"]
        info["bandCount"] = 1
        info["pixelType"] = "u1"
        info["noData"] = np.array([0], np.uint8)
        info["statistics"] = ()
        info["histogram"] = ()
        features = [{"attributes": {"OID": i + 1, "Value": int(c["Value"]), "Class": str(c["Name"]),
                                    "Red": int(c["Color"][0]), "Green": int(c["Color"][1]),
                                    "Blue": int(c["Color"][2])}}
                    for i, c in enumerate(self.classes)]
        fields = [{"name": "OID", "type": "esriFieldTypeOID"}, {"name": "Value", "type": "esriFieldTypeInteger"},
                  {"name": "Class", "type": "esriFieldTypeString"}, {"name": "Red", "type": "esriFieldTypeInteger"},
                  {"name": "Green", "type": "esriFieldTypeInteger"}, {"name": "Blue", "type": "esriFieldTypeInteger"}]
        info["rasterAttributeTable"] = json.dumps({"features": features, "fields": fields})
        return kwargs

    def updatePixels(self, tlc, shape, props, **pixelBlocks):
        """Classify one pixel block: ``raster_pixels`` (bands, ty + 2 context, tx + 2 context) -> ``output_pixels``
        of ``shape`` (1, ty, tx)."""
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        bands = len(self.extract_bands)
        if pixels.ndim != 3 or pixels.shape[0] < bands:
            got = pixels.shape[0] if pixels.ndim == 3 else 1
            raise ValueError(f"LandcoverClassifier: the pixel block has {got} band(s) but the model reads {bands} "
                             f"(ExtractBands {self.extract_bands}); give the raster the model was trained on, with "
                             "all its bands")
        pixels = pixels[:bands]
        mask = pixelBlocks.get("raster_mask")
        valid = np.ones(pixels.shape[1:], bool) if mask is None else np.asarray(mask).reshape(
            -1, *pixels.shape[1:]).any(axis=0)
        x = (pixels.astype(np.float32) - self.mean) / self.std
        x[:, ~valid] = 0.0  # nodata reads as the band means, as in training
        h, w = int(shape[-2]), int(shape[-1])
        pad = (pixels.shape[1] - h) // 2
        row, col, height, width, cached = self._placement(tlc, props, pad, h, w)
        out_h, out_w = max(0, min(h, height - row)), max(0, min(w, width - col))
        classes = np.zeros((h, w), np.uint8)
        if out_h and out_w:
            plan = self.plan.TilePlan.build(out_h, out_w, self.tile_size, self.padding, 1 << 30,
                                            window=(row, col, height, width))
            scores = self._scores(plan, x, pad, (row, col, height, width) if cached else None)
            found = self.lut[(scores + self._bias()).argmax(axis=0)]
            found[~valid[pad: pad + out_h, pad: pad + out_w]] = 0
            classes[:out_h, :out_w] = found
        pixelBlocks["output_pixels"] = classes.reshape(shape).astype(props.get("pixelType", "u1"), copy=False)
        return pixelBlocks

    # --- inference ------------------------------------------------------------------------------------------

    @staticmethod
    def _placement(tlc, props, pad, h, w):
        """(row, col) of the block in the output raster, the raster's (height, width), and whether that is
        known: from ``tlc`` (the block's top-left corner in map units) and the raster's ``extent``, ``cellSize``,
        ``width`` and ``height`` in ``props``. Where they are missing the block's own pixels stand for the
        raster (tiles then lie within the block, not on the raster's grid)."""
        try:
            xmin, _, _, ymax = (float(v) for v in props["extent"])
            cx, cy = (abs(float(v)) for v in props["cellSize"])
            col, row = round((float(tlc[0]) - xmin) / cx), round((ymax - float(tlc[1])) / cy)
            height, width = int(props["height"]), int(props["width"])
            if 0 <= row < height and 0 <= col < width:
                return row, col, height, width, True
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            pass
        return pad, pad, h + 2 * pad, w + 2 * pad, False

    def _bias(self):
        """0 for the classes that may be predicted, -inf for the others (as landcover's classify_pixels)."""
        values = [int(c["Value"]) for c in self.classes]
        allowed = np.ones(len(values) + 1, bool)
        allowed[0] = self.predict_background and (len(values) == 1 or 0 in values)
        ignored = set(int(v) for v in self.emd.get("IgnoreClasses", []))
        for i, v in enumerate(values):
            allowed[i + 1] = v not in ignored
        if not allowed.any():
            allowed[0] = True
        return np.where(allowed, 0.0, -np.inf).astype(np.float32).reshape(-1, 1, 1)

    def _scores(self, plan, x, pad, origin):
        """The blended logits (C, h, w) of the block's output pixels: every tile of ``plan`` with weight there,
        weighted by its blending window. ``origin``: the block's (row, col) on the raster and the raster's
        (height, width), to reuse the logits of tiles shared with the previous blocks (None: not on the raster's
        grid, no reuse)."""
        rows, cols = plan.rows, plan.cols
        out_h, out_w = rows.size, cols.size
        tiles = [(r, c) for r in range(rows.count) for c in range(cols.count)]
        logits = self._tile_logits(plan, tiles, x, pad, origin)
        total = None
        for (r, c), y in zip(tiles, logits, strict=True):
            top, left, th, tw = plan.tile_window(r, c)
            weight = np.multiply.outer(rows.window(r), cols.window(c))
            ys = slice(max(0, top), min(out_h, top + th))
            xs = slice(max(0, left), min(out_w, left + tw))
            part = y[:, ys.start - top: ys.stop - top, xs.start - left: xs.stop - left]
            if total is None:
                total = np.zeros((y.shape[0], out_h, out_w), np.float32)
            total[:, ys, xs] += part * weight[ys.start - top: ys.stop - top, xs.start - left: xs.stop - left]
        return total

    def _tile_logits(self, plan, tiles, x, pad, origin):
        """Logits (C, th, tw) per tile, in batches of ``batch_size``; recent tiles' logits are kept by position
        on the raster (neighbouring blocks share the tiles across their border)."""
        out, todo = {}, []
        for r, c in tiles:
            top, left, th, tw = plan.tile_window(r, c)
            if top + pad < 0 or left + pad < 0 or top + pad + th > x.shape[1] or left + pad + tw > x.shape[2]:
                raise ValueError(f"LandcoverClassifier: the pixel block holds {pad} pixels of context, less than "
                                 f"the tiles need ({th}); give the raster function its own padding")
            key = None if origin is None else (origin[0] + top, origin[1] + left, th, tw, *origin[2:])
            if key is not None and key in self.cache:
                self.cache.move_to_end(key)
                out[(r, c)] = self.cache[key]
            else:
                todo.append(((r, c), key, x[:, top + pad: top + pad + th, left + pad: left + pad + tw]))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i: i + self.batch_size]
            for (rc, key, _), y in zip(chunk, self._predict(np.stack([t for _, _, t in chunk])), strict=True):
                out[rc] = y
                if key is not None:
                    self.cache[key] = y
        while len(self.cache) > 4 * max(1, len(tiles)):  # about two block rows of a typical raster
            self.cache.popitem(last=False)
        return [out[rc] for rc in tiles]

    def _predict(self, batch):
        """Logits (B, C, th, tw) of normalized tiles, averaged over the 8 flips/rotations with TTA."""
        import torch

        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if not self.tta:
                return self.net(t).float().cpu().numpy()
            total = None
            for k in range(4):
                for flip in (False, True):
                    y = torch.rot90(t.flip(3) if flip else t, k, (2, 3))
                    y = torch.rot90(self.net(y).float(), -k, (2, 3))
                    y = y.flip(3) if flip else y
                    total = y if total is None else total + y
            return (total * 0.125).cpu().numpy()
