"""Land-cover classes: values, names and colours, and how they travel with rasters.

A class is identified by its *value* (the pixel value in label and classified rasters, 1..255; 0 is no data).
Colours are RGB triples. This module also reads and writes the class table that GIS software shows for a
classified GeoTIFF: the GDAL colour table, a raster attribute table in the ``.aux.xml`` sidecar
(``Value, Class, Red, Green, Blue`` — the fields ArcGIS writes for Classify Pixels output) and a QGIS ``.qml``
paletted style.
"""

from __future__ import annotations

import colorsys
import json
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .errors import LandcoverError


@dataclass(frozen=True)
class ClassInfo:
    """One land-cover class."""

    value: int
    name: str
    color: tuple[int, int, int]

    def to_esri(self) -> dict:
        """The class as an Esri ``.emd`` ``Classes`` entry."""
        return {"Value": int(self.value), "Name": self.name, "Color": [int(c) for c in self.color]}


#: Chesapeake Conservancy 1 m land-cover classes with the colours of Esri's land-cover sample.
CHESAPEAKE_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(1, "Water", (0, 197, 255)),
    ClassInfo(2, "Emergent Wetlands", (0, 168, 132)),
    ClassInfo(3, "Tree Canopy", (38, 115, 0)),
    ClassInfo(4, "Scrub/Shrub", (76, 230, 0)),
    ClassInfo(5, "Low Vegetation", (163, 255, 115)),
    ClassInfo(6, "Barren", (255, 170, 0)),
    ClassInfo(7, "Impervious Structures", (255, 0, 0)),
    ClassInfo(8, "Other Impervious", (156, 156, 156)),
    ClassInfo(9, "Impervious Roads", (0, 0, 0)),
    ClassInfo(10, "Tree Canopy over Impervious Structures", (115, 115, 0)),
    ClassInfo(11, "Tree Canopy over Other Impervious", (230, 230, 0)),
    ClassInfo(12, "Tree Canopy over Impervious Roads", (255, 255, 115)),
    ClassInfo(13, "Aberdeen Proving Ground", (197, 0, 255)),
)


def generated_color(value: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour for a class value (golden-ratio hue walk)."""
    hue = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.9)
    return (round(r * 255), round(g * 255), round(b * 255))


def generated_classes(values) -> list[ClassInfo]:
    """Classes named after their values, with generated colours."""
    return [ClassInfo(int(v), str(int(v)), generated_color(int(v))) for v in sorted(set(int(v) for v in values))]


def _parse_color(color, where: str) -> tuple[int, int, int]:
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) != 6:
            raise LandcoverError(f"{where}: colour {color!r} is not #RRGGBB or [r, g, b]")
        return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    if isinstance(color, (list, tuple)) and len(color) >= 3:
        rgb = tuple(int(c) for c in color[:3])
        if all(0 <= c <= 255 for c in rgb):
            return rgb  # type: ignore[return-value]
    raise LandcoverError(f"{where}: colour {color!r} is not #RRGGBB or [r, g, b] with 0..255")


def load_classes_json(path: str | os.PathLike) -> list[ClassInfo]:
    """Read a classes file.

    Accepted forms: ``{"1": {"name": "Water", "color": "#00c5ff"}, ...}``, ``{"1": "Water", ...}`` or a list of
    ``{"value": 1, "name": "Water", "color": [0, 197, 255]}`` (Esri ``Value/Name/Color`` keys work too).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LandcoverError(f"{path}: classes file not found") from None
    except (OSError, ValueError) as exc:
        raise LandcoverError(f"{path}: not a readable JSON classes file ({exc})") from None
    items = []
    if isinstance(doc, dict):
        for key, spec in doc.items():
            items.append((key, spec if isinstance(spec, dict) else {"name": spec}))
    elif isinstance(doc, list):
        for spec in doc:
            if not isinstance(spec, dict):
                raise LandcoverError(f"{path}: each class must be an object with value, name and colour")
            key = spec.get("value", spec.get("Value", spec.get("ClassValue")))
            items.append((key, spec))
    else:
        raise LandcoverError(f"{path}: expected an object or a list of classes")
    classes = []
    for key, spec in items:
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise LandcoverError(f"{path}: class value {key!r} is not an integer") from None
        if not 1 <= value <= 255:
            raise LandcoverError(f"{path}: class value {value} is outside 1..255 (0 is reserved for no data)")
        name = str(spec.get("name", spec.get("Name", spec.get("ClassName", value))))
        color = spec.get("color", spec.get("Color"))
        rgb = generated_color(value) if color is None or list(color)[:1] == [-1] else _parse_color(color, str(path))
        classes.append(ClassInfo(value, name, rgb))
    return sorted(classes, key=lambda c: c.value)


def classes_from_esri(entries: list[dict]) -> list[ClassInfo]:
    """Classes from an Esri ``Classes`` list (``Value/Name/Color`` or ``ClassValue/ClassName``)."""
    classes = []
    for e in entries:
        value = int(e.get("Value", e.get("ClassValue")))
        if value == 0:
            continue
        name = str(e.get("Name", e.get("ClassName", value)))
        color = e.get("Color")
        rgb = generated_color(value) if not color or int(color[0]) < 0 else tuple(int(c) for c in color[:3])
        classes.append(ClassInfo(value, name, rgb))  # type: ignore[arg-type]
    return sorted(classes, key=lambda c: c.value)


# --- class tables on rasters -------------------------------------------------------------------------------

def colormap_of(classes: list[ClassInfo], nodata: int | None = 0) -> dict[int, tuple[int, int, int, int]]:
    """A rasterio colour map (value -> RGBA) for the classes; nodata is transparent."""
    cmap = {c.value: (*c.color, 255) for c in classes}
    if nodata is not None:
        cmap.setdefault(int(nodata), (0, 0, 0, 0))
    return cmap


def write_class_table(path: str | os.PathLike, classes: list[ClassInfo], nodata: int | None = 0,
                      in_file: bool = True) -> None:
    """Attach the class table to a single-band classified GeoTIFF, for GDAL, QGIS and ArcGIS.

    Writes the colour table and a ``LANDCOVER_CLASSES`` band tag into the file (unless ``in_file`` is False,
    e.g. for a COG whose colour table was set before the copy — updating a COG in place breaks its layout),
    the class names as a GDAL raster attribute table in the ``<file>.aux.xml`` sidecar (GDAL merges PAM
    sidecars on open), and a QGIS paletted style ``<stem>.qml``. Call it on a closed file.
    """
    import rasterio

    path = Path(path)
    if in_file:
        with rasterio.open(path, "r+") as ds:
            ds.write_colormap(1, colormap_of(classes, nodata))
            ds.update_tags(1, LANDCOVER_CLASSES=class_tag(classes))
    _write_rat_sidecar(path, classes)
    _write_qml(path.with_suffix(".qml"), classes)


def class_tag(classes: list[ClassInfo]) -> str:
    """The ``LANDCOVER_CLASSES`` band-tag value (Esri ``Classes`` JSON) that :func:`read_class_table` reads."""
    return json.dumps([c.to_esri() for c in classes])


def _write_rat_sidecar(path: Path, classes: list[ClassInfo]) -> None:
    aux = Path(str(path) + ".aux.xml")
    root = ET.parse(aux).getroot() if aux.exists() else ET.Element("PAMDataset")
    band = root.find("PAMRasterBand[@band='1']")
    if band is None:
        band = ET.SubElement(root, "PAMRasterBand", band="1")
    for old in band.findall("GDALRasterAttributeTable"):
        band.remove(old)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # Usage codes from GDAL's GDALRATFieldUsage: 5 = MinMax (value), 2 = Name, 6/7/8 = Red/Green/Blue.
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    for i, (name, ftype, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(ftype)
        ET.SubElement(fd, "Usage").text = str(usage)
    for row_index, c in enumerate(classes):
        row = ET.SubElement(rat, "Row", index=str(row_index))
        for text in (c.value, c.name, *c.color):
            ET.SubElement(row, "F").text = str(text)
    ET.indent(root)
    aux.write_text(ET.tostring(root, encoding="unicode") + "\n")


def _write_qml(path: Path, classes: list[ClassInfo]) -> None:
    entries = "\n".join(
        f'        <paletteEntry value="{c.value}" label="{_xml_escape(c.name)}" '
        f'color="#{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}" alpha="255"/>'
        for c in classes
    )
    path.write_text(
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28" styleCategories="AllStyleCategories">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def read_class_table(path: str | os.PathLike) -> list[ClassInfo]:
    """The classes of a classified raster: its attribute table, else our tag, else its colour table.

    Returns an empty list when the raster carries none of them.
    """
    import rasterio

    path = Path(path)
    aux = Path(str(path) + ".aux.xml")
    if aux.exists():
        rat = ET.parse(aux).getroot().find("PAMRasterBand[@band='1']/GDALRasterAttributeTable")
        if rat is not None:
            names = [fd.findtext("Name") for fd in rat.findall("FieldDefn")]
            if {"Value", "Class"} <= set(names):
                out = []
                for row in rat.findall("Row"):
                    f = dict(zip(names, (e.text or "" for e in row.findall("F")), strict=False))
                    rgb = tuple(int(f.get(k, 0)) for k in ("Red", "Green", "Blue"))
                    out.append(ClassInfo(int(f["Value"]), f["Class"], rgb))  # type: ignore[arg-type]
                if out:
                    return sorted(out, key=lambda c: c.value)
    with warnings.catch_warnings():
        # Georeferencing does not matter for the class table; callers that need it say so in their own words.
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ds = rasterio.open(path)
    with ds:
        tag = ds.tags(1).get("LANDCOVER_CLASSES")
        if tag:
            return classes_from_esri(json.loads(tag))
        try:
            cmap = ds.colormap(1)
        except ValueError:
            return []
    # A colour table alone: entries that are not the all-zero default are classes.
    return [
        ClassInfo(v, str(v), tuple(rgba[:3]))  # type: ignore[arg-type]
        for v, rgba in sorted(cmap.items())
        if v != 0 and tuple(rgba) != (0, 0, 0, 255) and tuple(rgba) != (0, 0, 0, 0)
    ]
