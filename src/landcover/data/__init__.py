"""Training data: Classified Tiles folders (``landcover export`` or ArcGIS Pro) → normalized, split chips.

:mod:`.tiles` reads a folder and its metadata, :mod:`.loader` the chip datasets, :mod:`.transforms` the
augmentations, :mod:`.prepare` :func:`prepare_data`, :mod:`.show` the pictures.
"""

from .prepare import ClassifiedTilesData, prepare_data
from .transforms import Augment

__all__ = ["Augment", "ClassifiedTilesData", "prepare_data"]
