"""Models made with arcgis.learn: a ``UnetClassifier`` package (``.emd`` + fastai ``.pth``) as a landcover package.

arcgis.learn (ArcGIS API for Python) saves a UnetClassifier as ``<name>.emd`` (``Framework:
arcgis.learn.models._inferencing``, ``ModelConfiguration: _unet``, ``ModelName: UnetClassifier``) and
``<name>.pth``, the state dict of fastai v1's DynamicUnet on a torchvision ResNet
(:mod:`landcover.model.dynamic_unet` rebuilds it key for key). This module reads those conventions:

- **Classes.** The model's output index 0 is NoData; index ``i`` (1..n) is a class value: the value itself
  when ``[0] + values`` are contiguous (arcgis.learn then trains on the label values as they are), otherwise
  the ``i``-th class of the ``.emd``'s ``Classes`` (labels were remapped in that order). landcover packages
  keep classes sorted by value with index ``i`` = ``i``-th class, so the classifier's output rows are put in
  that order once, when the ``.pth`` is read; ``ignore_mapped_class`` (indices) becomes class values.
- **Input scaling.** RGB models: ``x / 255`` then ImageNet mean/std. Multispectral models (the ``.emd`` has
  ``NormalizationStats``, per original band, picked by ``ExtractBands``): ``(x - min) / ((max - min) + 1e-5)``
  then ``(x' - scaled_mean) / scaled_std``. Both are affine per band, so they are stored as the package's raw
  ``mean``/``std``: ``mean = min + scaled_mean * range``, ``std = scaled_std * range``.
- **Weights** are read with ``torch.load(weights_only=True)``: tensors and plain values only, nothing in the
  file runs. fastai's ``save(with_opt=True)`` dict ``{"model": ..., "opt": ...}`` gives its ``model``.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings
import zipfile

import torch

from ..classes import classes_from_esri
from ..errors import LandcoverError
from ..model import BACKBONES
from ..model.dynamic_unet import DynamicUnet

#: the package ``.emd``/``extra`` entry naming the network to build (absent: landcover's own U-Net)
ARCHITECTURE_KEY = "ModelArchitecture"
#: its value for fastai v1's DynamicUnet (arcgis.learn's UnetClassifier)
DYNAMIC_UNET = "fastai.DynamicUnet"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REQUIRED = ("ModelFile", "Classes", "ImageHeight", "ExtractBands")


def is_arcgis_learn(emd: dict) -> bool:
    """Whether a model definition was written by arcgis.learn (any model kind; ``_unet`` is its UnetClassifier's
    configuration whatever the Framework says)."""
    return (str(emd.get("Framework", "")).lower().startswith("arcgis.learn") or "ArcGISLearnVersion" in emd
            or emd.get("ModelConfiguration") == "_unet")


def _kind(emd: dict) -> str:
    name = emd.get("ModelName")
    if name:
        return str(name)
    config = emd.get("ModelConfiguration")
    if isinstance(config, dict):
        config = config.get("Name")
    return "UnetClassifier" if config == "_unet" else str(config or "unnamed")


def model_class_values(entries: list[dict]) -> list[int]:
    """Class values in the order of the model's output indices 1..n, by arcgis.learn's convention."""
    values = [int(e.get("Value", e.get("ClassValue"))) for e in entries]
    values = [v for v in values if v != 0]
    if len(set(values)) != len(values):
        raise ValueError(f"class values repeat: {values}")
    if sorted([0, *values]) == list(range(len(values) + 1)):
        return sorted(values)  # contiguous: trained on the label values themselves, index = value
    return values  # remapped: index i = the i-th class of the .emd


def package_fields(emd: dict, where: str) -> dict:
    """:class:`~landcover.package.ModelPackage` fields from an arcgis.learn UnetClassifier ``.emd``."""
    kind = _kind(emd)
    if kind != "UnetClassifier":
        raise LandcoverError(f"{where}: an arcgis.learn {kind} model; landcover runs arcgis.learn UnetClassifier "
                             "(pixel classification) models only")
    missing = [k for k in _REQUIRED if k not in emd]
    if missing:
        raise LandcoverError(f"{where}: arcgis.learn model definition is missing key(s) {', '.join(missing)}")
    try:
        params = emd.get("ModelParameters") or {}
        backend = str(emd.get("backend") or params.get("backend") or "pytorch")
        if backend.lower() != "pytorch":
            raise LandcoverError(f"{where}: an arcgis.learn UnetClassifier with backend {backend!r}; landcover "
                                 "runs the PyTorch ones (backend 'pytorch')")
        backbone = str(params.get("backbone", "resnet34"))  # arcgis.learn's default backbone
        if backbone not in BACKBONES:
            raise LandcoverError(f"{where}: an arcgis.learn UnetClassifier on {backbone!r}; landcover runs those on "
                                 f"{', '.join(BACKBONES)}")
        if not all(isinstance(b, int) for b in emd["ExtractBands"]):
            raise LandcoverError(f"{where}: ExtractBands {emd['ExtractBands']} are not band indices; give the "
                                 ".emd band numbers (0-based) as arcgis.learn writes them")
        bands = [int(b) for b in emd["ExtractBands"]]
        order = model_class_values(emd["Classes"])
        mean, std, dtype = input_scaling(emd, bands, where)
        cell = emd.get("MinCellSize") if isinstance(emd.get("MinCellSize"), dict) else None
        names = emd.get("Bands") if isinstance(emd.get("Bands"), list) else []
        by_index = [0, *order]
        ignored = [by_index[int(i)] for i in emd.get("ignore_mapped_class") or [] if 0 < int(i) < len(by_index)]
        extra: dict = {ARCHITECTURE_KEY: DYNAMIC_UNET}
        if "accuracy" in emd:
            extra["accuracy"] = emd["accuracy"]
        if isinstance(params, dict) and set(params) - {"backbone", "backend"}:
            extra["ModelParameters"] = dict(params)  # arcgis.learn's constructor options (class_balancing, ...)
        fields = dict(
            classes=classes_from_esri(emd["Classes"]), backbone=backbone, extract_bands=bands, mean=mean, std=std,
            tile_size=int(emd["ImageHeight"]),
            band_names=[str(names[b]) for b in bands] if names and max(bands) < len(names) else [],
            input_dtype=dtype, nodata=None,
            cell_size=(float(cell["x"]), float(cell["y"])) if cell else None,
            crs_wkt=((cell or {}).get("spatialReference") or {}).get("wkt") or None,
            ignore_classes=ignored, extra=extra)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise LandcoverError(f"{where}: malformed arcgis.learn model definition ({type(exc).__name__}: "
                             f"{exc})") from None
    if not fields["classes"]:
        raise LandcoverError(f"{where}: model definition lists no classes")
    return fields


def _stat(stats: dict, key: str, bands: list[int], where: str) -> list[float]:
    values = stats.get(key)
    if not isinstance(values, list) or not values:
        raise LandcoverError(f"{where}: NormalizationStats has no {key}")
    if max(bands) < len(values):
        return [float(values[b]) for b in bands]  # per original band, as arcgis.learn writes them
    if len(values) == len(bands):
        return [float(v) for v in values]  # already per model input band
    raise LandcoverError(f"{where}: NormalizationStats {key} has {len(values)} values, ExtractBands reads "
                         f"band(s) {bands}")


def input_scaling(emd: dict, bands: list[int], where: str) -> tuple[list[float], list[float], str]:
    """Per model input band ``(mean, std)`` in raw pixel units (``x_norm = (x - mean) / std``) and the
    pixel type the model expects, from arcgis.learn's conventions."""
    stats = emd.get("NormalizationStats")
    if not isinstance(stats, dict) or not stats:
        if len(bands) != 3:
            raise LandcoverError(f"{where}: a multispectral arcgis.learn model ({len(bands)} bands) without "
                                 "NormalizationStats; its .emd is incomplete")
        # x / 255, then ImageNet mean/std
        return [255.0 * m for m in IMAGENET_MEAN], [255.0 * s for s in IMAGENET_STD], "uint8"
    lo, hi = _stat(stats, "band_min_values", bands, where), _stat(stats, "band_max_values", bands, where)
    s_mean = _stat(stats, "scaled_mean_values", bands, where)
    s_std = _stat(stats, "scaled_std_values", bands, where)
    mean, std = [], []
    for mn, mx, sm, ss in zip(lo, hi, s_mean, s_std, strict=True):
        mx = mx + 1.0 if mx == mn else mx  # arcgis.learn's guards for constant bands
        ss = ss + 0.01 if ss == 0 else ss
        span = (mx - mn) + 1e-5
        mean.append(mn + sm * span)
        std.append(ss * span)
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise LandcoverError(f"{where}: NormalizationStats give a non-positive or non-finite scale")
    # The .emd does not record the imagery's pixel type (the statistics do not tell uint16 from float32 counts):
    # "" leaves classify's pixel-type check out, so any type of the same bands is taken.
    return mean, std, ""


def read_state_dict(emd: dict, data: bytes, where: str) -> dict[str, torch.Tensor]:
    """The DynamicUnet weights of an arcgis.learn ``.pth`` (tensors only, no code run), with the classifier's
    output rows in landcover's class order."""
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols, which are read all the same
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise LandcoverError(f"{where}: refused: the weights file holds a pickled Python object{what}, not only "
                             "tensors; landcover does not run code from model files") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise LandcoverError(f"{where}: not a readable PyTorch weights file ({reason})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # fastai's save(with_opt=True): {"model": ..., "opt": ...}; the optimizer is not needed
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise LandcoverError(f"{where}: does not hold a state dict of tensors (fastai's learn.save output)")
    head = "layers.12.0" if "layers.12.0.weight" in obj else "layers.11.0"
    if f"{head}.weight" not in obj or "layers.0.0.weight" not in obj:
        raise LandcoverError(f"{where}: not the weights of a fastai DynamicUnet (arcgis.learn UnetClassifier)")
    order = model_class_values(emd["Classes"])
    outputs, bands = int(obj[f"{head}.weight"].shape[0]), int(obj["layers.0.0.weight"].shape[1])
    if outputs != len(order) + 1:
        raise LandcoverError(f"{where}: the model predicts {outputs} classes (with NoData), the .emd lists "
                             f"{len(order)} classes; the .emd and .pth are not of the same model")
    if bands != len(emd["ExtractBands"]):
        raise LandcoverError(f"{where}: the model takes {bands} bands, the .emd's ExtractBands "
                             f"{emd['ExtractBands']}; the .emd and .pth are not of the same model")
    perm = [0] + [1 + order.index(v) for v in sorted(order)]
    if perm != sorted(perm):
        obj = dict(obj)
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in obj:
                obj[key] = obj[key][perm].clone()
    return obj


def build_model(pkg) -> DynamicUnet:
    """The DynamicUnet of a package whose ``extra`` names it, with the package's weights, in eval mode."""
    if pkg.state_dict is None:
        return DynamicUnet(pkg.in_channels, pkg.num_classes, pkg.backbone).eval()
    where = str(pkg.path or "package")
    model = DynamicUnet.from_state_dict(pkg.state_dict, pkg.backbone, where)
    if model.in_channels != pkg.in_channels or model.num_classes != pkg.num_classes:
        raise LandcoverError(f"{where}: the weights take {model.in_channels} bands and predict {model.num_classes} "
                             f"classes, the model definition says {pkg.in_channels} and {pkg.num_classes}")
    return model
