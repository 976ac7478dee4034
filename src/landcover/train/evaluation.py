"""The evaluation verbs of :class:`~landcover.train.UnetClassifier`: validation metrics (``accuracy``,
``mIOU``, ``per_class_metrics``, ``metrics_table``) and figures (``show_results``, ``plot_losses``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.show import check_count, check_opacity
from ..errors import LandcoverError
from .checks import _check_flag, _class_values
from .figures import loss_figure, results_figure
from .metrics import ClassMetrics, confusion_metric, format_metrics, metrics_from_confusion
from .module import autocast_for, resolve_precision

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class EvaluationMixin:
    """Metrics on the validation chips and figures; mixed into UnetClassifier (uses its ``net``, ``data``,
    ``classes`` and helpers)."""


    def _predict_logits(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        precision = self._precision or resolve_precision(None, device.type if device.type == "cuda" else "cpu")
        x = x.to(device)
        with torch.no_grad(), autocast_for(precision, device):
            return self.net(x).float()

    def _evaluate(self, show_progress: bool = False) -> dict:
        """All metrics over the validation chips; ``show_progress``: a progress bar over the batches."""
        data = self._need_data("evaluation")
        device = self._device()
        was_training = self.net.training
        self.net.to(device).eval()
        confusion = confusion_metric(len(self.classes) + 1, sync=False).to(device)
        loss_fn = self._loss().to(device)
        total, count = 0.0, 0
        try:
            batches = data.valid_dl
            if show_progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc="validation", unit="batch", leave=False, dynamic_ncols=True)
            for x, y in batches:
                logits = self._predict_logits(x, device)
                y = y.to(device)
                total += float(loss_fn(logits, y)) * len(x)
                count += len(x)
                confusion.update(logits.argmax(dim=1), y)
        finally:
            self.net.cpu().train(was_training)
        metrics = metrics_from_confusion(confusion.compute(), self.classes, self._ignore_indices)
        metrics["valid_loss"] = total / max(count, 1)
        return metrics

    @property
    def metrics(self) -> dict:
        """All validation metrics (computed once per fit): accuracy, miou, kappa, per_class, confusion_matrix."""
        return self._get_metrics()

    def _get_metrics(self, show_progress: bool = False) -> dict:
        if self._metrics is None:
            if self.data is None:
                stored = self._extra.get("Metrics")
                if not isinstance(stored, dict):
                    raise LandcoverError("this model was saved without metrics; load it with data to compute them")
                return stored
            self._metrics = self._evaluate(show_progress)
        return self._metrics

    def accuracy(self) -> float:
        """Overall pixel accuracy on the validation chips (labelled pixels only)."""
        if self.data is None and "accuracy" in self._extra:
            return float(self._extra["accuracy"])
        return float(self.metrics["accuracy"])

    def mIOU(self, mean: bool = False, show_progress: bool = True) -> dict[str, float] | float:  # noqa: N802
        """IoU per class name on the validation chips, or their mean (``mean=True``, ignored classes left out).

        (arcgis.learn's name.) ``show_progress``: a progress bar over the validation batches while the metrics
        are computed (once per fit; later calls reuse them silently); False for none.
        """
        m = self._get_metrics(show_progress=_check_flag("show_progress", show_progress))
        if mean:
            return float(m["miou"])
        return {p["name"]: p["iou"] for p in m["per_class"]}

    def per_class_metrics(self, ignore_classes=()) -> ClassMetrics:
        """``{class name: {precision, recall, f1, iou, support}}`` on the validation chips.

        A dict that displays as a table in Jupyter (one row per metric, one column per class, as arcgis.learn's
        DataFrame) and prints as one. ``ignore_classes``: class values (or one value) to leave out of it.
        """
        per_class = self.metrics["per_class"]
        leave_out = set(_class_values("per_class_metrics", ignore_classes, [p["value"] for p in per_class]))
        if per_class and all(p["value"] in leave_out for p in per_class):
            raise LandcoverError(f"per_class_metrics(ignore_classes={ignore_classes!r}) leaves no class to show")
        return ClassMetrics({p["name"]: {k: p[k] for k in ("precision", "recall", "f1", "iou", "support")}
                             for p in per_class if p["value"] not in leave_out})

    def metrics_table(self) -> str:
        """The per-class metrics and overall figures as a text table."""
        return format_metrics(self.metrics)

    # --- figures -------------------------------------------------------------------------------------------

    def show_results(self, rows: int = 5, alpha: float = 0.7) -> Figure:
        """Validation chips, one per row (at most ``rows``): image | ground truth | prediction.

        ``alpha``: opacity of the class colours drawn over the image in the truth and prediction panels (0:
        image only, 1: classes only; default 0.7 as ``show_batch``).
        """
        data = self._need_data("show_results")
        rows, alpha = check_count(rows, "rows", "show_results"), check_opacity(alpha)
        n = min(int(rows), len(data.valid_ds))
        items = [data.valid_ds[i] for i in range(n)]
        x = torch.stack([img for img, _ in items])
        device = self._device()
        was_training = self.net.training
        self.net.to(device).eval()
        try:
            pred = self._predict_logits(x, device).argmax(dim=1).cpu().numpy()
        finally:
            self.net.cpu().train(was_training)
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        images = [img.numpy() * std + mean for img, _ in items]
        truths = [lab.numpy() for _, lab in items]
        return results_figure(images, truths, list(pred), self.classes, self.band_names, alpha,
                              rgb_bands=data.rgb_bands)

    def plot_losses(self) -> Figure:
        """Training loss per batch and validation loss per epoch over all ``fit`` calls."""
        return loss_figure(self.history_train, self.history_valid)
