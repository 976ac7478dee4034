"""``UnetClassifier``: the arcgis.learn verbs (``lr_find``, ``fit``, metrics, ``show_results``, ``save``,
``from_model``) over a plain-torch U-Net trained with Lightning.

The class is assembled from its roles: construction, learning rate and training here; validation metrics and
figures in :mod:`.evaluation`; packages (``save``, ``from_model``, ``export_onnx``) in :mod:`.packaging`;
checks of a checkpoint to resume from in :mod:`.resume`; shared argument checks in :mod:`.checks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..classes import ClassInfo
from ..errors import LandcoverError, arg, warn
from ..model import BACKBONES, UNet, has_input_skip, load_pretrained_encoder
from ..model.weights import start_encoder
from ..package import load_package
from ..raster import check_writable_dir
from .checks import _check_dice_average, _check_flag, _importable
from .evaluation import EvaluationMixin
from .figures import lr_figure
from .losses import SegmentationLoss, class_weights
from .lr_find import lr_range_test, suggest_lr
from .module import on_cuda, resolve_precision
from .packaging import TRAINING_DEFAULTS, PackagingMixin, check_package_folder
from .recipe import (
    AnnealedCheckpoint,
    AnnealedEarlyStopping,
    BestWeights,
    auto_backbone,
    auto_epochs,
    judged_from,
)
from .resume import check_resume

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data import ClassifiedTilesData
    from ..threads import ThreadPlan

__all__ = ["MIN_DELTA", "MONITORS", "PATIENCE", "TENSORBOARD_FOLDER", "TENSORBOARD_MISSING", "TRAINING_DEFAULTS",
           "UnetClassifier", "check_package_folder"]

#: metrics ``fit(monitor=...)`` can watch, and whether lower or higher is better
MONITORS = {"valid_loss": "min", "accuracy": "max", "miou": "max"}
#: early stopping: epochs without an improvement of at least MIN_DELTA before training stops
PATIENCE, MIN_DELTA = 5, 0.001
TENSORBOARD_MISSING = "TensorBoard logging needs TensorBoard's writer: pip install tensorboard (or tensorboardX)"
#: the folder under ``data.path`` that ``fit(tensorboard=True)`` logs to, as arcgis.learn
TENSORBOARD_FOLDER = "training_log"


class UnetClassifier(EvaluationMixin, PackagingMixin):
    """A U-Net pixel classifier (ResNet-18/34/50 encoder, any number of bands) for land cover.

    ``data``: from :func:`~landcover.prepare_data`. The encoder starts from ImageNet weights (downloaded once
    into the cache; offline, a warning and random weights) unless ``pretrained=False``; ``pretrained`` may also
    name published weights for satellite bands (``"ssl4eo-s2"``, ``"ssl4eo-landsat"`` ..., see
    :mod:`landcover.model.weights`), matched to the bands by name. ``pretrained_path``: a torchvision/timm
    ImageNet ResNet checkpoint (file or URL; the first convolution is adapted to the band count), a saved
    landcover model (``.emd``, ``.dlpk`` or folder; its head is kept when the classes match) or a weights name. ``class_balancing`` weights the
    loss by inverse class frequency; ``focal_loss`` uses focal CE; ``dice_loss_fraction`` mixes in a Dice loss,
    ``dice_loss_average`` ``"micro"`` (one Dice over all labelled pixels, the default) or ``"macro"`` (the mean
    of the per-class Dice over the classes in the batch); ``ignore_classes`` (class values) incur no loss and are
    left out of the mean IoU. ``mixup``: train on batches mixed with a shuffled copy of themselves, with the
    loss mixed to match (Beta(0.4, 0.4), as arcgis.learn); validation is unchanged. ``mixup`` and
    ``dice_loss_average`` are recorded in the package's ``ModelParameters``. ``backbone="auto"``: sized from
    the data (:func:`~.recipe.auto_backbone`: ResNet-18 for small sets, else ResNet-34).
    """

    def __init__(self, data: ClassifiedTilesData, backbone: str = "resnet34",
                 pretrained_path: str | os.PathLike | None = None, class_balancing: bool = False,
                 focal_loss: bool = False, dice_loss_fraction: float = 0.0, ignore_classes=(),
                 mixup: bool = False, dice_loss_average: str = "micro",
                 pretrained: bool | str | os.PathLike = True):
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
        self.backbone = auto_backbone(data) if backbone == "auto" else backbone
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
        self.net = UNet(len(self.band_names), len(self.classes) + 1, self.backbone)
        self._init_state()
        # What the encoder starts from (ImageNet by default), recorded in the package's .emd
        self._extra["PretrainedWeights"] = start_encoder(self.net.encoder, self.band_names, pretrained_path,
                                                         pretrained, self._load_pretrained)

    def _init_state(self) -> None:
        self.history_train: list[tuple[int, float]] = []
        self.history_valid: list[tuple[int, float]] = []
        self.lr_finder: dict | None = None
        self.checkpoint_path: Path | None = None
        self.last_checkpoint: Path | None = None
        #: the last CPU fit's thread split (torch threads + DataLoader workers), for its summary line
        self.threads: ThreadPlan | None = None
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
            if pkg.state_dict is not None and not has_input_skip(pkg.state_dict):
                # a model saved before the U-Net's input skip: keep its architecture, to reuse all its weights
                self.net = UNet(len(self.band_names), len(self.classes) + 1, self.backbone, input_skip=False)
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
                warn(f"{text}: the model was trained on bands {theirs} (0-based) of its imagery, this one "
                     f"reads {self.extract_bands}; its first layer starts from weights learned on other "
                     "bands")
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
        net = pkg.build_model()
        if type(net) is not type(self.net) or getattr(net, "input_skip", None) != getattr(self.net, "input_skip",
                                                                                          None):
            # another architecture of the same backbone, bands and classes (an arcgis.learn DynamicUnet, or our
            # U-Net saved before its input skip): the package's network replaces this one's
            self.net = net
        else:
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
            # Discriminative rates (the first encoder stage at a tenth) protect pretrained features; an encoder
            # that starts from random weights has none to protect and learns at the decoder's rate.
            lr = found if self._extra.get("PretrainedWeights", {}).get("Name") == "none" else slice(found / 10, found)
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
        """Check that ``resume`` is a training checkpoint of this model; what resuming needs from it."""
        return check_resume(self, resume)

    # --- training ------------------------------------------------------------------------------------------

    def fit(self, epochs: int | None = 10, lr=None, one_cycle: bool = True, early_stopping: bool | int = False,
            checkpoint: bool = True, tensorboard: bool = False, monitor: str = "valid_loss",
            resume: str | os.PathLike | None = None,
            devices="auto", num_nodes: int = 1, strategy="auto", precision: str | None = None,
            accelerator: str = "auto", threads: int | None = None, **trainer_kwargs) -> UnetClassifier:
        """Train for ``epochs`` epochs with Lightning, printing one table row per epoch.

        ``lr``: a rate, ``slice(lo, hi)`` spread geometrically from the first encoder stage (lo) to the decoder
        and head (hi), or None to run :meth:`lr_find` and use ``slice(found/10, found)`` (``found`` for every
        layer when the encoder started from random weights: there are no pretrained features to protect). ``one_cycle``: the
        one-cycle schedule, else a constant rate. ``epochs=None``: sized from the data
        (:func:`~.recipe.auto_epochs`). ``early_stopping``: stop after 5 epochs (or this many, given a number)
        without ``monitor`` improving by 0.001; the best epoch's weights are restored at the end (from the
        checkpoint, or from memory with ``checkpoint=False``). Under one-cycle with early stopping, epochs of
        the first half (the rate's rise and peak, when validation jumps) are neither judged nor kept; a run
        stopped before (``max_time``) keeps its last weights. ``checkpoint``: keep the best epoch (by
        ``monitor``) and the last one under ``<working_dir>/models/checkpoints/<date>_<time>/``
        (``best-epoch=NNN.ckpt``, ``last.ckpt``), and
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
        autocast on a CPU with native bf16, else fp32. ``threads``: on a CPU, the compute threads of the run,
        torch threads and DataLoader worker processes together (default ``$LANDCOVER_THREADS``, else the cores;
        the split is in ``self.threads``). Other keyword arguments (e.g. ``callbacks``,
        ``limit_train_batches``) go to ``lightning.pytorch.Trainer``.
        """
        import lightning.pytorch as L

        from .callbacks import History
        from .module import SegmentationModule

        data = self._need_data("fit")
        epochs, patience, resumed = self._check_fit(data, epochs, early_stopping, monitor, resume, checkpoint)
        logger = self._tensorboard_logger(data) if _check_flag("tensorboard", tensorboard) else False
        precision = resolve_precision(precision, accelerator)
        device = self._device(accelerator)
        if device.type == "cpu":  # torch threads + DataLoader worker processes within the cores (landcover.threads)
            from ..threads import training_threads

            self.threads = training_threads(data.num_workers, threads)
            torch.set_num_threads(self.threads.threads)
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
        callbacks, best, ckpt = _fit_callbacks(data, epochs, one_cycle, patience, monitor, checkpoint, resume,
                                               bool(logger), [history, *trainer_kwargs.pop("callbacks", [])])
        with _quiet_lightning():
            trainer = L.Trainer(
                accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                precision=precision, max_epochs=epochs, callbacks=callbacks, logger=logger,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                enable_checkpointing=checkpoint, default_root_dir=str(data.working_dir), **trainer_kwargs)
            # Checkpoints are untrusted input: tensors and plain values only (checked in _check_resume too).
            trainer.fit(module, data.train_dl, data.valid_dl, ckpt_path=str(resume) if resume else None,
                        weights_only=True)
        # Back to the default layout: packages, show_results and inference see the same model as a loaded one.
        self.net.cpu().to(memory_format=torch.contiguous_format)
        self.is_main_process = trainer.is_global_zero
        self._keep_best(trainer, ckpt, best, monitor)
        self.history_train += history.train
        self.history_valid += history.valid
        self._steps += trainer.global_step
        self._lr_text, self._precision = lr_text, precision
        self._metrics = None
        if logger:
            logger.finalize("success")  # flush the event file now, not when the process ends
            self.tensorboard_dir = Path(logger.log_dir)
        return self

    def _check_fit(self, data: ClassifiedTilesData, epochs: int | None, early_stopping: bool | int, monitor: str,
                   resume: str | os.PathLike | None, checkpoint: bool) -> tuple[int, int, dict | None]:
        """fit's arguments checked: the epochs (sized from the data when None), the early-stopping patience (0:
        none) and what resuming needs from the checkpoint (None: a new run)."""
        if epochs is None:
            epochs = auto_epochs(data)
        patience = _patience(early_stopping)
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
        return int(epochs), patience, resumed

    def _keep_best(self, trainer, ckpt, best: BestWeights | None, monitor: str) -> None:
        """Restore the best epoch's weights (from its checkpoint, or from memory without checkpoints) and record
        the monitored value they reached; without either, the last epoch's weights and value stay."""
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
        elif best is not None and best.state is not None:
            self.net.load_state_dict(best.state)
            self._monitored = (monitor, float(best.best))
        elif monitor in trainer.callback_metrics:
            self._monitored = (monitor, float(trainer.callback_metrics[monitor]))

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



def _patience(early_stopping: bool | int) -> int:
    """Epochs early stopping waits (0 = none): ``PATIENCE`` for True, 0 for False, else the number given."""
    if isinstance(early_stopping, bool) or early_stopping is None:
        return PATIENCE if early_stopping else 0
    if not isinstance(early_stopping, int) or early_stopping < 0:
        raise LandcoverError(f"{arg('early_stopping', early_stopping)}: give True, False or the epochs to wait "
                             "for an improvement (a whole number; 0 = no early stopping)")
    return int(early_stopping)


def _fit_callbacks(data: ClassifiedTilesData, epochs: int, one_cycle: bool, patience: int, monitor: str,
                   checkpoint: bool, resume, log_rates: bool, extra: list) -> tuple[list, BestWeights | None,
                                                                                   AnnealedCheckpoint | None]:
    """fit's Lightning callbacks: the epoch table, ``extra``, the learning-rate log, early stopping and the
    checkpoints (or the in-memory best weights without them). Returns them with the two whose best weights fit
    restores at the end."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from .callbacks import ProgressTable

    callbacks: list = [ProgressTable(), *extra]
    if log_rates:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    mode = MONITORS[monitor]
    best = ckpt = None
    # With early stopping (the recipe), the high-rate first half of a one-cycle run is neither judged nor kept.
    start = judged_from(epochs, one_cycle) if patience else 0
    if patience:
        callbacks.append(AnnealedEarlyStopping(monitor=monitor, min_delta=MIN_DELTA, patience=patience, mode=mode,
                                               start_epoch=start))
        if not checkpoint:
            best = BestWeights(monitor, mode, start)
            callbacks.append(best)
    if checkpoint:
        # A resumed run keeps writing beside the checkpoint it resumed from.
        ckpt_dir = Path(resume).resolve().parent if resume else _new_checkpoint_dir(data.working_dir)
        ckpt = AnnealedCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor=monitor, mode=mode,
                                  save_top_k=1, start_epoch=start)
        # The latest epoch, to resume an interrupted run (Lightning's save_last only follows saves of the
        # best checkpoint, so an epoch that does not improve would not be kept).
        latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, monitor=None,
                                 enable_version_counter=False)
        callbacks += [ckpt, latest]
    return callbacks, best, ckpt


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
