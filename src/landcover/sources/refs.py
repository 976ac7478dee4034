"""What an imagery band is before it is opened: a file (local path or GDAL virtual path) and a band of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BandRef:
    """One band of imagery: band ``band`` (1-based) of the raster at ``path``.

    ``path`` is what GDAL opens: a local path, or a virtual path such as ``/vsicurl/https://...``.
    ``name`` is how the band is known to the user (a STAC asset key or ``eo:bands`` common name, a file stem); it
    is recorded in a model package so classify reads the same bands in the same order.
    """

    path: str
    band: int = 1
    name: str | None = None
