"""The training recipe's data-sized defaults: backbone, batches, epochs and early-stopping patience, and the
in-memory copy of the best epoch's weights that early stopping restores.

Sizes come from the data because the right choice differs by orders of magnitude between a few dozen chips
and a few thousand: a small set overfits a large encoder and needs many passes to see enough random windows;
a large set is served well by arcgis.learn's defaults (ResNet-34, about ten epochs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

if TYPE_CHECKING:
    from ..data import ClassifiedTilesData

#: labelled training pixels below which the smaller ResNet-18 is chosen (about 60 chips of 256 x 256);
#: above it ResNet-34, arcgis.learn's default
SMALL_SET_PIXELS = 4_000_000
#: windows (crops of the chip size) the sized epoch count aims at: on the Landsat scene of bench_quality (27,528
#: labelled training pixels) 300 steps of 16 left the network underfitting its own training area (overall
#: accuracy 0.91 there, a rare class never predicted in one run of three); 1000 steps of 8 learned it
TARGET_WINDOWS = 8000
#: ... and at most this many window pixels in all (about 8 minutes of a ResNet-18 on 2 CPU cores): a set of large
#: chips reaches it first (NAIP's 128 x 128 chips: about 4,900 windows)
MAX_WINDOW_PIXELS = 80_000_000
#: batch size of small sets of small chips when none is given (``landcover train``): twice the steps of 16 for the
#: same windows. Only where ``TARGET_WINDOWS`` fit in ``MAX_WINDOW_PIXELS`` (chips up to 100 pixels): on the NAIP
#: patches (128-pixel chips, the pixel cap binding) batches of 8 gave 0.871 overall accuracy, 16 gave 0.907-0.913
SMALL_SET_BATCH = 8
#: a small set's epoch is at least this many batches of windows: each epoch ends with a validation pass and a
#: checkpoint (about 1.3 s for a ResNet-18 on 2 cores), which epochs of a few steps would pay every few steps
SMALL_SET_EPOCH_BATCHES = 16
#: the sized epoch count stays within these bounds (arcgis.learn's examples train about 10 epochs on large sets)
MIN_EPOCHS, MAX_EPOCHS = 10, 100
#: early stopping waits at least this many epochs (arcgis.learn's patience) ...
MIN_PATIENCE = 5
#: ... or this fraction of the run: a one-cycle schedule's high-rate phase makes validation noisy for a while
PATIENCE_FRACTION = 0.25
#: early stopping judges a one-cycle run, and picks its best epoch, only from this fraction of its epochs on:
#: before, the rate rises to its peak (at 30 %) and stays high, and the validation loss jumps (on the NAIP
#: patches from 0.30 to 5.7 and back within three epochs); one lucky epoch there (18 of 77) ended a run at epoch
#: 37 and was the weights it kept
JUDGE_FROM = 0.5


def training_pixels(data: ClassifiedTilesData) -> int:
    """Labelled pixels of the training area: those of the training chips' mosaic when there is one (each pixel
    once however much the chips overlap), else the data's count less the validation chips' share."""
    mosaic = getattr(data.train_ds, "mosaic", None)
    if mosaic is not None:
        return int((mosaic.label > 0).sum())
    total = sum(data.class_pixel_counts.values())
    n_train, n_valid = len(data.train_ds), len(data.valid_ds)
    return int(total * n_train / max(1, n_train + n_valid))


def auto_backbone(data: ClassifiedTilesData) -> str:
    """ResNet-18 for small sets (fewer than ``SMALL_SET_PIXELS`` labelled training pixels), else ResNet-34."""
    return "resnet18" if training_pixels(data) < SMALL_SET_PIXELS else "resnet34"


def steps_per_epoch(data: ClassifiedTilesData) -> int:
    """Optimizer steps in one epoch (the training loader drops a last partial batch when there are more)."""
    n, batch = len(data.train_ds), int(data.batch_size)
    return max(1, n // batch) if n > batch else 1


def auto_epochs(data: ClassifiedTilesData) -> int:
    """Epochs for about ``TARGET_WINDOWS`` training windows (fewer when they would pass ``MAX_WINDOW_PIXELS``),
    within ``MIN_EPOCHS``..``MAX_EPOCHS``: many passes over a few dozen chips (new random windows each time),
    arcgis.learn's ten over thousands."""
    windows = min(TARGET_WINDOWS, MAX_WINDOW_PIXELS / max(1, int(data.chip_size)) ** 2)
    per_epoch = steps_per_epoch(data) * int(data.batch_size)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(windows / per_epoch))))


def size_batches(data: ClassifiedTilesData) -> None:
    """The recipe's batches when the user gave no batch size: for a small set (fewer than ``SMALL_SET_PIXELS``
    labelled training pixels) of chips small enough that ``TARGET_WINDOWS`` of them stay within
    ``MAX_WINDOW_PIXELS``, ``SMALL_SET_BATCH`` chips a batch and random-window epochs of at least
    ``SMALL_SET_EPOCH_BATCHES`` batches. Other sets keep their batch size."""
    if training_pixels(data) >= SMALL_SET_PIXELS or TARGET_WINDOWS * int(data.chip_size) ** 2 > MAX_WINDOW_PIXELS:
        return
    from ..data.mosaic import WindowDataset
    from ..data.prepare import window_epoch

    data.batch_size = min(int(data.batch_size), SMALL_SET_BATCH)
    if isinstance(data.train_ds, WindowDataset):  # random windows of the mosaic: an epoch is a count we choose
        data.train_ds.length = window_epoch(len(data.train_ds.chips), data.batch_size, SMALL_SET_EPOCH_BATCHES)


def auto_patience(epochs: int) -> int:
    """Early-stopping patience for a run of ``epochs``: ``MIN_PATIENCE`` or a quarter of the run."""
    return max(MIN_PATIENCE, int(epochs * PATIENCE_FRACTION))


class _FromEpoch:
    """A Lightning callback that ignores the epochs before ``start_epoch`` (see ``JUDGE_FROM``)."""

    def __init__(self, *args, start_epoch: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_epoch = int(start_epoch)

    def _early(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch < self.start_epoch


class AnnealedEarlyStopping(_FromEpoch, EarlyStopping):
    """Lightning's ``EarlyStopping`` that leaves epochs before ``start_epoch`` unjudged (the high-rate part of a
    one-cycle schedule): it may stop a run only once the rate is annealing, when waiting ``patience`` epochs for
    a better value means something."""

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return super()._should_skip_check(trainer) or self._early(trainer)


class AnnealedCheckpoint(_FromEpoch, ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps no epoch before ``start_epoch``: the best epoch is the best of
    the annealing part of the run."""

    def _should_skip_saving_checkpoint(self, trainer: L.Trainer) -> bool:
        return super()._should_skip_saving_checkpoint(trainer) or self._early(trainer)


def judged_from(epochs: int, one_cycle: bool) -> int:
    """The first epoch early stopping judges in a run of ``epochs`` (``JUDGE_FROM`` of a one-cycle run)."""
    return int(epochs * JUDGE_FROM) if one_cycle else 0


class BestWeights(_FromEpoch, L.Callback):
    """Keeps a CPU copy of the network's weights at the best validation ``monitor`` value so far (from
    ``start_epoch`` on); ``fit`` restores it at the end when no checkpoint file holds the best epoch
    (``checkpoint=False``)."""

    def __init__(self, monitor: str, mode: str, start_epoch: int = 0):
        super().__init__(start_epoch=start_epoch)
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics or self._early(trainer):
            return
        value = float(trainer.callback_metrics[self.monitor])
        if math.isnan(value):
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}
