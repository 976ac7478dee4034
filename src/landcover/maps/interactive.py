"""A self-contained interactive HTML map: one file, no network, everything inline.

The page embeds the imagery as a data-URI image, the classes as a zlib-compressed grid of class indices
(decoded in the browser with ``DecompressionStream``) that both paints the class layer and answers "which class
is under the cursor", and the compact vanilla canvas viewer ``viewer.js``/``viewer.css`` shipped with this
package (pan, zoom, layer toggles, opacity slider, legend, scale bar). No third-party JavaScript is used.
"""

from __future__ import annotations

import base64
import html
import io
import json
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from ..raster import atomic_output
from .layers import ClassLayer, ImageryLayer
from .static import metres_per_unit, pixel_aspect


def _image_data_uri(rgba: np.ndarray) -> str:
    """PNG when some pixels are transparent (no data), else a smaller JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    if (rgba[..., 3] < 255).any():
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        Image.fromarray(rgba[..., :3], "RGB").save(buf, format="JPEG", quality=88)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_json(doc: dict) -> str:
    # "</" must not appear inside a <script> element.
    return json.dumps(doc, separators=(",", ":")).replace("</", "<\\/")


def render_html(path: Path, classes: ClassLayer, imagery: ImageryLayer | None, title: str,
                opacity: float) -> dict:
    """Write the page; returns what it holds (legend names, grid size, byte size)."""
    grid = classes.grid
    doc = _page_data(classes, imagery, title, opacity)
    page = _page_html(doc, classes, imagery is not None, title, opacity)
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"legend": [c.name for c in classes.classes], "size": (grid.width, grid.height),
            "bytes": len(page.encode("utf-8"))}


def _page_data(classes: ClassLayer, imagery: ImageryLayer | None, title: str, opacity: float) -> dict:
    """What the viewer reads from the page's JSON: the class grid, its georeferencing, the legend and the imagery."""
    grid = classes.grid
    t = grid.transform
    return {
        "title": title,
        "grid": {"width": grid.width, "height": grid.height,
                 "data": base64.b64encode(zlib.compress(np.ascontiguousarray(classes.index).tobytes(), 9))
                 .decode("ascii")},
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "crs": grid.crs.to_string() if grid.crs else "",
        "metres_per_unit": metres_per_unit(grid),
        "pixel_aspect": pixel_aspect(grid),
        "classes": [{"value": c.value, "name": c.name, "color": list(c.color)} for c in classes.classes],
        "imagery": _image_data_uri(imagery.rgba8()) if imagery is not None else None,
        "opacity": opacity,
    }


def _page_html(doc: dict, classes: ClassLayer, has_imagery: bool, title: str, opacity: float) -> str:
    """The whole page: panel, legend and canvas, with the viewer's CSS, JavaScript and ``doc`` inline."""
    legend = "\n".join(
        f'<li><span class="lc-swatch" style="background:rgb({c.color[0]},{c.color[1]},{c.color[2]})"></span>'
        f"<span class=\"lc-name\">{html.escape(c.name)}</span></li>"
        for c in classes.classes
    )
    imagery_toggle = ('<label><input type="checkbox" id="lc-toggle-imagery" checked> Imagery</label>'
                      if has_imagery else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{_asset("viewer.css")}
</style>
</head>
<body>
<header id="lc-header"><h1>{html.escape(title)}</h1></header>
<main id="lc-main">
<div id="lc-map"><canvas id="lc-canvas" tabindex="0" aria-label="map"></canvas>
<div id="lc-scale"><div id="lc-scale-bar"></div><span id="lc-scale-label"></span></div></div>
<aside id="lc-panel">
<section><h2>Layers</h2>
{imagery_toggle}
<label><input type="checkbox" id="lc-toggle-classes" checked> Classes</label>
<label for="lc-opacity">Class opacity <output id="lc-opacity-value">{round(opacity * 100)}%</output></label>
<input type="range" id="lc-opacity" min="0" max="100" step="1" value="{round(opacity * 100)}">
<div class="lc-buttons"><button type="button" id="lc-zoom-in" title="zoom in">+</button>
<button type="button" id="lc-zoom-out" title="zoom out">&minus;</button>
<button type="button" id="lc-fit" title="whole map">fit</button></div>
</section>
<section><h2>Legend</h2><ul id="lc-legend">
{legend}
</ul></section>
<section><h2>Under the cursor</h2><div id="lc-readout">move the mouse over the map</div>
<div id="lc-coords"></div></section>
</aside>
</main>
<script id="lc-data" type="application/json">{_script_json(doc)}</script>
<script>
{_asset("viewer.js")}
</script>
</body>
</html>
"""
