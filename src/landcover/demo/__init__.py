"""The offline demo: an embedded sample scene, the whole workflow run on it, and one HTML report.

:func:`make_scene` writes a procedural 1 m, 4-band orthophoto with its land-cover labels on another grid, so
the demo needs no download (:func:`write_preview` draws a quick-look of it); :class:`Report` /
:func:`write_report` collect every step's figures, metrics and outputs into one offline HTML page.
"""

from __future__ import annotations

from .report import Report, write_report
from .scene import Scene, make_scene, render_scene, write_preview

__all__ = ["Report", "Scene", "make_scene", "render_scene", "write_preview", "write_report"]
