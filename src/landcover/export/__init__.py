"""Training-data export: imagery + labels → chips in ArcGIS's Classified Tiles layout.

:func:`export_training_data` is the entry point (``landcover export`` on the command line). The modules:
``labels`` (raster and vector label sources), ``chips`` (writing chip pairs), ``stats`` (class and band
statistics) and ``metadata`` (map.txt, stats.txt, esri_accumulated_stats.json, the export .emd).
"""

from .core import ExportSummary, export_training_data

__all__ = ["ExportSummary", "export_training_data"]
