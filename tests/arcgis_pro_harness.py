"""Replay what ArcGIS Pro's "Classify Pixels Using Deep Learning" does with a package's raster function.

Runs with numpy, torch and safetensors only (no landcover, no rasterio): tests/test_arcgis_pro.py runs it in a
bare virtual environment on an unzipped ``.dlpk``. Esri's call order: import the ``.emd``'s InferenceFunction
(class named as its module) from the package folder; ``initialize(model=<emd path>, device=-1)``;
``getParameterInfo()`` (whose defaults, overridden by ``--arguments``, become the tool's arguments, as
strings); ``getConfiguration(**arguments)``; ``updateRasterInfo(output_info=...)``; then ``updatePixels`` per
pixel block. Blocks are laid as Esri lays them: output tiles of ``ty x tx`` from the raster's top-left corner,
each read with ``padding`` pixels of context on every side, beyond the raster filled with 0 and masked 0, with
``tlc`` (the block's top-left corner in map units) and ``props`` (the output raster's extent, cell size, width and
height);
``raster_pixels`` holds the ``extractBands`` (as many of them as the raster has) and ``raster_mask`` one mask
per band. The mosaic of ``output_pixels``, cropped to the raster, is saved to ``--out``.

Usage: python arcgis_pro_harness.py PACKAGE_DIR PIXELS.npy MASK.npy --out OUT.npy [--arguments JSON] [--geo JSON]
PIXELS is (bands, h, w) in the raster's type, MASK (h, w) with 0 = nodata. A raster function error is printed
as one line ``ERROR: <message>`` and the exit status is 2.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import sys

import numpy as np


def load_function(folder: str):
    """The raster function object and the .emd path, as ArcGIS finds them in a package folder."""
    emds = glob.glob(os.path.join(folder, "*.emd"))
    if len(emds) != 1:
        raise SystemExit(f"{folder}: expected one .emd, found {len(emds)}")
    with open(emds[0], encoding="utf-8") as f:
        emd = json.load(f)
    module_name = os.path.splitext(emd["InferenceFunction"])[0]
    sys.path.insert(0, folder)
    cls = getattr(importlib.import_module(module_name), module_name)
    return cls(), emds[0], emd


def tool_arguments(params: list[dict], given: dict) -> dict:
    """The tool's arguments: every parameter's default (as the string the tool shows), then the given ones."""
    names = [p["name"] for p in params]
    for required in ("raster", "model"):
        assert required in names, f"getParameterInfo lacks {required!r}"
    unknown = set(given) - set(names)
    assert not unknown, f"arguments {sorted(unknown)} are not parameters of the function"
    args = {p["name"]: str(p["value"]) for p in params if "value" in p and p["name"] not in ("raster", "model")}
    args.update({k: str(v) for k, v in given.items()})
    return args


def check_raster_info(info: dict, emd: dict) -> None:
    assert info["bandCount"] == 1 and info["pixelType"] == "u1", info
    table = json.loads(info["rasterAttributeTable"])
    rows = [(f["attributes"]["Value"], f["attributes"]["Class"]) for f in table["features"]]
    assert rows == [(c["Value"], c["Name"]) for c in emd["Classes"]], rows
    assert [f["name"] for f in table["fields"]] == ["OID", "Value", "Class", "Red", "Green", "Blue"]


def run_blocks(fn, config: dict, pixels: np.ndarray, mask: np.ndarray, geo: dict) -> np.ndarray:
    """updatePixels over Esri's pixel blocks; the mosaic of output_pixels (h, w). ``geo``: the raster's
    ``xmin``, ``ymax`` and cell size ``cx``, ``cy`` (map units), for each block's top-left corner (``tlc``) and the
    output raster's properties (``props``: extent, cellSize, width, height)."""
    bands = [b for b in config["extractBands"] if b < pixels.shape[0]]
    p, tx, ty = int(config["padding"]), int(config["tx"]), int(config["ty"])
    assert config["fixedTileSize"] == 1 and config["inputMask"]
    _, h, w = pixels.shape
    rows, cols = -(-h // ty), -(-w // tx)
    padded = np.zeros((len(bands), rows * ty + 2 * p, cols * tx + 2 * p), pixels.dtype)
    padded[:, p: p + h, p: p + w] = pixels[bands]
    valid = np.zeros(padded.shape, np.uint8)
    valid[:, p: p + h, p: p + w] = (mask != 0)[None]
    out = np.zeros((rows * ty, cols * tx), np.uint8)
    shape = (1, ty, tx)
    xmin, ymax, cx, cy = (float(geo[k]) for k in ("xmin", "ymax", "cx", "cy"))
    props = {"pixelType": "u1", "width": w, "height": h, "cellSize": (cx, cy),
             "extent": (xmin, ymax - h * cy, xmin + w * cx, ymax)}
    for r in range(rows):
        for c in range(cols):
            window = (slice(None), slice(r * ty, r * ty + ty + 2 * p), slice(c * tx, c * tx + tx + 2 * p))
            blocks = {"raster_pixels": padded[window].copy(), "raster_mask": valid[window].copy()}
            tlc = (xmin + c * tx * cx, ymax - r * ty * cy)
            result = fn.updatePixels(tlc, shape, dict(props), **blocks)
            block = result["output_pixels"]
            assert block.shape == shape and block.dtype == np.uint8, (block.shape, block.dtype)
            out[r * ty: (r + 1) * ty, c * tx: (c + 1) * tx] = block[0]
    return out[:h, :w]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("pixels")
    parser.add_argument("mask")
    parser.add_argument("--out", required=True)
    parser.add_argument("--arguments", default="{}", help="the tool's arguments as JSON, e.g. '{\"padding\": 8}'")
    parser.add_argument("--geo", default='{"xmin": 0, "ymax": 0, "cx": 1, "cy": 1}',
                        help="the raster's georeferencing as JSON: xmin, ymax, cx, cy")
    a = parser.parse_args(argv)
    fn, emd_path, emd = load_function(a.package)
    pixels, mask = np.load(a.pixels), np.load(a.mask)
    try:
        fn.initialize(model=emd_path, device=-1)
        args = tool_arguments(fn.getParameterInfo(), json.loads(a.arguments))
        config = fn.getConfiguration(**args)
        assert tuple(config["extractBands"]) == tuple(emd["ExtractBands"]), config
        info = fn.updateRasterInfo(output_info={"bandCount": pixels.shape[0], "pixelType": str(pixels.dtype)})
        check_raster_info(info["output_info"], emd)
        mosaic = run_blocks(fn, config, pixels, mask, json.loads(a.geo))
    except (ValueError, KeyError, RuntimeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    np.save(a.out, mosaic)
    print(json.dumps({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                      "arguments": args, "torch": sys.modules["torch"].__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
