"""``UnetClassifier``: the arcgis.learn verbs (``lr_find``, ``fit``, metrics, ``show_results``, ``save``,
``from_model``) over a plain-torch U-Net trained with Lightning."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..classes import ClassInfo
from ..data.show import check_count, check_opacity
from ..errors import LandcoverError, arg, on_command_line
from ..model import BACKBONES, UNet, load_pretrained_encoder
from ..package import ModelPackage, load_package, save_package
from ..raster import check_writable_dir
from .figures import loss_figure, lr_figure, results_figure
from .losses import DICE_AVERAGES, SegmentationLoss, class_weights
from .lr_find import lr_range_test, suggest_lr
from .metrics import ClassMetrics, confusion_metric, format_metrics, metrics_from_confusion
from .module import autocast_for, on_cuda, resolve_precision
from .report import metrics_html

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data import ClassifiedTilesData

#: metrics ``fit(monitor=...)`` can watch, and whether lower or higher is better
MONITORS = {"valid_loss": "min", "accuracy": "max", "miou": "max"}
#: early stopping: epochs without an improvement of at least MIN_DELTA before training stops
PATIENCE, MIN_DELTA = 5, 0.001
#: the loss and augmentation options and their defaults (recorded in the package's ModelParameters)
TRAINING_DEFAULTS = {"class_balancing": False, "focal_loss": False, "dice_loss_fraction": 0.0,
                     "dice_loss_average": "micro", "mixup": False}
TENSORBOARD_MISSING = "TensorBoard logging needs TensorBoard's writer: pip install tensorboard (or tensorboardX)"
#: the folder under ``data.path`` that ``fit(tensorboard=True)`` logs to, as arcgis.learn
TENSORBOARD_FOLDER = "training_log"


class UnetClassifier:
    """A U-Net pixel classifier (ResNet-18/34/50 encoder, any number of bands) for land cover.

    ``data``: from :func:`~landcover.prepare_data`. ``pretrained_path``: a torchvision/timm ImageNet ResNet
    checkpoint (file or URL; the first convolution is adapted to the band count) or a saved landcover model
    (``.emd``, ``.dlpk`` or folder; its head is kept when the classes match). ``class_balancing`` weights the
    loss by inverse class frequency; ``focal_loss`` uses focal CE; ``dice_loss_fraction`` mixes in a Dice loss,
    ``dice_loss_average`` ``"micro"`` (one Dice over all labelled pixels, the default) or ``"macro"`` (the mean
    of the per-class Dice over the classes in the batch); ``ignore_classes`` (class values) incur no loss and are
    left out of the mean IoU. ``mixup``: train on batches mixed with a shuffled copy of themselves, with the
    loss mixed to match (Beta(0.4, 0.4), as arcgis.learn); validation is unchanged. ``mixup`` and
    ``dice_loss_average`` are recorded in the package's ``ModelParameters``.
    """

    def __init__(self, data: ClassifiedTilesData, backbone: str = "resnet34",
                 pretrained_path: str | os.PathLike | None = None, class_balancing: bool = False,
                 focal_loss: bool = False, dice_loss_fraction: float = 0.0, ignore_classes=(),
                 mixup: bool = False, dice_loss_average: str = "micro"):
        if data is None:
            raise LandcoverError("UnetClassifier needs data from prepare_data(); to load a saved model use "
                                 "UnetClassifier.from_model(path)")
        if isinstance(data, (str, os.PathLike)):
            raise LandcoverError(f"UnetClassifier({str(data)!r}): give it the data, not its folder: "
                                 f"UnetClassifier(prepare_data({str(data)!r}))")
        if isinstance(dice_loss_fraction, (bool, str)) or not isinstance(dice_loss_fraction, (int, float)) \
                or not 0.0 <= float(dice_loss_fraction) <= 1.0:
            raise LandcoverError(f"{arg('dice_loss_fraction', dice_loss_fraction)}: give a fraction between 0 and 1")
        self.data: ClassifiedTilesData | None = data
        self.classes: list[ClassInfo] = list(data.classes)
        self.backbone = backbone
        self.band_names = list(data.band_names)
        #: 0-based bands of the imagery the model reads (prepare_data's extract_bands; the package's ExtractBands)
        self.extract_bands = list(data.extract_bands)
        self.mean, self.std = [float(v) for v in data.mean], [float(v) for v in data.std]
        self.tile_size = int(data.chip_size)
        self.input_dtype, self.nodata = data.input_dtype, data.nodata
        self.cell_size, self.crs_wkt = data.cell_size, data.crs_wkt
        self.class_balancing, self.focal_loss = bool(class_balancing), bool(focal_loss)
        self.dice_loss_fraction = float(dice_loss_fraction)
        self.mixup = _check_flag("mixup", mixup)
        if self.mixup and data.batch_size < 2:
            raise LandcoverError(f"{arg('mixup', True)} blends the chips of a batch with each other: prepare "
                                 f"the data with {arg('batch_size', 2)} or more")
        self.dice_loss_average = _check_dice_average(dice_loss_average)
        self.ignore_classes = self._check_ignore(ignore_classes)
        self.net = UNet(len(self.band_names), len(self.classes) + 1, backbone)
        self._init_state()
        if pretrained_path is not None:
            self._load_pretrained(pretrained_path)

    def _init_state(self) -> None:
        self.history_train: list[tuple[int, float]] = []
        self.history_valid: list[tuple[int, float]] = []
        self.lr_finder: dict | None = None
        self.checkpoint_path: Path | None = None
        self.last_checkpoint: Path | None = None
        self._metrics: dict | None = None
        self._extra: dict = {}
        self._lr_text: str | None = None
        self._monitored: tuple[str, float] | None = None
        self._precision: str | None = None
        self._steps = 0
        self._package_path: Path | None = None
        #: where the last ``fit(tensorboard=True)`` wrote its TensorBoard logs
        self.tensorboard_dir: Path | None = None
        #: False in the extra processes of a multi-process (DDP) run: they train but do not write packages
        self.is_main_process = True

    # --- construction helpers ------------------------------------------------------------------------------

    def _check_ignore(self, ignore_classes) -> list[int]:
        values = [int(v) for v in (ignore_classes or ())]
        known = [c.value for c in self.classes]
        for v in values:
            if v not in known:
                raise LandcoverError(f"{arg('ignore_classes')}: class {v} is not in the data (classes: "
                                     f"{', '.join(map(str, known))})")
        if values and len(known) <= 2:
            raise LandcoverError(f"{arg('ignore_classes')} needs more than two classes: with two, ignoring one leaves "
                                 "nothing to tell apart")
        if len(set(values)) >= len(known) - 1 and values:
            raise LandcoverError(f"{arg('ignore_classes')}: at least two classes must remain to train on")
        return sorted(set(values))

    @property
    def _ignore_indices(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, c in enumerate(self.classes) if c.value in self.ignore_classes)

    def _load_pretrained(self, path: str | os.PathLike) -> None:
        text = str(path)
        if text.lower().endswith((".emd", ".dlpk")) or Path(text).is_dir():
            pkg = load_package(text)
            if pkg.backbone != self.backbone:
                raise LandcoverError(f"{text}: the model was trained with backbone {pkg.backbone}; use "
                                     f"{arg('backbone', pkg.backbone)} to start from it")
            own = self.net.state_dict()
            use = {}
            for key, value in (pkg.state_dict or {}).items():
                if key not in own:
                    raise LandcoverError(f"{text}: weights hold an unexpected layer {key}")
                if own[key].shape != value.shape:
                    if key.startswith("head."):
                        continue  # other classes: the head starts afresh, the rest is reused
                    raise LandcoverError(f"{text}: layer {key} has shape {tuple(value.shape)}, this model "
                                         f"expects {tuple(own[key].shape)} (different bands?)")
                use[key] = value
            self.net.load_state_dict(use, strict=False)
            theirs = [int(b) for b in pkg.extract_bands]
            if theirs != self.extract_bands:
                # Legitimate transfer learning (as from ImageNet RGB), but often a slip: say so.
                warnings.warn(f"{text}: the model was trained on bands {theirs} (0-based) of its imagery, this one "
                              f"reads {self.extract_bands}; its first layer starts from weights learned on other "
                              "bands", stacklevel=3)
        else:
            load_pretrained_encoder(self.net.encoder, path)

    def _need_data(self, what: str) -> ClassifiedTilesData:
        if self.data is None:
            raise LandcoverError(f"{what} needs training data: load the model with "
                                 "UnetClassifier.from_model(path, data=prepare_data(...))")
        return self.data

    def _loss(self) -> SegmentationLoss:
        counts = []
        if self.data is not None:
            counts = [self.data.class_pixel_counts.get(c.value, 0) for c in self.classes]
        weight = class_weights(len(self.classes) + 1, counts, self._ignore_indices,
                               balance=self.class_balancing and bool(counts))
        return SegmentationLoss(len(self.classes) + 1, weight, self.focal_loss, self.dice_loss_fraction,
                                self.dice_loss_average)

    @staticmethod
    def _device(accelerator: str = "auto") -> torch.device:
        return torch.device("cuda" if on_cuda(accelerator) else "cpu")

    # --- arcgis.learn's model helpers ---------------------------------------------------------------------

    @staticmethod
    def backbones() -> list[str]:
        """The encoders ``backbone=`` accepts."""
        return list(BACKBONES)

    @property
    def available_metrics(self) -> list[str]:
        """What ``fit(monitor=...)`` can monitor."""
        return list(MONITORS)

    def freeze(self) -> UnetClassifier:
        """Train only the decoder and head from now on: the encoder's convolutions are fixed, its batch-norm
        layers still learn (as fastai's ``freeze``, which arcgis.learn applies to a pretrained encoder before the
        first ``fit``). landcover trains the whole network by default; with ImageNet weights
        (``pretrained_path``) ``freeze()``, ``fit``, ``unfreeze()``, ``fit`` follows arcgis.learn's recipe."""
        for module in self.net.encoder.modules():
            if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)
        return self

    def unfreeze(self) -> UnetClassifier:
        """Train every layer again (after :meth:`freeze`)."""
        for p in self.net.parameters():
            p.requires_grad_(True)
        return self

    def load(self, name_or_path: str | os.PathLike) -> UnetClassifier:
        """Load the weights of a saved package into this model (arcgis.learn's ``load``): a name saved with
        :meth:`save` (``<working_dir>/models/<name>``), or a package folder, ``.emd`` or ``.dlpk``. It must have
        this model's backbone, bands and classes; to start from a model of other classes use
        ``UnetClassifier(data, pretrained_path=...)``."""
        path = Path(name_or_path)
        if not str(name_or_path).strip():
            raise LandcoverError("load(''): give the name or path of a saved model")
        if not path.exists() and len(path.parts) == 1 and path.suffix.lower() not in (".emd", ".dlpk"):
            path = self._models_folder() / path.name
        pkg = load_package(path)
        fix = "start from it with UnetClassifier(data, pretrained_path=...) instead"
        if pkg.backbone != self.backbone:
            raise LandcoverError(f"{path}: the model has backbone {pkg.backbone}, this one {self.backbone}; {fix}")
        if [c.value for c in pkg.classes] != [c.value for c in self.classes]:
            raise LandcoverError(f"{path}: the model's classes {[c.value for c in pkg.classes]} differ from these "
                                 f"{[c.value for c in self.classes]}; {fix}")
        if [int(b) for b in pkg.extract_bands] != self.extract_bands:
            raise LandcoverError(f"{path}: the model reads bands {list(pkg.extract_bands)} (0-based), this one "
                                 f"{self.extract_bands}; {fix}")
        self.net.load_state_dict(pkg.state_dict)
        self._metrics = None
        return self

    # --- learning rate -------------------------------------------------------------------------------------

    def lr_find(self, allow_plot: bool = True, num_steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0,
                precision: str | None = None, accelerator: str = "auto") -> float:
        """Learning-rate range test; returns the suggested rate. The curve is in ``self.lr_figure()``.

        The weights are unchanged afterwards. The test is seeded (``prepare_data(seed=...)``), so every
        process of a multi-process run finds the same rate. With ``mixup`` the batches and the loss are mixed
        as in training.
        """
        data = self._need_data("lr_find")
        device = self._device(accelerator)
        precision = resolve_precision(precision, accelerator)
        channels_last = self._use_channels_last(precision, device)
        devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(data.seed)
            rates, losses = lr_range_test(self.net, self._loss(), data.train_dl, device, precision, channels_last,
                                          start_lr, end_lr, num_steps, mixup=self.mixup)
        self.net.cpu()
        suggestion = suggest_lr(rates, losses)
        self.lr_finder = {"rates": rates, "losses": losses, "suggestion": suggestion}
        if allow_plot:
            _display(self.lr_figure())
        return suggestion

    def lr_figure(self) -> Figure:
        """Loss against learning rate from the last :meth:`lr_find`, with the suggestion marked."""
        if not self.lr_finder:
            raise LandcoverError("run lr_find() first")
        f = self.lr_finder
        return lr_figure(f["rates"], f["losses"], f["suggestion"])

    def _resolve_lr(self, lr, accelerator: str, precision: str) -> tuple[list[float], str]:
        groups = len(self.net.layer_groups())
        if lr is None:
            found = self.lr_find(allow_plot=False, precision=precision, accelerator=accelerator)
            lr = slice(found / 10, found)
        if isinstance(lr, (tuple, list)) and len(lr) == 2:
            lr = slice(*lr)
        if isinstance(lr, slice):
            hi = lr.stop
            lo = lr.start if lr.start is not None else (hi / 10 if hi is not None else None)
            if hi is None or not (0 < float(lo) <= float(hi)):
                raise LandcoverError(f"lr={lr}: give slice(low, high) with 0 < low <= high")
            lo, hi = float(lo), float(hi)
            rates = [lo * (hi / lo) ** (i / (groups - 1)) for i in range(groups)]
            return rates, f"slice('{lo:.4e}', '{hi:.4e}', None)"
        try:
            value = float(lr)
        except (TypeError, ValueError):
            raise LandcoverError(f"lr={lr!r}: give a number, slice(low, high) or None") from None
        if not value > 0:
            raise LandcoverError(f"{arg('lr', lr)}: the learning rate must be positive")
        return [value] * groups, f"{value:.4e}"

    @staticmethod
    def _use_channels_last(precision: str, device: torch.device) -> bool:
        # Channels-last convolutions are faster on CPU (oneDNN) and with mixed precision on GPU tensor cores.
        return device.type == "cpu" or "mixed" in precision

    def _check_resume(self, resume: str | os.PathLike) -> dict:
        """Check that ``resume`` is a training checkpoint of this model; what resuming needs from it.

        Read as untrusted (tensors and plain values only; memory-mapped, so a large file is not read whole).
        """
        path = Path(resume)
        fix = f"give {arg('resume')} the last.ckpt or a best-*.ckpt of a landcover train run"
        if path.suffix.lower() in (".emd", ".dlpk") or _is_package(path):
            raise LandcoverError(f"{path}: a model package, not a training checkpoint; to train on from it use "
                                 f"{arg('pretrained_path', path)}, or {fix}")
        if not path.is_file():
            raise LandcoverError(f"{path}: checkpoint to resume from not found ({fix}, in "
                                 "<folder>/models/checkpoints/<date>_<time>/)")
        if not zipfile.is_zipfile(path):
            raise LandcoverError(f"{path}: not a training checkpoint (not a PyTorch checkpoint file); {fix}")
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # any failure to read is the same user error
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if "weights only" in reason.lower():
                reason = "it holds Python objects, which are not loaded from untrusted files"
            raise LandcoverError(f"{path}: not a readable training checkpoint ({reason}); {fix}") from None
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        weights = {k[4:]: v for k, v in state.items() if isinstance(k, str) and k.startswith("net.")
                   and isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
        optimizers = ckpt.get("optimizer_states") if isinstance(ckpt, dict) else None
        groups = optimizers[0].get("param_groups") if (isinstance(optimizers, list) and optimizers
                                                       and isinstance(optimizers[0], dict)) else None
        if not weights or not isinstance(groups, list) or not isinstance(ckpt.get("epoch"), int):
            raise LandcoverError(f"{path}: not a landcover training checkpoint (no U-Net training state: plain "
                                 f"weights go to {arg('pretrained_path')}); {fix}")
        meta = ckpt.get("landcover") if isinstance(ckpt.get("landcover"), dict) else {}
        backbone = meta.get("backbone") or _backbone_of(weights)
        if backbone and backbone != self.backbone:
            raise LandcoverError(f"{path}: the checkpoint was trained with backbone {backbone}, this run uses "
                                 f"{self.backbone}; resume with {arg('backbone', backbone)}")
        ours = [c.value for c in self.classes]
        theirs = meta.get("classes")
        head = weights.get("head.weight")
        n = int(head.shape[0]) - 1 if head is not None else len(ours)
        if (isinstance(theirs, list) and theirs != ours) or n != len(ours):
            what = ", ".join(map(str, theirs)) if isinstance(theirs, list) else f"{n} classes"
            raise LandcoverError(f"{path}: the checkpoint was trained on classes {what}, the data has classes "
                                 f"{', '.join(map(str, ours))}; resume with the data it was trained on, or start a "
                                 f"new run from its model package with {arg('pretrained_path')}")
        conv1 = weights.get("encoder.conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != len(self.band_names):
            raise LandcoverError(f"{path}: the checkpoint takes {conv1.shape[1]} bands, the data has "
                                 f"{len(self.band_names)}; resume with the data it was trained on")
        bands = meta.get("extract_bands")
        if isinstance(bands, list) and bands != self.extract_bands:
            # Same count, other bands: the weights would meet bands they were not trained on.
            raise LandcoverError(f"{path}: the checkpoint was trained on bands {_bands(bands)} of the chips, this run "
                                 f"reads {_bands(self.extract_bands)}; resume with {_extract_bands_arg(bands)}")
        own = self.net.state_dict()
        for key in sorted(set(own) | set(weights)):
            if key not in weights or key not in own or own[key].shape != weights[key].shape:
                raise LandcoverError(f"{path}: layer {key} does not match this {self.backbone} U-Net; {fix} with "
                                     "the same backbone, bands and classes")
        if len(groups) != len(self.net.layer_groups()) or not all(isinstance(g, dict) for g in groups):
            raise LandcoverError(f"{path}: not a landcover training checkpoint (its optimizer has {len(groups)} "
                                 f"parameter groups); {fix}")
        schedulers = ckpt.get("lr_schedulers")
        schedule = schedulers[0] if isinstance(schedulers, list) and schedulers and isinstance(schedulers[0], dict) \
            else {}

        def rates(key: str) -> list[float] | None:
            values = [g.get(key) for g in groups]
            return [float(v) for v in values] if all(isinstance(v, (int, float)) for v in values) else None

        max_lrs = rates("max_lr")
        total, taken = schedule.get("total_steps"), schedule.get("last_epoch")
        steps_left = total - taken if isinstance(total, int) and isinstance(taken, int) else None
        return {"epochs_done": int(ckpt["epoch"]) + 1, "steps_left": steps_left, "max_lrs": max_lrs,
                "lrs": max_lrs or rates("lr")}

    # --- training ------------------------------------------------------------------------------------------

    def fit(self, epochs: int = 10, lr=None, one_cycle: bool = True, early_stopping: bool = False,
            checkpoint: bool = True, tensorboard: bool = False, monitor: str = "valid_loss",
            resume: str | os.PathLike | None = None,
            devices="auto", num_nodes: int = 1, strategy="auto", precision: str | None = None,
            accelerator: str = "auto", **trainer_kwargs) -> UnetClassifier:
        """Train for ``epochs`` epochs with Lightning, printing one table row per epoch.

        ``lr``: a rate, ``slice(lo, hi)`` spread geometrically from the first encoder stage (lo) to the decoder
        and head (hi), or None to run :meth:`lr_find` and use ``slice(found/10, found)``. ``one_cycle``: the
        one-cycle schedule, else a constant rate. ``early_stopping``: stop after 5 epochs without ``monitor``
        improving by 0.001. ``checkpoint``: keep the best epoch (by ``monitor``) and the last one under
        ``<working_dir>/models/checkpoints/<date>_<time>/`` (``best-epoch=NNN.ckpt``, ``last.ckpt``), and
        restore the best at the end. ``tensorboard``: log the losses, metrics and learning rates for
        TensorBoard under ``<data.path>/training_log/<date>_<time>/`` (arcgis.learn's folder; the working
        folder's ``training_log`` when the data folder is read-only); needs ``tensorboard`` or ``tensorboardX``;
        view with ``tensorboard --logdir <data.path>/training_log``; the folder is in ``self.tensorboard_dir``.
        ``resume``: a checkpoint of this model to continue from, with ``epochs`` the run's total (more than the
        checkpoint has done); the run keeps writing beside it. An interrupted run resumed with its own settings
        goes on exactly as it would have; with more epochs (or other rates) the weights, optimizer state and
        epoch count carry on and the learning rate follows a new one-cycle schedule over the remaining epochs.
        Without ``lr`` a resumed run takes the checkpoint's rates.
        ``devices``/``num_nodes``/``strategy`` go to the Lightning Trainer (e.g. 4 GPUs:
        ``devices=4, strategy="ddp"``). ``precision``: None picks bf16/fp16 mixed precision on a GPU and bf16
        autocast on a CPU with native bf16, else fp32. Other keyword arguments (e.g. ``callbacks``,
        ``limit_train_batches``) go to ``lightning.pytorch.Trainer``.
        """
        import lightning.pytorch as L
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        from .callbacks import History, ProgressTable
        from .module import SegmentationModule

        data = self._need_data("fit")
        tensorboard = _check_flag("tensorboard", tensorboard)
        if monitor not in MONITORS:
            raise LandcoverError(f"{arg('monitor', monitor)}: choose one of {', '.join(MONITORS)}")
        if int(epochs) < 1:
            raise LandcoverError(f"{arg('epochs', epochs)}: train for at least one epoch")
        resumed = self._check_resume(resume) if resume is not None else None
        if resumed is not None and int(epochs) <= resumed["epochs_done"]:
            done = resumed["epochs_done"]
            raise LandcoverError(f"{resume}: the checkpoint has already trained {done} epoch(s); give "
                                 f"{arg('epochs', done + 1)} or more to train on")
        if checkpoint and resume is None:
            _check_working_dir(Path(data.working_dir) / "models" / "checkpoints", data.working_dir, "checkpoints")
        logger = self._tensorboard_logger(data) if tensorboard else False
        precision = resolve_precision(precision, accelerator)
        device = self._device(accelerator)
        channels_last = self._use_channels_last(precision, device)
        if resumed is not None and lr is None and resumed["lrs"]:
            rates = resumed["lrs"]  # go on at the checkpoint's rates (no learning-rate finder on other weights)
            lr_text = _lr_text(rates)
        else:
            rates, lr_text = self._resolve_lr(lr, accelerator, precision)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        module = SegmentationModule(self.net, self._loss(), rates, self.classes, one_cycle, channels_last,
                                    self._ignore_indices, resume=resumed, mixup=self.mixup,
                                    extract_bands=self.extract_bands)
        history = History(self._steps)
        callbacks: list = [ProgressTable(), history, *trainer_kwargs.pop("callbacks", [])]
        if logger:
            from lightning.pytorch.callbacks import LearningRateMonitor

            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        mode = MONITORS[monitor]
        if early_stopping:
            callbacks.append(EarlyStopping(monitor=monitor, min_delta=MIN_DELTA, patience=PATIENCE, mode=mode))
        ckpt = None
        if checkpoint:
            # A resumed run keeps writing beside the checkpoint it resumed from.
            ckpt_dir = Path(resume).resolve().parent if resume else _new_checkpoint_dir(data.working_dir)
            ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor=monitor, mode=mode,
                                   save_top_k=1)
            # The latest epoch, to resume an interrupted run (Lightning's save_last only follows saves of the
            # best checkpoint, so an epoch that does not improve would not be kept).
            latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, monitor=None,
                                     enable_version_counter=False)
            callbacks += [ckpt, latest]
        with _quiet_lightning():
            trainer = L.Trainer(
                accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                precision=precision, max_epochs=int(epochs), callbacks=callbacks, logger=logger,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                enable_checkpointing=checkpoint, default_root_dir=str(data.working_dir), **trainer_kwargs)
            # Checkpoints are untrusted input: tensors and plain values only (checked in _check_resume too).
            trainer.fit(module, data.train_dl, data.valid_dl, ckpt_path=str(resume) if resume else None,
                        weights_only=True)
        # Back to the default layout: packages, show_results and inference see the same model as a loaded one.
        self.net.cpu().to(memory_format=torch.contiguous_format)
        self.is_main_process = trainer.is_global_zero
        if ckpt is not None and ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
            # Our own file, but read as untrusted anyway: tensors only.
            state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
            self.checkpoint_path = Path(ckpt.best_model_path)
            # dirpath as broadcast from rank 0 (each process stamped its own folder name)
            last = Path(ckpt.dirpath) / "last.ckpt"
            self.last_checkpoint = last if last.is_file() else None
            if ckpt.best_model_score is not None:
                self._monitored = (monitor, float(ckpt.best_model_score))
        elif monitor in trainer.callback_metrics:
            self._monitored = (monitor, float(trainer.callback_metrics[monitor]))
        self.history_train += history.train
        self.history_valid += history.valid
        self._steps += trainer.global_step
        self._lr_text, self._precision = lr_text, precision
        self._metrics = None
        if logger:
            logger.finalize("success")  # flush the event file now, not when the process ends
            self.tensorboard_dir = Path(logger.log_dir)
        return self

    def _tensorboard_logger(self, data: ClassifiedTilesData):
        """Lightning's TensorBoardLogger writing to ``<data.path>/training_log/<date>_<time>``."""
        if not any(_importable(name) for name in ("tensorboard", "tensorboardX")):
            raise LandcoverError(TENSORBOARD_MISSING)
        from lightning.pytorch.loggers import TensorBoardLogger

        base = Path(data.path) / TENSORBOARD_FOLDER
        try:
            check_writable_dir(base)
        except LandcoverError:
            fallback = Path(data.working_dir) / TENSORBOARD_FOLDER
            _check_working_dir(fallback, data.working_dir, "TensorBoard logs (the data folder is read-only)")
            print(f"TensorBoard logs: {base.parent} is read-only, logging to {fallback} instead", flush=True)
            base = fallback
        version = _stamped_folder(base).name
        try:
            return TensorBoardLogger(save_dir=str(base.parent), name=base.name, version=version,
                                     default_hp_metric=False)
        except ModuleNotFoundError:
            raise LandcoverError(TENSORBOARD_MISSING) from None

    # --- evaluation ----------------------------------------------------------------------------------------

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

    # --- packages ------------------------------------------------------------------------------------------

    def save(self, name_or_path: str | os.PathLike, extra_files: dict[str, str | os.PathLike] | None = None,
             compute_metrics: bool = True, overwrite: bool = True, *, framework: str = "PyTorch",
             publish: bool = False, gis=None, save_optimizer: bool = False) -> Path:
        """Write the model package folder (``.emd``, safetensors, figures, ``model_metrics.html``, ``.dlpk``).

        A plain name goes to ``<working_dir>/models/<name>/`` as in arcgis.learn; a path is used as is.
        ``extra_files`` maps names inside the package to files to copy in. ``compute_metrics``: validation
        metrics into the emd and ``model_metrics.html``. Returns the folder. In the extra processes of a
        multi-process run nothing is written. A model package already there is replaced (as in arcgis.learn)
        unless ``overwrite=False``; a folder holding anything else is never replaced.

        arcgis.learn's other options, for ported notebooks: ``framework`` must be ``"PyTorch"`` (any case;
        packages hold PyTorch weights, ``landcover classify`` builds ONNX from them itself); ``publish=True`` /
        ``gis`` are refused (upload the ``.dlpk`` with the ArcGIS API); ``save_optimizer=True`` is refused: the
        optimizer state is in the training checkpoints (``last.ckpt``), which ``fit(resume=...)`` continues from.
        """
        self._check_save_options(extra_files, framework, publish, gis, save_optimizer)
        folder = self._package_folder(name_or_path)
        if not self.is_main_process:
            return folder
        check_package_folder(folder, overwrite)
        metrics = None
        if compute_metrics and (self.data is not None or isinstance(self._extra.get("Metrics"), dict)):
            metrics = self.metrics
        extra = dict(self._extra)
        if metrics is not None:
            extra.update({
                "accuracy": f"{metrics['accuracy']:.4e}",
                "per_class_metrics": json.dumps({p["name"]: {k: round(p[k], 10) for k in ("precision", "recall",
                                                                                           "f1", "iou")}
                                                 for p in metrics["per_class"]}),
                "Metrics": metrics,
            })
        if self._lr_text:
            extra["LearningRate"] = self._lr_text
        # arcgis.learn's {"backbone", "backend"} plus the training options (read back by from_emd as the backbone)
        extra["ModelParameters"] = {"backbone": self.backbone, "backend": "pytorch", **self._training_options()}
        if self._monitored:
            extra[f"monitored_{self._monitored[0]}"] = self._monitored[1]
        with tempfile.TemporaryDirectory(prefix="landcover-save-") as tmp:
            files: dict[str, str | os.PathLike] = {}
            loss_png = results_png = None
            if self.history_train or self.history_valid:
                loss_png = "ModelCharacteristics/loss_graph.png"
                files[loss_png] = _savefig(self.plot_losses(), Path(tmp) / "loss_graph.png")
            if self.data is not None:
                results_png = "ModelCharacteristics/show_results.png"
                files[results_png] = _savefig(self.show_results(), Path(tmp) / "show_results.png")
            if metrics is not None:
                html = Path(tmp) / "model_metrics.html"
                html.write_text(metrics_html(metrics, self._facts(), loss_png, results_png), encoding="utf-8")
                files["model_metrics.html"] = html
            files.update(extra_files or {})
            pkg = ModelPackage(
                classes=self.classes, backbone=self.backbone, extract_bands=self.extract_bands,
                mean=self.mean, std=self.std, tile_size=self.tile_size, band_names=self.band_names,
                input_dtype=self.input_dtype, nodata=self.nodata, cell_size=self.cell_size, crs_wkt=self.crs_wkt,
                ignore_classes=self.ignore_classes, extra=extra, state_dict=self.net.state_dict())
            save_package(pkg, folder, name=folder.name, files=files)
        return folder

    def _training_options(self) -> dict:
        return {"class_balancing": self.class_balancing, "focal_loss": self.focal_loss,
                "dice_loss_fraction": self.dice_loss_fraction, "dice_loss_average": self.dice_loss_average,
                "mixup": self.mixup}

    def _check_save_options(self, extra_files, framework, publish, gis, save_optimizer) -> None:
        """arcgis.learn's save options landcover does not do: one line each saying what to do instead."""
        if extra_files is not None and not isinstance(extra_files, dict):
            raise LandcoverError(f"save(extra_files={extra_files!r}): give a dict {{name in the package: file}}; "
                                 "arcgis.learn's framework goes by keyword: save(name, framework='PyTorch')")
        if not isinstance(framework, str) or framework.strip().lower() != "pytorch":
            raise LandcoverError(f"save(framework={framework!r}): landcover packages hold PyTorch weights "
                                 "(safetensors); landcover classify builds ONNX from them itself, so save with "
                                 "framework='PyTorch'")
        if (publish is not False and publish is not None) or gis is not None:
            raise LandcoverError("save(publish=True/gis=...): landcover does not publish to a portal; upload the "
                                 ".dlpk in the package folder with the ArcGIS API (gis.content.add)")
        if save_optimizer is not False and save_optimizer is not None:
            base = str(self.data.working_dir) if self.data is not None else "<working_dir>"
            where = self.last_checkpoint or Path(base, "models", "checkpoints", "<date>_<time>", "last.ckpt")
            raise LandcoverError(f"save(save_optimizer=True): packages hold weights only; the optimizer state is "
                                 f"in the training checkpoint {where}: continue training with fit(resume=...)")

    def _package_folder(self, name_or_path: str | os.PathLike) -> Path:
        if not str(name_or_path).strip():
            raise LandcoverError("save(''): give the model a name, e.g. save('unet34')")
        path = Path(name_or_path)
        if path.is_absolute() or len(path.parts) > 1:
            check_writable_dir(path.parent)
            return path
        return self._models_folder() / path.name

    def _models_folder(self) -> Path:
        """``<working_dir>/models``, where plain package names go (as arcgis.learn's)."""
        if self.data is not None:
            return Path(self.data.working_dir) / "models"
        if self._package_path is not None:
            return self._package_path.parent.parent  # <base>/models/<name>/<name>.emd
        return Path.cwd() / "models"

    def _facts(self) -> dict[str, str]:
        facts = {"Model": "UnetClassifier", "Backbone": self.backbone, "Bands": _bands_text(self.band_names, self.extract_bands),
                 "Chip size": str(self.tile_size)}
        if self._lr_text:
            facts["Learning rate"] = self._lr_text
        if self._steps:
            facts["Training batches"] = str(self._steps)
        if self.ignore_classes:
            facts["Ignored classes"] = ", ".join(map(str, self.ignore_classes))
        loss = ("class-balanced " if self.class_balancing else "") + ("focal " if self.focal_loss else "") \
            + "cross-entropy"
        if self.dice_loss_fraction > 0:
            loss += f" + {self.dice_loss_fraction:g} × {self.dice_loss_average} Dice"
        facts["Loss"] = loss
        if self.mixup:
            facts["Mixup"] = "yes (Beta(0.4, 0.4))"
        return facts

    @classmethod
    def from_model(cls, path: str | os.PathLike, data: ClassifiedTilesData | None = None) -> UnetClassifier:
        """A model from a saved package (``.emd``, ``.dlpk`` or folder), for inference or further training.

        With ``data`` (same classes and band count), training continues with the package's normalization: the
        data's datasets are switched to the package's band statistics.
        """
        pkg = load_package(path)
        self = cls.__new__(cls)
        self.data = data
        self.classes, self.backbone, self.band_names = list(pkg.classes), pkg.backbone, list(pkg.band_names)
        self.extract_bands = [int(b) for b in pkg.extract_bands]
        if len(self.band_names) != pkg.in_channels:
            self.band_names = [f"Band_{i + 1}" for i in range(pkg.in_channels)]
        self.mean, self.std = list(pkg.mean), list(pkg.std)
        self.tile_size, self.input_dtype, self.nodata = pkg.tile_size, pkg.input_dtype, pkg.nodata
        self.cell_size, self.crs_wkt = pkg.cell_size, pkg.crs_wkt
        # Training options as the package records them (ModelParameters, as arcgis.learn passes them back to the
        # constructor); missing or malformed ones take their defaults.
        recorded = pkg.extra.get("ModelParameters")
        options = _training_options_from(recorded if isinstance(recorded, dict) else {})
        self.class_balancing, self.focal_loss = options["class_balancing"], options["focal_loss"]
        self.dice_loss_fraction, self.dice_loss_average = options["dice_loss_fraction"], options["dice_loss_average"]
        self.mixup = options["mixup"]
        self.ignore_classes = list(pkg.ignore_classes)
        self.net = pkg.build_model().train()
        self._init_state()
        self._extra = dict(pkg.extra)
        self._package_path = Path(pkg.path) if pkg.path else None
        if data is not None:
            if [c.value for c in data.classes] != [c.value for c in self.classes]:
                raise LandcoverError(f"{path}: the model's classes {[c.value for c in self.classes]} differ from "
                                     f"the data's {[c.value for c in data.classes]}; start a new model with "
                                     "UnetClassifier(data, pretrained_path=...) instead")
            if list(data.extract_bands) != self.extract_bands:
                # Even with the same count: each input channel would get another band than it learned.
                chip_bands = len(data.chip_band_names)
                if max(self.extract_bands) >= chip_bands:
                    raise LandcoverError(f"{path}: the model reads bands {self.extract_bands} (0-based) of the "
                                         f"chips, the data's chips have {chip_bands} band(s)")
                raise LandcoverError(f"{path}: the model reads bands {self.extract_bands} (0-based) of the chips, "
                                     f"the data {list(data.extract_bands)}; give prepare_data(..., "
                                     f"extract_bands={self.extract_bands})")
            mean, std = np.asarray(pkg.mean, np.float64), np.asarray(pkg.std, np.float64)
            data.mean, data.std = mean, std
            for ds in (data.train_ds, data.valid_ds):
                ds.mean = mean.astype(np.float32).reshape(-1, 1, 1)
                ds.std = std.astype(np.float32).reshape(-1, 1, 1)
            self.tile_size = int(data.chip_size)
        return self

    def __repr__(self) -> str:
        names = ", ".join(f"{c.value}:{c.name}" for c in self.classes)
        options = "".join(f", {k}={v!r}" for k, v in self._training_options().items()
                          if v != TRAINING_DEFAULTS[k])
        return f"UnetClassifier(backbone={self.backbone!r}, bands={self.band_names}, classes=[{names}]{options})"


def _check_working_dir(folder: Path, working_dir: Path, what: str) -> None:
    """``folder`` (under the working folder) can be written, or one line saying how to choose another."""
    try:
        check_writable_dir(folder)
    except LandcoverError:
        raise LandcoverError(f"{folder}: {what} go here, under the working folder {working_dir}, which is not "
                             "writable; give prepare_data(..., working_dir=<a writable folder>)") from None


def _training_options_from(recorded: dict) -> dict:
    """The training options of a package's ModelParameters, each checked; defaults where missing or malformed."""
    options = dict(TRAINING_DEFAULTS)
    for key, default in TRAINING_DEFAULTS.items():
        value = recorded.get(key)
        if isinstance(default, bool) and isinstance(value, bool):
            options[key] = value
        elif key == "dice_loss_fraction" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and 0.0 <= float(value) <= 1.0:
            options[key] = float(value)
        elif key == "dice_loss_average" and value in DICE_AVERAGES:
            options[key] = value
    return options


def _check_flag(name: str, value) -> bool:
    """A True/False argument; anything else (a string, a number) is one line naming the argument."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise LandcoverError(f"{arg(name, value)}: give True or False")


def _bands(bands) -> str:
    """Chip bands as the user counts them: 0-based in Python, from 1 on the command line (as GDAL)."""
    if on_command_line():
        return " ".join(str(int(b) + 1) for b in bands)
    return f"{[int(b) for b in bands]} (0-based)"


def _extract_bands_arg(bands) -> str:
    """``extract_bands=[3, 0, 1]`` in Python, ``--extract-bands 4 1 2`` on the command line (counted from 1)."""
    return arg("extract_bands", [int(b) + 1 if on_command_line() else int(b) for b in bands])


def _check_dice_average(value) -> str:
    if isinstance(value, str) and value in DICE_AVERAGES:
        return value
    raise LandcoverError(f"{arg('dice_loss_average', value)}: choose {' or '.join(repr(v) for v in DICE_AVERAGES)}")


def _class_values(what: str, values, known: list[int]) -> list[int]:
    """Class values given as one value or a list of them (None: none), each one of ``known``; one line otherwise."""
    if values is None:
        return []
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    items = list(values) if isinstance(values, (list, tuple, set, frozenset, np.ndarray)) else None
    if items is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise LandcoverError(f"{what}(ignore_classes={values!r}): give class values, e.g. "
                             f"ignore_classes=[{known[0]}] (classes: {', '.join(map(str, known))})")
    unknown = [int(v) for v in items if int(v) not in known]
    if unknown:
        raise LandcoverError(f"{what}(ignore_classes=...): class {', '.join(map(str, unknown))} is not in the "
                             f"model (classes: {', '.join(map(str, known))})")
    return [int(v) for v in items]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _bands_text(names: list[str], extract_bands: list[int]) -> str:
    """``Red, Green, Blue``, or with a band selection ``NearInfrared, Red, Green (imagery bands 4, 1, 2)``."""
    text = ", ".join(names)
    if extract_bands != list(range(len(extract_bands))):
        text += f" (imagery bands {', '.join(str(b + 1) for b in extract_bands)})"
    return text


def _is_package(folder: Path) -> bool:
    """Whether ``folder`` holds a model package (an ``.emd`` with weights or a ``.dlpk`` beside it)."""
    if not folder.is_dir():
        return False
    names = [p.suffix.lower() for p in folder.iterdir() if p.is_file()]
    return ".emd" in names and any(s in names for s in (".safetensors", ".dlpk", ".pth"))


def check_package_folder(folder: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to write a model package to ``folder`` where that would replace something.

    Writing a package replaces the whole folder: a package already there only with ``overwrite``, a folder
    holding anything else never (it is not ours to delete).
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise LandcoverError(f"{folder}: exists and is not a folder; choose another folder for the model package")
    if not any(folder.iterdir()):
        return
    if not _is_package(folder):
        raise LandcoverError(f"{folder}: folder is not empty and holds no model package; choose another folder "
                             f"for the model package ({arg('overwrite', True)} only replaces a model package)")
    if not overwrite:
        raise LandcoverError(f"{folder}: already holds a model package; add {arg('overwrite', True)} to "
                             "replace it, or choose another folder")


def _backbone_of(weights: dict[str, torch.Tensor]) -> str | None:
    """The backbone whose encoder layout (block type, blocks per stage) the U-Net weights have, if any."""
    bottleneck = "encoder.layer1.0.conv3.weight" in weights
    blocks = tuple(len({k.split(".")[2] for k in weights if k.startswith(f"encoder.layer{i}.")}) for i in range(1, 5))
    for name, (block, layers) in BACKBONES.items():
        if tuple(layers) == blocks and (getattr(block, "expansion", 1) == 4) == bottleneck:
            return name
    return None


def _lr_text(rates: list[float]) -> str:
    """The rates as ``fit`` records them: one number, or the slice they were spread from."""
    lo, hi = min(rates), max(rates)
    return f"{hi:.4e}" if lo == hi else f"slice('{lo:.4e}', '{hi:.4e}', None)"


def _new_checkpoint_dir(working_dir: Path) -> Path:
    """``<working_dir>/models/checkpoints/<date>_<time>``, with a suffix if a run this second took that name."""
    return _stamped_folder(Path(working_dir) / "models" / "checkpoints")


def _stamped_folder(base: Path) -> Path:
    """``<base>/<date>_<time>`` (not created), with a suffix if a run this second took that name."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = base / stamp, 2
    while folder.exists():
        folder, n = base / f"{stamp}-{n}", n + 1
    return folder


def _savefig(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _display(fig: Figure) -> None:
    """Show a figure in Jupyter; elsewhere figures are only returned or saved."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(fig)


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's start-up banners and tips; our progress table says what matters."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            # Resuming without early stopping: the checkpoint's EarlyStopping state is simply not used.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`.*")
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty.*")
            # Resuming from a checkpoint that was moved or copied: only its best score is not carried over.
            warnings.filterwarnings("ignore", message="The dirpath has changed from .*")
            # Lightning 2.6 with torch 2.13 trips over its own deprecated pytree call; nothing for users to do.
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
