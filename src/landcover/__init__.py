"""landcover: from raw imagery to a land-cover map with deep learning, no ArcGIS licence needed.

The workflow follows ``arcgis.learn``'s verbs:

1. :func:`export_training_data` — imagery + labels → Classified Tiles chips;
2. :func:`prepare_data` → :class:`UnetClassifier` → ``lr_find`` / ``fit`` / ``save``;
3. :func:`classify_pixels` → a georeferenced classified raster; :func:`evaluate`, :func:`class_areas`,
   :func:`render_map`, :func:`vectorize`.

Heavy modules (torch) are imported on first use, so ``import landcover`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .classes import ClassInfo  # noqa: E402
from .errors import LandcoverError  # noqa: E402

# public name -> module that defines it (imported lazily)
_LAZY = {
    "export_training_data": "export",
    "prepare_data": "data",
    "UnetClassifier": "train",
    "classify_pixels": "classify",
    "class_areas": "areas",
    "render_map": "maps",
    "make_scene": "demo.scene",
    "mosaic": "sources",
    "stac_item": "sources",
}

# `evaluate` and `vectorize` share their module's name. Python binds a submodule on its package when it is first
# imported, which would shadow a lazily served function; importing them here (numpy + rasterio, no torch) makes
# the package attribute the function for good.
from .evaluate import evaluate  # noqa: E402
from .vectorize import vectorize  # noqa: E402

__all__ = ["ClassInfo", "LandcoverError", "__version__", "evaluate", "vectorize", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'landcover' has no attribute {name!r}")
