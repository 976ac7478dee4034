"""The accuracy report as JSON, as a terminal table and as a confusion-matrix heatmap PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..raster import atomic_output

CONVENTION = ("confusion_matrix[i][j] = pixels of map (prediction) class i whose reference class is j: rows = map, "
              "columns = reference (as in Olofsson et al. 2014 and ArcGIS Compute Confusion Matrix)")


def clean(obj):
    """JSON-ready copy: numpy scalars/arrays to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, np.generic):
        return clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(doc: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(clean(doc), indent=2) + "\n")
    return path


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_table(doc: dict) -> str:
    """A readable report: the confusion matrix (rows = map, columns = reference), per-class metrics, summary."""
    values = [c["value"] for c in doc["classes"]]
    mat = np.asarray(doc["confusion_matrix"], dtype=np.int64)
    cell = max(6, len(f"{int(mat.sum()) if mat.size else 0:,}") + 1)
    head = "map \\ ref"
    lines = ["Confusion matrix (rows = map/prediction, columns = reference; pixels)",
             f"{head:>10}" + "".join(f"{v:>{cell}}" for v in values) + f"{'total':>{cell + 2}}"]
    for v, row in zip(values, mat, strict=True):
        lines.append(f"{v:>10}" + "".join(f"{n:>{cell},}" for n in row) + f"{int(row.sum()):>{cell + 2},}")
    lines.append(f"{'total':>10}" + "".join(f"{int(n):>{cell},}" for n in mat.sum(axis=0))
                 + f"{int(mat.sum()):>{cell + 2},}")
    lines.append("")
    width = max([5, *(len(c["name"]) for c in doc["per_class"])])
    lines.append(f"{'value':>5}  {'class':<{width}}  {'users':>6} {'prod.':>6} {'prec.':>6} {'recall':>6} {'F1':>6} "
                 f"{'IoU':>6}  {'map px':>10} {'ref px':>10}")
    for c in doc["per_class"]:
        lines.append(
            f"{c['value']:>5}  {c['name']:<{width}}  {_fmt(c['users_accuracy']):>6} {_fmt(c['producers_accuracy']):>6} "
            f"{_fmt(c['precision']):>6} {_fmt(c['recall']):>6} {_fmt(c['f1']):>6} {_fmt(c['iou']):>6}  "
            f"{c['map_pixels']:>10,} {c['reference_pixels']:>10,}")
    lines.append("")
    lines.append(f"overall accuracy {_fmt(doc['overall_accuracy'], 4)}   kappa {_fmt(doc['kappa'], 4)}   "
                 f"mean IoU {_fmt(doc['mean_iou'], 4)}   pixels compared {doc['pixels_compared']:,}")
    unmapped = doc.get("reference_pixels_without_prediction")
    if unmapped is not None:
        labelled = doc["pixels_compared"] + unmapped
        lines.append(f"reference pixels without prediction {unmapped:,} ({100 * unmapped / labelled:.1f} % of "
                     f"{labelled:,} labelled; map no data, left out of the matrix)")
    sample = doc.get("sample")
    if sample:
        est = sample["estimates"]
        unit = sample["area_unit"]
        lines.append("")
        lines.append(f"Sample-based estimates (Olofsson et al. 2014; {sample['strategy']} sample of {sample['size']} "
                     f"pixels, seed {sample['seed']}; ± = 95 % confidence interval)")
        lines.append(f"{'value':>5}  {'class':<{width}}  {'n':>5}  {'map area':>12}  {'estimated area':>24}  "
                     f"{'users':>12}  {'producers':>12}")
        for c in est["classes"]:
            area = f"{c['area']:,.2f} ± {c['area_ci95']:,.2f}"
            lines.append(f"{c['value']:>5}  {c['name']:<{width}}  {c['sample_units']:>5}  {c['map_area']:>12,.2f}  "
                         f"{area:>24}  {_pm(c['users_accuracy'], c['users_ci95']):>12}  "
                         f"{_pm(c['producers_accuracy'], c['producers_ci95']):>12}")
        lines.append(f"areas in {unit}; overall accuracy {_pm(est['overall_accuracy'], est['overall_ci95'])}")
    return "\n".join(lines)


def _pm(value, ci) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}±{_fmt(ci, 3)}"


def save_heatmap(doc: dict, path: str | os.PathLike) -> Path:
    """Confusion-matrix heatmap: colour = share of each reference class (column), text = pixel counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    mat = np.asarray(doc["confusion_matrix"], dtype=np.float64)
    k = mat.shape[0]
    col = mat.sum(axis=0, keepdims=True)
    share = np.divide(mat, col, out=np.zeros_like(mat), where=col > 0)
    labels = [f"{c['value']} {c['name']}" if c["name"] != str(c["value"]) else str(c["value"]) for c in doc["classes"]]
    side = min(16.0, 3.0 + 0.55 * k)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("reference")
    ax.set_ylabel("map (prediction)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(mat[i, j]):,}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the reference class")
    ax.set_title(f"overall accuracy {_fmt(doc['overall_accuracy'], 3)}, kappa {_fmt(doc['kappa'], 3)}, "
                 f"mean IoU {_fmt(doc['mean_iou'], 3)}", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
