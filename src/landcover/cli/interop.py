"""``landcover export-onnx``: a model package as an ONNX model for QGIS's Deepness plugin."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "export-onnx", help="write a model package as an ONNX model for QGIS (Deepness plugin)",
        description="Write a model package (.emd, .dlpk or folder) as an ONNX model with the metadata QGIS's "
        "Deepness plugin reads (classes, resolution, tile size and overlap); the band normalization is inside the "
        "model, so it runs in QGIS with no code. In Deepness, map the model's inputs to the imagery bands the "
        "package reads (its ExtractBands).",
    )
    p.add_argument("model", help="model package: .emd, .dlpk or package folder")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="ONNX model to write")
    p.add_argument("--tile-size", type=int, help="model input tile in pixels (default: the training chip size)")
    p.add_argument("--padding", type=int, help="context pixels on each tile side, written as Deepness's tile "
                   "overlap (default: a quarter of the tile, as landcover classify)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import LandcoverError, arg
    from ..interop.qgis import export_deepness_onnx
    from ..package import load_package

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise LandcoverError(f"{out}: exists; add {arg('overwrite', True)} to replace it")
    export_deepness_onnx(load_package(args.model), out, tile_size=args.tile_size, padding=args.padding)
    print(f"wrote {out} (QGIS Deepness: model type Segmentor; map its inputs to the imagery's bands as the "
          "package reads them)")
    return 0
