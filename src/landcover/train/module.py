"""The Lightning module (steps, optimizer, schedule, validation metrics) and the precision choice."""

from __future__ import annotations

import contextlib
import copy
import math

import lightning.pytorch as L
import torch
from torch.optim.lr_scheduler import OneCycleLR

from ..classes import ClassInfo
from ..model import UNet
from .losses import MIXUP_ALPHA, SegmentationLoss, mixup_batch, mixup_loss
from .metrics import confusion_metric, metrics_from_confusion

#: AdamW weight decay (fastai's default, which arcgis.learn trains with)
WEIGHT_DECAY = 1e-2


def on_cuda(accelerator: str = "auto") -> bool:
    """Whether Lightning will train on a CUDA GPU for this ``accelerator`` setting."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str:
    """Lightning precision: the given one, else mixed on a GPU, bf16 autocast on a bf16 CPU, else fp32.

    Measured here (ResNet-34 U-Net, batch 8 x 256², training step): fp32 4.7 samples/s, bf16 autocast +
    channels_last about 12.
    """
    if precision is not None:
        return str(precision)
    if on_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def autocast_for(precision: str, device: torch.device):
    """The autocast context matching a Lightning precision string, for evaluation and the LR finder."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class SegmentationModule(L.LightningModule):
    """Training and validation steps of a :class:`~landcover.model.UNet`.

    ``lrs``: one learning rate per ``net.layer_groups()`` entry (first encoder stage → decoder and head).
    Validation accumulates a confusion matrix (synchronised across processes by torchmetrics) and logs
    ``valid_loss``, ``accuracy`` and ``miou``.

    ``resume``: what :meth:`UnetClassifier._check_resume` read from the checkpoint Lightning resumes from
    (``epochs_done``, the one-cycle's ``steps_left`` and ``max_lrs``). When the run goes on as planned (the
    checkpoint's one-cycle ends with the steps this run has left, at the same rates: an interrupted run),
    Lightning restores the optimizer and the schedule exactly. Otherwise (more epochs, other rates, a constant
    rate) the weights, the optimizer's moments and the epoch count are restored, and the learning rate follows
    the new plan: a whole one-cycle schedule over the remaining epochs (as a second ``fit`` call would run), or
    the given constant rate.

    ``mixup``: each training batch is mixed with a shuffled copy of itself and the loss mixed to match
    (:func:`~.losses.mixup_batch`, Beta(0.4, 0.4) as arcgis.learn); validation sees the batches unchanged.
    """

    def __init__(self, net: UNet, loss: SegmentationLoss, lrs: list[float], classes: list[ClassInfo],
                 one_cycle: bool = True, channels_last: bool = False, ignore_indices: tuple[int, ...] = (),
                 resume: dict | None = None, mixup: bool = False, extract_bands: list[int] | None = None):
        super().__init__()
        self.net, self.loss_fn, self.mixup = net, loss, bool(mixup)
        self.extract_bands = list(range(net.in_channels)) if extract_bands is None else list(extract_bands)
        self.lrs, self.one_cycle, self.channels_last = list(lrs), one_cycle, channels_last
        self.classes, self.ignore_indices = classes, ignore_indices
        self.resume = resume
        self.confusion = confusion_metric(net.num_classes)
        self.last_metrics: dict | None = None
        #: optimizer hyperparameters and scheduler state of the new plan, re-applied after Lightning restores
        #: the checkpoint's (see on_train_start)
        self._new_plan: tuple[list[dict], dict | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup:
            x, lam, perm = mixup_batch(x, MIXUP_ALPHA)
            loss = mixup_loss(self.loss_fn, self(x), y, lam, perm)
        else:
            loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        self.log("valid_loss", self.loss_fn(logits, y), on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        self.confusion.update(logits.argmax(dim=1), y)

    def on_validation_epoch_end(self) -> None:
        metrics = metrics_from_confusion(self.confusion.compute(), self.classes, self.ignore_indices)
        self.confusion.reset()
        self.last_metrics = metrics
        # Identical on every rank (the confusion matrix is synchronised); sync_dist keeps Lightning quiet.
        self.log("accuracy", metrics["accuracy"], sync_dist=True)
        self.log("miou", metrics["miou"], sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Read back by UnetClassifier._check_resume to name what does not match (plain values: weights_only).
        checkpoint["landcover"] = {"backbone": self.net.backbone, "bands": int(self.net.in_channels),
                                   "extract_bands": [int(b) for b in self.extract_bands],
                                   "classes": [int(c.value) for c in self.classes]}

    def configure_optimizers(self):
        groups = [{"params": params, "lr": lr} for params, lr in zip(self.net.layer_groups(), self.lrs, strict=True)]
        optimizer = torch.optim.AdamW(groups, lr=self.lrs[-1], weight_decay=WEIGHT_DECAY)
        resume, self._new_plan = self.resume, None
        if not self.one_cycle:
            if resume is not None:  # the given rate, not the one the checkpoint's optimizer ended with
                self._new_plan = (_hyperparameters(optimizer), None)
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        restart = False
        if resume is not None:
            epochs, done = int(self.trainer.max_epochs or 0), int(resume["epochs_done"])
            if epochs > done:  # the steps this run has left to take
                total = max(1, math.ceil(total * (epochs - done) / epochs))
            # The checkpoint's schedule goes on only if it ends with this run, at the same rates (OneCycleLR
            # raises past its last step). Otherwise (e.g. more epochs): a whole one-cycle over the steps left.
            restart = not (resume.get("steps_left") == total and _same_rates(resume.get("max_lrs"), self.lrs))
            if restart and self.trainer.is_global_zero:
                print(f"resuming after epoch {done - 1}: a new one-cycle learning-rate schedule over the "
                      f"{max(epochs - done, 0)} remaining epoch(s)", flush=True)
        scheduler = OneCycleLR(optimizer, max_lr=self.lrs, total_steps=total, pct_start=0.3)
        if restart:
            self._new_plan = (_hyperparameters(optimizer), copy.deepcopy(scheduler.state_dict()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # Lightning has restored the checkpoint's optimizer (moments and hyperparameters) and schedule by now;
        # a new plan keeps the moments and puts back its own rates and schedule before the first step.
        if self._new_plan is None:
            return
        groups, schedule = self._new_plan
        for group, values in zip(self.trainer.optimizers[0].param_groups, groups, strict=True):
            group.update(copy.deepcopy(values))
        if schedule is not None:
            self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(copy.deepcopy(schedule))


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in optimizer.param_groups]


def _same_rates(a: list[float] | None, b: list[float]) -> bool:
    return a is not None and len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9)
                                                      for x, y in zip(a, b, strict=True))
