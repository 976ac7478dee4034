"""Lightning callbacks: a one-line-per-epoch progress table and the loss history for ``plot_losses``."""

from __future__ import annotations

import math
import sys
import time

import lightning.pytorch as L

COLUMNS = ("epoch", "train_loss", "valid_loss", "accuracy", "miou", "time")


def _value(trainer: L.Trainer, key: str) -> float:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else math.nan


class ProgressTable(L.Callback):
    """Prints ``epoch train_loss valid_loss accuracy miou time`` once per epoch (rank 0 only)."""

    def __init__(self, stream=None):
        self.stream = stream
        self._start = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._print("".join(f"{c:>12}" for c in COLUMNS))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs validation before this hook, so the epoch's validation metrics are in.
        if not trainer.is_global_zero:
            return
        seconds = int(time.perf_counter() - self._start)
        values = [_value(trainer, k) for k in ("train_loss_epoch", "valid_loss", "accuracy", "miou")]
        self._print(f"{trainer.current_epoch:>12d}" + "".join(f"{v:>12.4f}" for v in values)
                    + f"{seconds // 60:>9d}:{seconds % 60:02d}")


class History(L.Callback):
    """Training loss per step and validation loss per epoch, with steps counted across ``fit`` calls."""

    def __init__(self, step_offset: int = 0):
        self.step_offset = step_offset
        self.train: list[tuple[int, float]] = []
        self.valid: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.train.append((self.step_offset + trainer.global_step, float(loss.detach())))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        v = _value(trainer, "valid_loss")
        if not math.isnan(v):
            self.valid.append((self.step_offset + trainer.global_step, v))
