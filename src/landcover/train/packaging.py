"""The package verbs of :class:`~landcover.train.UnetClassifier`: ``save`` (a model package) and
``from_model`` (a model from one), and checks on package folders."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LandcoverError, arg
from ..package import ModelPackage, load_package, save_package
from ..raster import check_writable_dir
from .checks import _bands_text
from .losses import DICE_AVERAGES
from .report import metrics_html

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data import ClassifiedTilesData
    from .classifier import UnetClassifier

#: the loss and augmentation options and their defaults (recorded in the package's ModelParameters)
TRAINING_DEFAULTS = {"class_balancing": False, "focal_loss": False, "dice_loss_fraction": 0.0,
                     "dice_loss_average": "micro", "mixup": False}


class PackagingMixin:
    """Saving and loading model packages; mixed into UnetClassifier."""


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
            save_package(self._as_package(extra), folder, name=folder.name, files=files)
        return folder

    def _as_package(self, extra: dict | None = None) -> ModelPackage:
        """This model as a package (in memory): its classes, bands, normalization and weights."""
        return ModelPackage(
            classes=self.classes, backbone=self.backbone, extract_bands=self.extract_bands,
            mean=self.mean, std=self.std, tile_size=self.tile_size, band_names=self.band_names,
            input_dtype=self.input_dtype, nodata=self.nodata, cell_size=self.cell_size, crs_wkt=self.crs_wkt,
            ignore_classes=self.ignore_classes, extra=dict(extra or {}), state_dict=self.net.state_dict())

    def export_onnx(self, path: str | os.PathLike, tile_size: int | None = None,
                    padding: int | None = None) -> Path:
        """Write the model as an ONNX model for QGIS's Deepness plugin; returns the path.

        The ONNX model takes Deepness's input (the bands divided by 255, tiles of ``tile_size``, default the
        chip size) with this model's normalization inside, outputs the class probabilities, and carries the
        metadata Deepness reads: class names, resolution (cm/px), tile size and overlap (``padding`` context
        pixels on each side, default a quarter of the tile). See :mod:`landcover.interop.qgis`.
        """
        from ..interop.qgis import export_deepness_onnx

        was_training = self.net.training
        try:
            return export_deepness_onnx(self._as_package(), path, tile_size, padding, model=self.net.eval())
        finally:
            self.net.train(was_training)

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


def _savefig(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
