"""Model packages: an Esri-compatible ``.emd`` + safetensors weights in a folder, zipped as ``.dlpk``.

A package is everything inference needs, so a model cannot be applied with the wrong bands or scaling:
classes (values, names, colours), the bands and their order, the normalization statistics, the tile size,
the cell size and CRS of the training data, and the weights.

Packages are untrusted input. Weights are safetensors (no pickle); a ``.dlpk`` is read in place from the zip
after every member name is checked (no absolute paths, no ``..``, no links), and nothing in it is executed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .classes import ClassInfo, classes_from_esri
from .errors import LandcoverError
from .interop.arcgis_pro import FUNCTION_FILE, function_files
from .model import BACKBONES, UNet, has_input_skip

#: keys a package's .emd must have for us to rebuild the model
REQUIRED_EMD_KEYS = ("ModelFile", "Classes", "ImageHeight", "ExtractBands", "ModelParameters", "NormalizationStats")

_MAX_MEMBER_BYTES = 4 << 30  # refuse zip members that claim more than 4 GiB (zip bombs)


@dataclass
class ModelPackage:
    """A trained model and what is needed to apply it.

    Class index ``i + 1`` of the model output is ``classes[i]``; index 0 is NoData/background.
    ``mean``/``std`` are per model input band in raw pixel units: ``x_norm = (x - mean) / std``.
    ``extract_bands`` are 0-based indices of the input raster's bands fed to the model, in order.
    """

    classes: list[ClassInfo]
    backbone: str
    extract_bands: list[int]
    mean: list[float]
    std: list[float]
    tile_size: int
    band_names: list[str] = field(default_factory=list)
    input_dtype: str = "uint8"
    nodata: float | None = None
    cell_size: tuple[float, float] | None = None
    crs_wkt: str | None = None
    ignore_classes: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] | None = None
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        """Model output channels: the classes plus index 0 (NoData/background)."""
        return len(self.classes) + 1

    @property
    def in_channels(self) -> int:
        return len(self.extract_bands)

    @property
    def index_to_value(self) -> np.ndarray:
        """Lookup array from model class index to class value (index 0 -> 0)."""
        return np.array([0] + [c.value for c in self.classes], dtype=np.uint8)

    def build_model(self) -> torch.nn.Module:
        """The U-Net with this package's weights, in eval mode (fastai's DynamicUnet where ``extra`` says so)."""
        from .interop import arcgis_learn

        if self.extra.get(arcgis_learn.ARCHITECTURE_KEY) == arcgis_learn.DYNAMIC_UNET:
            return arcgis_learn.build_model(self)
        # packages saved before the U-Net's input skip have none: their weights say which network they are
        skip = self.state_dict is None or has_input_skip(self.state_dict)
        model = UNet(self.in_channels, self.num_classes, self.backbone, input_skip=skip)
        if self.state_dict is not None:
            own = model.state_dict()
            where = self.path or "package"
            for key, value in self.state_dict.items():
                if key not in own:
                    raise LandcoverError(f"{where}: weights hold an unexpected layer {key} (tampered package?)")
                if own[key].shape != value.shape:
                    raise LandcoverError(
                        f"{where}: layer {key} has shape {tuple(value.shape)}, the model expects "
                        f"{tuple(own[key].shape)}"
                    )
            missing = [k for k in own if k not in self.state_dict]
            if missing:
                raise LandcoverError(f"{where}: weights are missing layer {missing[0]}")
            model.load_state_dict(self.state_dict)
        return model.eval()

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Scale raw pixels (bands, ...) of the extracted bands to the model's input, as float32."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        out = x.astype(np.float32)  # a new array: the in-place steps below do not touch x
        out -= mean
        out /= std
        return out

    # --- emd ---------------------------------------------------------------------------------------------

    def to_emd(self, model_file: str) -> dict:
        """The ``.emd`` document: Esri's keys first, then ours."""
        cell = None
        if self.cell_size is not None:
            cell = {"x": self.cell_size[0], "y": self.cell_size[1],
                    "spatialReference": {"wkt": self.crs_wkt or ""}}
        emd = {
            "Framework": "PyTorch",
            "ModelConfiguration": "landcover.UnetClassifier",
            "ModelType": "ImageClassification",
            "ModelName": "UnetClassifier",
            "Version": __version__,
            "ModelFile": model_file,
            # The Python raster function every package carries (interop.arcgis_pro): what ArcGIS Pro runs.
            "InferenceFunction": FUNCTION_FILE,
            "ModelFormat": "NCHW",
            "ImageHeight": int(self.tile_size),
            "ImageWidth": int(self.tile_size),
            "ImageSpaceUsed": "MAP_SPACE",
            "ExtractBands": [int(b) for b in self.extract_bands],
            "SupportsVariableTileSize": True,
            # No ModelPadding: in Esri's meaning it is padding the model itself needs (making the tool offer no
            # padding argument); ours has none, and the raster function takes arcgis.learn's padding argument.
            "Classes": [c.to_esri() for c in self.classes],
            "ModelParameters": {"backbone": self.backbone, "backend": "pytorch"},
            # RGB only when the model reads the first three bands as 8-bit (e.g. NIR, red, green of a 4-band
            # raster is multispectral)
            "IsMultispectral": list(self.extract_bands) != [0, 1, 2] or self.input_dtype != "uint8",
            "ignore_mapped_class": [i + 1 for i, c in enumerate(self.classes) if c.value in self.ignore_classes],
        }
        if cell:
            emd["MinCellSize"] = emd["MaxCellSize"] = cell
        emd.update({
            "LandcoverVersion": __version__,
            "BandNames": list(self.band_names),
            "InputDataType": self.input_dtype,
            "NoDataValue": self.nodata,
            "NormalizationStats": {"band_mean_values": [float(v) for v in self.mean],
                                   "band_std_values": [float(v) for v in self.std]},
            "IgnoreClasses": [int(v) for v in self.ignore_classes],
        })
        emd.update(self.extra)
        return emd

    @classmethod
    def from_emd(cls, emd: dict, where: str) -> ModelPackage:
        missing = [k for k in REQUIRED_EMD_KEYS if k not in emd]
        # An export's .emd: ArcGIS's template has "Framework": "e.g. CNTK"; some carry the export's MetaDataMode.
        if missing and (emd.get("MetaDataMode") or str(emd.get("Framework", "")).startswith("e.g.")):
            raise LandcoverError(f"{where}: this is the definition of exported training chips, not of a trained "
                                 "model; train one (landcover train) and give its package")
        from .interop import arcgis_learn

        if arcgis_learn.is_arcgis_learn(emd):
            return cls(**arcgis_learn.package_fields(emd, where))
        framework = emd.get("Framework")
        if framework is not None and str(framework).lower() != "pytorch":
            raise LandcoverError(f"{where}: a {framework} model; landcover runs its own packages (PyTorch) and "
                                 "arcgis.learn UnetClassifier packages")
        if missing:
            raise LandcoverError(f"{where}: model definition is missing key(s) {', '.join(missing)}")
        try:
            params = emd["ModelParameters"]
            backbone = params["backbone"]
            norm = emd["NormalizationStats"]
            cell = emd.get("MinCellSize")
            known = set(_OWN_KEYS)
            pkg = cls(
                classes=classes_from_esri(emd["Classes"]),
                backbone=backbone,
                extract_bands=[int(b) for b in emd["ExtractBands"]],
                mean=[float(v) for v in norm["band_mean_values"]],
                std=[float(v) for v in norm["band_std_values"]],
                tile_size=int(emd["ImageHeight"]),
                band_names=list(emd.get("BandNames", [])),
                input_dtype=str(emd.get("InputDataType", "uint8")),
                nodata=emd.get("NoDataValue"),
                cell_size=(float(cell["x"]), float(cell["y"])) if cell else None,
                crs_wkt=(cell or {}).get("spatialReference", {}).get("wkt") or None,
                ignore_classes=[int(v) for v in emd.get("IgnoreClasses", [])],
                extra={k: v for k, v in emd.items() if k not in known},
            )
            if isinstance(params, dict) and set(params) - {"backbone", "backend"}:
                pkg.extra["ModelParameters"] = dict(params)  # training options, kept for from_model and re-saving
        except (KeyError, TypeError, ValueError) as exc:
            raise LandcoverError(f"{where}: malformed model definition ({type(exc).__name__}: {exc})") from None
        if backbone not in BACKBONES:
            raise LandcoverError(f"{where}: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
        if not pkg.classes:
            raise LandcoverError(f"{where}: model definition lists no classes")
        if not (len(pkg.mean) == len(pkg.std) == len(pkg.extract_bands)):
            raise LandcoverError(f"{where}: NormalizationStats do not match ExtractBands")
        return pkg


# Keys that to_emd() derives from the dataclass fields; everything else in a loaded emd goes to `extra`.
_OWN_KEYS = (
    "Framework", "ModelConfiguration", "ModelType", "ModelName", "Version", "ModelFile", "InferenceFunction",
    "ModelFormat", "ImageHeight",
    "ImageWidth", "ImageSpaceUsed", "ExtractBands", "SupportsVariableTileSize", "ModelPadding", "Classes",
    "ModelParameters", "IsMultispectral", "ignore_mapped_class", "MinCellSize", "MaxCellSize", "LandcoverVersion",
    "BandNames", "InputDataType", "NoDataValue", "NormalizationStats", "IgnoreClasses",
)


def save_package(pkg: ModelPackage, folder: str | os.PathLike, name: str | None = None,
                 files: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write ``folder/<name>.emd``, ``<name>.safetensors``, extra ``files`` and ``<name>.dlpk``; returns folder.

    ``files`` maps a relative name inside the package (e.g. ``"ModelCharacteristics/loss_graph.png"``) to a
    file to copy there. The folder is assembled beside its final place and renamed when complete.
    """
    from safetensors.torch import save

    folder = Path(folder)
    name = name or folder.name
    if pkg.state_dict is None:
        raise LandcoverError(f"{folder}: nothing to save, the package has no weights")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in pkg.state_dict.items()}
        # save() to bytes, then a plain write: the file gets the usual permissions (save_file's are 0600)
        (tmp / f"{name}.safetensors").write_bytes(save(weights, metadata={"format": "pt", "landcover": __version__}))
        (tmp / f"{name}.emd").write_text(json.dumps(pkg.to_emd(f"{name}.safetensors"), indent=4))
        for rel, data in function_files().items():  # the raster function ArcGIS runs, and its U-Net
            (tmp / rel).write_bytes(data)
        for rel, src in (files or {}).items():
            dst = tmp / _safe_member(rel, str(folder))
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        # The .dlpk is a plain zip of the folder's files at the archive root, as arcgis.learn makes it.
        dlpk_tmp = tmp.parent / f".{name}.dlpk.partial"
        with zipfile.ZipFile(dlpk_tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                # Float weights barely compress: storing them saves seconds per save and load.
                kind = zipfile.ZIP_STORED if f.suffix in (".safetensors", ".png") else zipfile.ZIP_DEFLATED
                zf.write(f, f.relative_to(tmp).as_posix(), compress_type=kind)
        os.replace(dlpk_tmp, tmp / f"{name}.dlpk")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _safe_member(name: str, where: str) -> str:
    """A zip/package member name, or a LandcoverError if it could escape the package folder."""
    n = name.replace("\\", "/")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in parts or not parts:
        raise LandcoverError(f"{where}: package member {name!r} points outside the package (refused)")
    return "/".join(parts)


def load_package(path: str | os.PathLike) -> ModelPackage:
    """Load a package from its ``.emd``, its ``.dlpk`` or its folder."""
    path = Path(path)
    if not path.exists():
        raise LandcoverError(f"{path}: model not found (give a .emd, a .dlpk or a package folder)")
    if path.is_dir():
        emds = sorted(path.glob("*.emd"))
        if len(emds) != 1:
            dlpks = sorted(path.glob("*.dlpk"))
            if not emds and len(dlpks) == 1:
                return load_package(dlpks[0])
            raise LandcoverError(f"{path}: expected one .emd in the folder, found {len(emds)}")
        path = emds[0]
    if path.suffix.lower() == ".dlpk":
        return _load_dlpk(path)
    if path.suffix.lower() != ".emd":
        raise LandcoverError(f"{path}: not a model package (give a .emd, a .dlpk or a package folder)")
    emd = _parse_emd(path.read_bytes(), str(path))
    pkg = ModelPackage.from_emd(emd, str(path))
    model_file = path.parent / _safe_member(str(emd["ModelFile"]), str(path))
    if not model_file.is_file():
        raise LandcoverError(f"{path}: weights file {emd['ModelFile']} is missing")
    from .interop import arcgis_learn

    data, where = model_file.read_bytes(), str(model_file)
    # arcgis.learn's .pth (torch.load(weights_only=True)); landcover's own weights are safetensors only
    pkg.state_dict = arcgis_learn.read_state_dict(emd, data, where) if arcgis_learn.is_arcgis_learn(emd) \
        else _read_weights(data, where)
    pkg.path = path
    return pkg


def _parse_emd(data: bytes, where: str) -> dict:
    try:
        emd = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LandcoverError(f"{where}: model definition is not valid JSON ({exc})") from None
    if not isinstance(emd, dict):
        raise LandcoverError(f"{where}: model definition is not a JSON object")
    return emd


def _read_weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not where.endswith(".safetensors"):
        raise LandcoverError(f"{where}: weights must be .safetensors (pickled weights are refused)")
    try:
        return load(data)
    except Exception as exc:
        raise LandcoverError(f"{where}: corrupt weights file ({str(exc).splitlines()[0][:200]})") from None


def _load_dlpk(path: Path) -> ModelPackage:
    """Read a .dlpk in place: validate every member, then read the .emd and the weights from the zip."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LandcoverError(f"{path}: not a valid .dlpk (zip) file ({exc})") from None
    with zf:
        members = {}
        for info in zf.infolist():
            safe = _safe_member(info.filename, str(path))
            if stat.S_ISLNK(info.external_attr >> 16):
                raise LandcoverError(f"{path}: package member {info.filename!r} is a link (refused)")
            if info.file_size > _MAX_MEMBER_BYTES:
                raise LandcoverError(f"{path}: package member {info.filename!r} is implausibly large (refused)")
            members[safe] = info
        emds = [m for m in members if m.endswith(".emd") and "/" not in m]
        if len(emds) != 1:
            raise LandcoverError(f"{path}: expected one .emd at the package root, found {len(emds)}")
        try:
            emd = _parse_emd(zf.read(members[emds[0]]), f"{path}:{emds[0]}")
            pkg = ModelPackage.from_emd(emd, f"{path}:{emds[0]}")
            model_file = _safe_member(str(emd["ModelFile"]), str(path))
            if model_file not in members:
                raise LandcoverError(f"{path}: weights file {emd['ModelFile']} is missing from the package")
            from .interop import arcgis_learn

            data, where = zf.read(members[model_file]), f"{path}:{model_file}"
            pkg.state_dict = arcgis_learn.read_state_dict(emd, data, where) if arcgis_learn.is_arcgis_learn(emd) \
                else _read_weights(data, where)
        except (zipfile.BadZipFile, zlib.error, OSError) as exc:
            raise LandcoverError(f"{path}: corrupt .dlpk ({exc})") from None
    pkg.path = path
    return pkg


