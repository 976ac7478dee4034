"""``landcover export``: training chips in ArcGIS's Classified Tiles layout (a thin skin over
:func:`landcover.export_training_data`)."""

from __future__ import annotations

import argparse

from ._imagery import IMAGERY_EPILOG, add_imagery_arguments, imagery_spec

EPILOG = """\
Chips follow the imagery grid (or the grid --extent/--cell-size make of it, in the imagery CRS). The last row
and column of chips are shifted inward to end at the grid edge; a grid smaller than one tile gives one chip
padded with the imagery nodata value. Chips without labelled pixels are skipped unless --all-tiles; chips that
are all imagery nodata are never written. Labels outside the imagery's valid area are 0 (no data).

examples:
  landcover export --imagery naip.tif --labels landcover.tif --out chips --tile-size 256 --stride 128
  landcover export --imagery B2.tif B3.tif B4.tif B8.tif --labels samples.gpkg --class-field classvalue --out chips
  landcover export --imagery img.tif --labels lc.tif --out chips --cell-size 2 \\
      --extent -8449640.5 4685349.8 -8352052.5 4782795.6 --extent-crs EPSG:3857
  landcover export --imagery more.tif --labels lc2.tif --out chips --start-index 1200   # append
"""


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export training chips (Classified Tiles)",
        description="Export training chips and labels in ArcGIS's Classified Tiles layout:\nimages/, labels/, "
        "map.txt, stats.txt, esri_accumulated_stats.json and esri_model_definition.emd.",
        epilog=EPILOG + IMAGERY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_imagery_arguments(p)
    p.add_argument("--labels", required=True,
                   help="classified raster (values 1..255, 0 = no data) or polygons (GeoPackage, Shapefile, "
                   "GeoJSON)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--class-field", metavar="FIELD",
                   help="integer class field of vector labels (default: classvalue or value)")
    p.add_argument("--buffer-radius", type=float, default=0.0, metavar="R",
                   help="buffer points and lines by R, in the label layer's map units (default 0)")
    p.add_argument("--classes", metavar="FILE.json", help="a JSON file of class names and colours: {\"1\": {\"name\": ..., "
                   "\"color\": \"#rrggbb\"}, ...}")
    p.add_argument("--tile-size", type=int, default=256, metavar="N", help="chip size in pixels (default 256)")
    p.add_argument("--stride", type=int, metavar="N",
                   help="step between chips in pixels, <= tile size; 0 = tile size (default: half the tile, 128)")
    p.add_argument("--format", default="tif", choices=["tif", "png", "jpg"],
                   help="chip format (PNG/JPEG: 8-bit, 1 or 3 bands; JPEG exports get PNG label chips)")
    p.add_argument("--cell-size", type=float, metavar="C", help="resample the imagery to this cell size")
    p.add_argument("--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="limit the export to this extent")
    p.add_argument("--extent-crs", metavar="CRS", help="CRS of --extent, e.g. EPSG:3857 (default: imagery CRS)")
    p.add_argument("--resampling", default="bilinear", choices=["nearest", "bilinear", "cubic", "average"],
                   help="imagery resampling off the imagery grid (default bilinear)")
    p.add_argument("--all-tiles", action="store_true", help="also export chips without labelled pixels")
    p.add_argument("--start-index", type=int, metavar="N",
                   help="first chip index; appends to an export already in --out and merges its statistics")
    p.add_argument("--metadata-format", metavar="FORMAT",
                   help="ArcGIS's metadata format keyword; only Classified_Tiles (the default) is written")
    p.add_argument("--workers", type=int, metavar="N", help="chip-writing threads (default: up to 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_training_data

    summary = export_training_data(
        imagery_spec(args), args.labels, args.out, bands=args.bands, class_field=args.class_field, buffer_radius=args.buffer_radius,
        classes=args.classes, tile_size=args.tile_size, stride=args.stride, chip_format=args.format,
        cell_size=args.cell_size, extent=args.extent, extent_crs=args.extent_crs, all_tiles=args.all_tiles,
        start_index=args.start_index, resampling=args.resampling, workers=args.workers, progress=not args.quiet,
        metadata_format=args.metadata_format,
    )
    print(summary)
    return 0
