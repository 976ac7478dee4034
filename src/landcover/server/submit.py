"""A job request, checked before anything is queued: its fields, its paths, its imagery against its model.

A request names its imagery in one of three ways: ``imagery`` (one raster, or band files to stack, as paths
under the data root or URLs), ``mosaic`` (scene tiles or folders of them) or ``stac`` (a STAC Item's path or
URL, with ``bands``). Every local file the imagery will read, a STAC Item's assets and a folder's rasters
included, must lie under a data root. The imagery is then opened and checked as ``classify_pixels`` checks it
(bands, pixel type, extent), so a bad request is a 4xx answer and leaves nothing behind.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..errors import LandcoverError
from .security import ApiError, DataRoots, check_name, is_url

#: most files one request may name (band files or mosaic tiles given one by one)
MAX_ITEMS = 256


class JobRequest(BaseModel):
    """The body of ``POST /api/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64)
    imagery: str | list[str] | None = Field(None, max_length=MAX_ITEMS)
    mosaic: list[str] | None = Field(None, max_length=MAX_ITEMS)
    stac: str | None = Field(None, max_length=2048)
    bands: list[str] | None = Field(None, max_length=64)
    extent: tuple[float, float, float, float] | None = None
    extent_crs: str | None = Field(None, max_length=4096)
    cell_size: float | None = Field(None, gt=0)
    padding: int | None = Field(None, ge=0, le=2048)
    tile_size: int | None = Field(None, ge=16, le=4096)
    batch_size: int = Field(8, ge=1, le=256)
    tta: bool = False
    probabilities: bool = False
    predict_background: bool = True
    backend: str = Field("auto", max_length=32)
    block_size: int | None = Field(None, ge=64, le=65536)
    owner: str | None = Field(None, max_length=64)


def imagery_spec(imagery: dict):
    """What ``classify_pixels`` takes for a validated request's imagery (``{"kind", "items", "bands"}``)."""
    from ..sources import mosaic, stac_item

    items = imagery["items"]
    if imagery["kind"] == "mosaic":
        return mosaic(items)
    if imagery["kind"] == "stac":
        return stac_item(items[0], imagery.get("bands"))
    return items[0] if len(items) == 1 else list(items)


def _local_or_url(value: str, roots: DataRoots, what: str) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise ApiError(400, f"{what}: give a path or URL of at most 4096 characters")
    return value if is_url(value) else roots.resolve(value, what)


def _imagery(req: JobRequest, roots: DataRoots) -> dict:
    """The request's imagery with its paths resolved under the data root."""
    given = [k for k in ("imagery", "mosaic", "stac") if getattr(req, k) is not None]
    if len(given) != 1:
        raise ApiError(422, "give the imagery as exactly one of 'imagery' (a raster or band files), 'mosaic' "
                            "(scene tiles) or 'stac' (a STAC Item)")
    if req.bands and given[0] != "stac":
        raise ApiError(422, "'bands' picks the bands of a STAC Item: give 'stac' with it")
    kind = given[0]
    value = getattr(req, kind)
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(422, f"{kind}: give at least one raster")
    resolved = [_local_or_url(v, roots, kind) for v in items]
    if kind == "mosaic":
        from ..sources import mosaic

        try:  # folders become their rasters: each must be under the root as well (a link inside could lead out)
            resolved = list(mosaic(resolved).tiles)
        except LandcoverError as exc:
            raise ApiError(422, str(exc)) from None
    return {"kind": {"imagery": "paths"}.get(kind, kind), "items": resolved,
            "bands": list(req.bands) if req.bands else None}


def validate(req: JobRequest, roots: DataRoots, pkg) -> tuple[dict, dict]:
    """The request as the job will run it, and the resolved imagery's description (for the imagery tiles).

    ``pkg`` is the installed model's loaded package. Raises :class:`ApiError` naming the problem."""
    import rasterio

    from ..classify import check_imagery
    from ..classify.engine import BACKENDS
    from ..raster import GDAL_ENV, Grid, target_grid
    from ..sources import resolve

    if req.owner is not None:
        check_name(req.owner, "owner")
    if req.backend not in BACKENDS:
        raise ApiError(422, f"backend {req.backend!r}: unknown (choose from {', '.join(BACKENDS)})")
    tile = req.tile_size or int(pkg.tile_size)
    if req.padding is not None and 2 * req.padding >= tile:
        raise ApiError(422, f"padding {req.padding}: must be less than half the tile size ({tile})")
    imagery = _imagery(req, roots)
    try:
        with rasterio.Env(**GDAL_ENV):
            bands = imagery["bands"] or (list(pkg.band_names) if imagery["kind"] == "stac" and pkg.band_names
                                         else None)
            source = resolve(imagery_spec({**imagery, "bands": bands}), "imagery", bands)
            outside = [p for p in source.paths if not is_url(p) and not p.startswith("/vsi")
                       and not roots.inside(p)]
            if outside:
                raise ApiError(403, f"{imagery['items'][0]}: reads {outside[0]}, which is outside the service's "
                                    "data root")
            with source.open() as ds:
                # what GDAL reads in the end: a VRT's sources, a mosaic's tiles (a .vrt could point anywhere)
                outside = [f for f in ds.files if not f.startswith("/vsi") and not roots.inside(f)]
                if outside:
                    raise ApiError(403, f"{imagery['items'][0]}: reads {outside[0]}, which is outside the service's "
                                        "data root")
                check_imagery(ds, pkg, source.name)
                target_grid(Grid.of(ds), req.extent, req.extent_crs, req.cell_size, name=source.name)
    except LandcoverError as exc:
        raise ApiError(422, str(exc)) from None
    options = {"padding": req.padding, "batch_size": req.batch_size, "predict_background": req.predict_background,
               "test_time_augmentation": req.tta, "tile_size": req.tile_size,
               "extent": list(req.extent) if req.extent else None, "extent_crs": req.extent_crs,
               "cell_size": req.cell_size, "backend": req.backend, "block_size": req.block_size}
    if imagery["kind"] == "stac" and bands:
        options["bands"] = bands
    request = {"imagery": imagery, "options": options, "probabilities": req.probabilities}
    return request, source.describe()
