"""GDAL VRTs built on the fly: band stacks of files that differ, and mosaics of scene tiles.

A VRT is GDAL's own way to present several files as one raster without copying pixels: each output band lists its
sources, where each lies on the output grid (``DstRect``), how it is resampled onto it, its own nodata value and
its scale and offset. Everything downstream (export, classify, maps) then reads one dataset window by window.

The stack and the mosaic share one rule set, decided here once:

- **Working type.** The narrowest numpy type that holds every band (``numpy.result_type``); float32 at least when
  a band has GDAL scale/offset, since the scaled values are fractional.
- **Scale and offset.** Applied: pixels are read as physical values (``raw * scale + offset``), so a Sentinel-2 L2A
  band reads as reflectance whichever processing baseline's offset it carries. A model package records the
  working type it was trained on (``InputDataType``); classify applies the same rule, so a model never sees
  one convention in training and another at classify.
- **Nodata.** Each source's own nodata value is honoured (its pixels are left as the band's nodata). The output
  nodata is the value the sources share, else NaN (a float type, promoted to if needed): a value valid in
  one band can then never be taken for another band's nodata.
- **Validity.** In a stack, a pixel is nodata where any band is (the bands come from separate files: a missing
  band makes the pixel unusable); the VRT says so in its ``LANDCOVER_NODATA`` metadata item, which
  :class:`landcover.raster.GridReader` reads. In a mosaic GDAL's rule stands (nodata where every band is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
from rasterio.transform import Affine

#: metadata item of a stacked VRT: pixels are nodata where any band is (read by raster.GridReader)
NODATA_RULE_KEY = "LANDCOVER_NODATA"
ANY_BAND = "any_band"

GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class Source:
    """One band of one file, with what the VRT needs to place and read it."""

    path: str
    band: int
    width: int
    height: int
    transform: Affine
    dtype: str
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def scaled(self) -> bool:
        return (self.scale, self.offset) != (1.0, 0.0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f)


def working_type(sources: Sequence[Source]) -> str:
    """The numpy type wide enough for every source band (float32 at least when any is scaled)."""
    types = {s.dtype for s in sources}
    if any(s.scaled for s in sources):
        types.add("float32")
    dtype = np.result_type(*[np.dtype(t) for t in sorted(types)])
    if dtype.kind == "f" and dtype.itemsize > 4 and all(np.dtype(t).itemsize <= 2 or t == "float32" for t in types):
        dtype = np.dtype("float32")  # int16 + float32: float32 holds every int16 exactly
    return dtype.name


def common_nodata(sources: Sequence[Source], dtype: str, gaps: bool) -> tuple[str, float | None]:
    """``(dtype, nodata)`` of the output: the one value every source shares, else NaN on a float type.

    ``gaps``: whether the grid has pixels no source covers (a mosaic's holes), which need a nodata value too.
    """
    values = {s.nodata for s in sources}
    if len(values) == 1:
        (value,) = values
        if value is None:
            if not gaps:
                return dtype, None
            # Holes and no nodata anywhere: 0 for integer imagery (GDAL's fill, what gdalbuildvrt gives), NaN
            # for floats.
            return dtype, (float("nan") if np.dtype(dtype).kind == "f" else 0.0)
        if _representable(value, dtype):
            return dtype, value
    if np.dtype(dtype).kind != "f":
        dtype = "float32" if np.dtype(dtype).itemsize <= 2 else "float64"
    return dtype, float("nan")


def _representable(value: float, dtype: str) -> bool:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return True
    if math.isnan(value) or value != int(value):
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def build_vrt(width: int, height: int, transform: Affine, crs_wkt: str, bands: Sequence[Sequence[Source]],
              names: Sequence[str | None], *, any_band: bool, resampling: str = "bilinear",
              gaps: bool = False) -> tuple[str, str, float | None]:
    """The VRT XML of ``bands`` (each a list of sources, later sources painted over earlier ones) on the grid.

    Returns ``(xml, dtype, nodata)``.
    """
    flat = [s for band in bands for s in band]
    dtype, nodata = common_nodata(flat, working_type(flat), gaps)
    gdal_type = GDAL_TYPES[dtype]
    out = []
    for i, (sources, name) in enumerate(zip(bands, names, strict=True), start=1):
        nd = f"<NoDataValue>{_number(nodata)}</NoDataValue>" if nodata is not None else ""
        desc = f"<Description>{escape(name)}</Description>" if name else ""
        srcs = "".join(_source_xml(s, transform, resampling) for s in sources)
        out.append(f'<VRTRasterBand dataType="{gdal_type}" band="{i}">{nd}{desc}{srcs}</VRTRasterBand>')
    meta = f'<Metadata><MDI key="{NODATA_RULE_KEY}">{ANY_BAND}</MDI></Metadata>' if any_band else ""
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs_wkt)}</SRS>'
           f"<GeoTransform>{gt}</GeoTransform>{meta}{''.join(out)}</VRTDataset>")
    return xml, dtype, nodata


def _source_xml(s: Source, grid: Affine, resampling: str) -> str:
    # Where the source's pixels fall on the output grid (fractional where cell sizes differ: GDAL resamples).
    x0 = (s.transform.c - grid.c) / grid.a
    y0 = (s.transform.f - grid.f) / grid.e
    xs = s.width * s.transform.a / grid.a
    ys = s.height * s.transform.e / grid.e
    same = all(abs(v - round(v)) < 1e-9 for v in (x0, y0, xs, ys)) and (round(xs), round(ys)) == (s.width, s.height)
    nd = f"<NODATA>{_number(s.nodata)}</NODATA>" if s.nodata is not None else ""
    scale = f"<ScaleOffset>{s.offset!r}</ScaleOffset><ScaleRatio>{s.scale!r}</ScaleRatio>" if s.scaled else ""
    attr = "" if same else f' resampling="{resampling}"'
    return (f"<ComplexSource{attr}><SourceFilename relativeToVRT=\"0\">{escape(s.path)}</SourceFilename>"
            f"<SourceBand>{s.band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>'
            f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>{nd}{scale}</ComplexSource>')


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(float(value)) if value != int(value) else str(int(value))
