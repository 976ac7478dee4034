"""``landcover classify``: apply a model package to a raster of any size (see :func:`classify_pixels`)."""

from __future__ import annotations

from ._imagery import add_imagery_arguments, imagery_spec


def register(sub) -> None:
    p = sub.add_parser(
        "classify", help="classify a raster with a model package into a colour-mapped COG",
        description="Classify a raster of any size with a model package (.emd, .dlpk or folder from "
        "`landcover train`). Tiles are blended across their overlap, blocks run in this process or on a Dask "
        "cluster, and the result is a cloud-optimized GeoTIFF with colour table, class names and a QGIS style.",
    )
    p.add_argument("--model", required=True, help="model package: .emd, .dlpk or package folder")
    add_imagery_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT.tif", help="classified raster to write")
    p.add_argument("--padding", type=int, help="context pixels on each tile side (default: a quarter of the "
                   "training chip size, as arcgis.learn, also on a larger --tile-size)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per model call (default 8)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the 8 flips/rotations")
    p.add_argument("--no-predict-background", action="store_true",
                   help="never predict the background (NoData) class (already off, as in arcgis.learn, "
                   "for models with several classes and none of value 0)")
    p.add_argument("--tile-size", type=int, help="model input tile in pixels (default: the training chip size; "
                   "256 for a model of 64-px chips is about 3.7x faster)")
    p.add_argument("--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="classify only this extent (in --extent-crs, default the raster's CRS)")
    p.add_argument("--extent-crs", help="CRS of --extent, e.g. EPSG:3857")
    p.add_argument("--cell-size", type=float, help="resample the input to this cell size (bilinear)")
    p.add_argument("--probabilities", metavar="PROB.tif", help="also write one uint8 band per class (p * 255)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:8786", help="run blocks on this Dask scheduler")
    where.add_argument("--workers", type=int, metavar="N",
                       help="run blocks on a local Dask cluster of N single-threaded processes")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same options)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--backend", default="auto", help="auto (default: fastest that agrees with fp32 on >= "
                   "99.5%% of pixels; the GPU where there is one), cpu (auto without the GPU), fp32, bf16, "
                   "bf16-compiled, onnx, int8, openvino, openvino-int8 or cuda")
    p.add_argument("--threads", type=int, metavar="N", help="compute threads of the whole run, shared by its "
                   "--workers (default: $LANDCOVER_THREADS, else the cores); the summary line says the split")
    p.add_argument("--block-size", type=int, help="block edge in pixels (default 4096, smaller on a cluster so "
                   "that each worker gets several): the unit of work, of resuming and of Dask tasks")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.add_argument("--server", metavar="URL", help="submit the job to a `landcover serve` service and follow it "
                   "(--model: an installed model; --imagery: the service's paths or URLs; token: $LANDCOVER_TOKEN)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.server:
        from ..server.client import classify_on_server

        return classify_on_server(args)
    from ..classify import CellSizeWarning, ImageryWarning, classify_pixels
    from . import own_warnings, warning_line

    with own_warnings((CellSizeWarning, ImageryWarning), warning_line("classify")):
        classify_pixels(
            imagery_spec(args), args.model, args.out, bands=args.bands,
            padding=args.padding, batch_size=args.batch_size, predict_background=not args.no_predict_background,
            test_time_augmentation=args.tta, tile_size=args.tile_size, extent=args.extent,
            extent_crs=args.extent_crs, cell_size=args.cell_size, probabilities=args.probabilities,
            scheduler=args.scheduler, workers=args.workers, resume=args.resume, overwrite=args.overwrite,
            backend=args.backend, block_size=args.block_size, progress=not args.quiet, threads=args.threads,
        )
    return 0
