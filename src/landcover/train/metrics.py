"""Validation metrics from a confusion matrix: overall accuracy, per-class precision/recall/F1/IoU, mIoU, kappa.

The confusion matrix is accumulated with torchmetrics (``MulticlassConfusionMatrix(ignore_index=0)``: pixels
labelled 0 = no data are left out; a labelled pixel predicted as 0 counts as an error). Rows are the truth,
columns the prediction, both as model class indices.
"""

from __future__ import annotations

from html import escape

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from ..classes import ClassInfo


def confusion_metric(num_classes: int, sync: bool = True) -> MulticlassConfusionMatrix:
    """A torchmetrics confusion matrix over class indices that ignores index 0 (no data) in the truth.

    ``sync``: sum the matrices of all processes on ``compute()`` (validation during a DDP fit); False for a
    pass that one process makes over the whole validation set.
    """
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=0, validate_args=False,
                                     sync_on_compute=sync)


def metrics_from_confusion(cm: np.ndarray | torch.Tensor, classes: list[ClassInfo],
                           ignore_indices: tuple[int, ...] = ()) -> dict:
    """All metrics as plain Python values (JSON-ready).

    ``miou`` is the mean IoU over the classes that are not ignored and appear in the truth or the prediction.
    ``kappa`` is Cohen's kappa over all labelled pixels.
    """
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    truth, pred = cm.sum(axis=1), cm.sum(axis=0)
    per_class, ious = [], []
    for i, c in enumerate(classes, start=1):
        precision = tp[i] / pred[i] if pred[i] else 0.0
        recall = tp[i] / truth[i] if truth[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        union = truth[i] + pred[i] - tp[i]
        iou = tp[i] / union if union else 0.0
        if union and i not in ignore_indices:
            ious.append(iou)
        per_class.append({"value": c.value, "name": c.name, "precision": float(precision),
                          "recall": float(recall), "f1": float(f1), "iou": float(iou), "support": int(truth[i])})
    accuracy = float(tp.sum() / n) if n else 0.0
    expected = float((truth * pred).sum() / n**2) if n else 0.0
    kappa = (accuracy - expected) / (1 - expected) if n and expected < 1 else 0.0
    return {
        "accuracy": accuracy,
        "miou": float(np.mean(ious)) if ious else 0.0,
        "kappa": float(kappa),
        "pixels": int(n),
        "per_class": per_class,
        "labels": ["NoData", *(c.name for c in classes)],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the per-class metrics with the overall figures below it."""
    width = max([5, *(len(f"{p['value']} {p['name']}") for p in metrics["per_class"])])
    lines = [f"{'class':<{width}}  precision  recall     f1    IoU   pixels"]
    for p in metrics["per_class"]:
        lines.append(f"{str(p['value']) + ' ' + p['name']:<{width}}  {p['precision']:9.4f}  {p['recall']:6.4f}  "
                     f"{p['f1']:6.4f} {p['iou']:6.4f} {p['support']:8d}")
    lines.append(f"overall accuracy {metrics['accuracy']:.4f}   mIoU {metrics['miou']:.4f}   "
                 f"kappa {metrics['kappa']:.4f}   ({metrics['pixels']} labelled validation pixels)")
    return "\n".join(lines)


#: the rows of :class:`ClassMetrics` tables, in order
METRIC_ROWS = ("precision", "recall", "f1", "iou", "support")


class ClassMetrics(dict):
    """``{class name: {precision, recall, f1, iou, support}}`` that displays as a table.

    A plain ``dict`` for code (JSON-ready, indexable by class name); in Jupyter an HTML table with one row per
    metric and one column per class, like the DataFrame arcgis.learn's ``per_class_metrics`` returns; ``str()``
    gives the same table as text.
    """

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(str(name))}</th>" for name in self)
        rows = "".join(f"<tr><th>{row}</th>" + "".join(f"<td>{_cell(values[row])}</td>" for values in self.values())
                       + "</tr>" for row in METRIC_ROWS)
        return (f'<table class="landcover-metrics"><thead><tr><th></th>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table>")

    def __str__(self) -> str:
        names = [str(name) for name in self]
        width = [max(10, len(n)) for n in names]
        lines = [" " * 9 + "".join(f"  {n:>{w}}" for n, w in zip(names, width, strict=True))]
        for row in METRIC_ROWS:
            lines.append(f"{row:<9}" + "".join(f"  {_cell(values[row]):>{w}}"
                                               for values, w in zip(self.values(), width, strict=True)))
        return "\n".join(lines)


def _cell(value) -> str:
    return str(value) if isinstance(value, (int, np.integer)) else f"{float(value):.4f}"
