"""Training: :class:`UnetClassifier` (lr_find, fit, metrics, show_results, save, from_model) on Lightning.

:mod:`.module` the Lightning module and precision choice, :mod:`.losses`, :mod:`.metrics`, :mod:`.lr_find`,
:mod:`.callbacks` (progress table, loss history), :mod:`.figures`, :mod:`.report` (model_metrics.html).
"""

from .classifier import UnetClassifier
from .metrics import ClassMetrics, format_metrics, metrics_from_confusion

__all__ = ["ClassMetrics", "UnetClassifier", "format_metrics", "metrics_from_confusion"]
