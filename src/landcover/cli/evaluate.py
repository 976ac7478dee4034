"""``landcover evaluate | areas | map | vectorize``: what to do with a classified raster."""

from __future__ import annotations

from . import own_warnings, refuse_existing, warning_line


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a classified raster against a reference raster or polygons",
        description="Confusion matrix (rows = map, columns = reference), overall/user's/producer's accuracy, "
        "per-class precision, recall, F1 and IoU, mean IoU and kappa; with --sample, area-adjusted accuracy and "
        "class areas with 95 % confidence intervals (Olofsson et al. 2014).")
    p.add_argument("--prediction", required=True, metavar="P.tif", help="classified raster")
    p.add_argument("--reference", required=True, metavar="R",
                   help="reference raster (any grid/CRS) or polygons (.gpkg, .shp, .geojson, ...)")
    p.add_argument("--class-field", metavar="F", help="class field of reference polygons (default: classvalue, "
                   "value, ... if present)")
    p.add_argument("--out", metavar="report.json", help="JSON report; a <stem>_confusion.png heatmap goes beside it")
    p.add_argument("--sample", type=int, metavar="N", help="draw N sample pixels from the map strata")
    p.add_argument("--strategy", choices=("stratified", "equalized", "random"), default="stratified",
                   help="sampling: stratified (proportional to class area, at least min(50, N/classes) per "
                   "class), equalized (same per class) or random (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample (default: %(default)s)")
    p.add_argument("--ignore-values", type=int, nargs="+", metavar="V", help="reference values that mean "
                   "'not labelled' besides 0 and nodata (e.g. 255 for 'ignore')")
    _overwrite_arg(p)
    p.set_defaults(func=_evaluate)

    a = sub.add_parser("areas", help="pixels, hectares and percent of each class",
                       description="Per-class pixels, area (CRS units; geodesic m² for geographic and Mercator CRSs), "
                       "hectares and percent; no data excluded.")
    a.add_argument("raster", metavar="P.tif", help="classified raster")
    a.add_argument("--out", metavar="areas.csv", help="write the table as CSV")
    _overwrite_arg(a)
    a.set_defaults(func=_areas)

    m = sub.add_parser("map", help="a PNG map or a self-contained interactive HTML map",
                       description="Classes in their colours over imagery, with legend, scale bar and title; "
                       ".html gives an offline page with pan/zoom, layer toggles, opacity and the class under "
                       "the cursor.")
    m.add_argument("--classified", required=True, metavar="P.tif", help="classified raster")
    m.add_argument("--imagery", nargs="+", metavar="IMG", help="imagery underneath (a raster, or rasters on one grid whose bands are stacked)")
    m.add_argument("--bands", nargs="+", type=int, metavar="B", help="imagery bands, from 1 (e.g. 4 1 2)")
    m.add_argument("--out", required=True, metavar="map.png|map.html", help="output map")
    m.add_argument("--title", help="map title (default: the classified file's name)")
    m.add_argument("--opacity", type=float, default=0.6, help="class opacity over imagery (default: %(default)s)")
    m.add_argument("--size", nargs=2, type=int, default=None, metavar=("W", "H"),
                   help="PNG size in pixels (default: 1000 high, as wide as the raster's shape and the legend need)")
    m.add_argument("--max-size", type=int, metavar="PX", help="longest side of the layers read (default: the "
                   "PNG's longer side; 2048 for HTML)")
    _overwrite_arg(m)
    m.set_defaults(func=_map)

    v = sub.add_parser("vectorize", help="polygons per class with a minimum mapping unit (GeoPackage)",
                       description="Sieve to the minimum mapping unit, then polygonize; fields classvalue and "
                       "classname, in the raster's CRS.")
    v.add_argument("raster", metavar="P.tif", help="classified raster")
    v.add_argument("--out", required=True, metavar="polygons.gpkg", help="output GeoPackage")
    v.add_argument("--min-area", type=float, metavar="M", help="minimum mapping unit in CRS units² (m² for "
                   "geographic and Mercator CRSs); smaller patches merge into their largest neighbouring class (specks inside no data "
                   "are removed)")
    v.add_argument("--connectivity", type=int, choices=(4, 8), default=4, help="pixel connectivity "
                   "(default: %(default)s)")
    _overwrite_arg(v)
    v.set_defaults(func=_vectorize)


def _overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _evaluate(args) -> int:
    from ..areas import AreaWarning
    from ..evaluate import AccuracyWarning, evaluate, heatmap_path

    if args.out:
        refuse_existing(args.overwrite, args.out, heatmap_path(args.out))
    # The report's own warnings are printed after the table.
    ours: list[str] = []
    with own_warnings(AccuracyWarning, ours.append), own_warnings(AreaWarning, ours.append):
        report = evaluate(args.prediction, args.reference, class_field=args.class_field, out=args.out,
                          sample=args.sample, strategy=args.strategy, seed=args.seed,
                          ignore_values=args.ignore_values)
    print(report.format_table())
    for message in ours:
        warning_line("evaluate")(message)
    if args.out:
        print(f"report: {args.out}")
    return 0


def _areas(args) -> int:
    from ..areas import AreaWarning, class_areas

    refuse_existing(args.overwrite, args.out)
    with own_warnings(AreaWarning, warning_line("areas")):
        table = class_areas(args.raster, out=args.out)
    print(table.format_table())
    if args.out:
        print(f"table: {args.out}")
    return 0


def _map(args) -> int:
    from ..maps import render_map

    refuse_existing(args.overwrite, args.out)
    result = render_map(args.classified, imagery=args.imagery, bands=args.bands, out=args.out, title=args.title,
                        opacity=args.opacity, size=tuple(args.size) if args.size else None,
                        max_size=args.max_size)
    print(f"map: {result.path} ({len(result.legend)} classes)")
    return 0


def _vectorize(args) -> int:
    from ..areas import AreaWarning
    from ..vectorize import vectorize

    refuse_existing(args.overwrite, args.out)
    with own_warnings(AreaWarning, warning_line("vectorize")):
        result = vectorize(args.raster, args.out, min_area=args.min_area, connectivity=args.connectivity)
    print(f"polygons: {result['path']} ({result['features']:,} features, minimum {result['min_area_pixels']} "
          "pixel(s))")
    return 0

