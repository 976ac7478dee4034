"""Training figures: loss curves, the learning-rate finder curve, and image | truth | prediction panels."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..classes import ClassInfo
from ..data.show import add_legend, label_rgba, new_figure, rgb_band_indices, to_rgb


def loss_figure(train: list[tuple[int, float]], valid: list[tuple[int, float]]) -> Figure:
    """Training loss per batch (with a running mean) and validation loss per epoch, against batches seen."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    if train:
        steps, losses = np.array(train, dtype=float).T
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=1)
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="tab:blue", label="train")
    if valid:
        steps, losses = np.array(valid, dtype=float).T
        ax.plot(steps, losses, "o-", color="tab:orange", label="valid")
    ax.set_xlabel("batches processed")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    return fig


def lr_figure(rates: list[float], losses: list[float], suggestion: float) -> Figure:
    """Smoothed loss against learning rate (log scale) with the suggested rate marked in red."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(rates, losses)
    ax.set_xscale("log")
    i = int(np.argmin(np.abs(np.log(np.asarray(rates)) - np.log(suggestion))))
    ax.plot([rates[i]], [losses[i]], "o", color="red", ms=8, label=f"suggested {suggestion:.2e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def results_figure(images: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray],
                   classes: list[ClassInfo], band_names: list[str], alpha: float = 1.0,
                   rgb_bands: list[int] | None = None) -> Figure:
    """One row per chip: raw image | ground truth | prediction (class indices, 0 transparent).

    The truth and the prediction are drawn over the image with opacity ``alpha``; ``rgb_bands`` (indices into
    ``band_names``) are shown as R, G, B (default: picked from the names).
    """
    rows = len(images)
    fig, axes = new_figure(rows, 3, size=3.0)
    bands = rgb_band_indices(band_names) if rgb_bands is None else list(rgb_bands)
    for r, (image, truth, pred) in enumerate(zip(images, truths, preds, strict=True)):
        rgb = to_rgb(image, bands)
        for c, (title, overlay) in enumerate((("image", None), ("ground truth", truth), ("prediction", pred))):
            ax = axes[r, c]
            ax.imshow(rgb)
            if overlay is not None:
                ax.imshow(label_rgba(overlay, classes, alpha))
            if r == 0:
                ax.set_title(title)
    present = set(np.unique(np.concatenate([t.ravel() for t in truths + preds])).tolist()) if rows else set()
    add_legend(fig, classes, present)
    return fig
