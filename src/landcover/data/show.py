"""Pictures of chips: an RGB view of any band set, labels overlaid in the class colours, a legend.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no GUI); Jupyter displays a returned
figure, scripts call ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..classes import ClassInfo
from .bands import check_rgb_bands

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .prepare import ClassifiedTilesData

#: inches per panel of show_batch when no imsize is given
DEFAULT_PANEL_INCHES = 3.0

_RGB_NAMES = (("red", "r", "b4"), ("green", "g", "b3"), ("blue", "b", "b2"))


def rgb_band_indices(band_names: list[str]) -> list[int]:
    """Bands to show as R, G, B: named red/green/blue bands, else the first three, else the first band as grey."""
    lower = [n.lower() for n in band_names]
    found = [next((i for i, n in enumerate(lower) if n in names), None) for names in _RGB_NAMES]
    if all(i is not None for i in found):
        return found  # type: ignore[return-value]
    if len(band_names) >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def to_rgb(image: np.ndarray, bands: list[int]) -> np.ndarray:
    """An ``(h, w, 3)`` float image in [0, 1] from ``(C, h, w)`` pixels: a 2-98 % stretch per band."""
    rgb = np.stack([image[b] for b in bands], axis=-1).astype(np.float32)
    lo = np.percentile(rgb, 2, axis=(0, 1))
    hi = np.percentile(rgb, 98, axis=(0, 1))
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def label_rgba(label: np.ndarray, classes: list[ClassInfo], alpha: float = 1.0) -> np.ndarray:
    """An ``(h, w, 4)`` overlay of class indices (0 = no data, transparent) in the class colours."""
    palette = np.zeros((len(classes) + 1, 4), np.float32)
    for i, c in enumerate(classes):
        palette[i + 1] = (*(v / 255 for v in c.color), alpha)
    return palette[np.clip(label, 0, len(classes))]


def add_legend(fig: Figure, classes: list[ClassInfo], present: set[int] | None = None) -> None:
    """A legend of the classes (only those whose index is in ``present``, when given) below the panels."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.array(c.color) / 255, edgecolor="black", label=f"{c.value} {c.name}")
               for i, c in enumerate(classes) if present is None or i + 1 in present]
    if handles:
        # "outside": constrained layout makes room for the legend below the panels instead of drawing over them
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9,
                   frameon=False)


def new_figure(rows: int, cols: int, size: float = 3.0) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * size, rows * size + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def show_batch(data: ClassifiedTilesData, rows: int = 3, alpha: float = 0.7, ncols: int = 3, *,
               rgb_bands: Sequence[int] | None = None, data_loader: str = "training",
               imsize: float | None = None) -> Figure:
    """Random chips with the labels overlaid and a legend (see :meth:`ClassifiedTilesData.show_batch`).

    ``data_loader="training"`` shows training chips as the model sees them (cropped, augmented);
    ``"validation"`` whole validation chips, unaugmented. ``rgb_bands`` indexes ``data.band_names`` (the
    extracted bands); default ``data.rgb_bands``. ``imsize``: inches per panel (default 3).
    """
    import torch

    from ..errors import LandcoverError

    rows, ncols = check_count(rows, "rows", "show_batch"), check_count(ncols, "ncols", "show_batch")
    alpha = check_opacity(alpha)
    loader = str(data_loader).strip().lower() if isinstance(data_loader, str) else None
    if loader not in ("training", "validation"):
        raise LandcoverError(f"data_loader={data_loader!r}: give 'training' or 'validation'")
    size = DEFAULT_PANEL_INCHES
    if imsize is not None:
        ok = isinstance(imsize, (int, float, np.integer, np.floating)) and not isinstance(imsize, bool)
        if not ok or not math.isfinite(float(imsize)) or not 0 < float(imsize) <= 50:
            raise LandcoverError(f"imsize={imsize!r}: give the size of a panel in inches, e.g. 5")
        size = float(imsize)
    bands = list(data.rgb_bands) if rgb_bands is None else check_rgb_bands(rgb_bands, data.band_names)

    ds = data.train_ds if loader == "training" else data.valid_ds
    ds = getattr(ds, "chips", ds)  # random windows of the training area: show the chips they are drawn from
    n = min(rows * ncols, len(ds))
    rows = max(1, -(-n // ncols))
    fig, axes = new_figure(rows, ncols, size)
    mean = np.asarray(data.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(data.std, np.float32).reshape(-1, 1, 1)
    picks = torch.randperm(len(ds))[:n].tolist()
    present: set[int] = set()
    for ax, i in zip(axes.ravel(), picks, strict=False):
        image, label = ds[i]
        raw = image.numpy() * std + mean
        lab = label.numpy()
        present |= set(np.unique(lab).tolist())
        ax.imshow(to_rgb(raw, bands))
        ax.imshow(label_rgba(lab, data.classes, alpha))
    add_legend(fig, data.classes, present)
    return fig


def check_count(value: object, name: str, call: str) -> int:
    """A number of rows or panels: a whole number of at least 1, or one line naming ``call(name=value)``."""
    from ..errors import LandcoverError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise LandcoverError(f"{call}({name}={value!r}): give a whole number of at least 1")
    return int(value)


def check_opacity(value: object) -> float:
    """The opacity of labels drawn over imagery: a number from 0 (hidden) to 1 (opaque), or one line."""
    from ..errors import LandcoverError

    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= float(value) <= 1:
        raise LandcoverError(f"alpha={value!r}: give an opacity from 0 to 1 (0: hidden, 1: opaque)")
    return float(value)
