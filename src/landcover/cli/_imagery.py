"""The imagery arguments every command that reads imagery shares: ``--imagery``, ``--mosaic``, ``--bands``.

Two spellings keep the two cases apart without guessing: ``--imagery`` takes ONE raster (a file, a VRT, a URL or
a STAC Item) or band files to stack in order; ``--mosaic`` takes scene tiles (files, a folder or a glob) that
together cover an area.
"""

from __future__ import annotations

import argparse

IMAGERY_EPILOG = """
imagery:
  --imagery scene.tif                        one raster (or .vrt, https://, s3://, gs:// URL)
  --imagery B4.tif B3.tif B2.tif B8.tif      band files stacked in order (types, nodata, resolution may differ)
  --mosaic tiles/   |  --mosaic 'tiles/*.tif'  |  --mosaic a.tif b.tif    scene tiles mosaicked
  --imagery item.json --bands red green blue nir   a STAC Item's assets by key or eo:bands common name
"""


def add_imagery_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--imagery", nargs="+", metavar="IMG",
                       help="one raster, VRT, URL or STAC Item; or band files stacked in this order (e.g. rgb.tif "
                       "nir.tif, or B4.tif B3.tif B2.tif: they may differ in type, nodata and resolution)")
    where.add_argument("--mosaic", nargs="+", metavar="TILE",
                       help="scene tiles that together cover the area: files, a folder or a glob ('tiles/*.tif')")
    p.add_argument("--bands", nargs="+", metavar="NAME",
                   help="with a STAC Item: its assets by key or eo:bands common name, in order (e.g. red green "
                   "blue nir)")


def imagery_spec(args: argparse.Namespace):
    """What ``--imagery``/``--mosaic`` name, in the form the API takes."""
    if args.mosaic:
        from ..sources import mosaic

        return mosaic(args.mosaic)
    return args.imagery if len(args.imagery) > 1 else args.imagery[0]
