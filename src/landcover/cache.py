"""The one folder landcover caches in: ``$LANDCOVER_CACHE``, else ``$XDG_CACHE_HOME/landcover`` or
``~/.cache/landcover``. Classify keeps exported models and backend decisions under ``classify/``, training keeps
downloaded weights under ``weights/``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder's root (not created here)."""
    root = os.environ.get("LANDCOVER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "landcover")
    return Path(root)
