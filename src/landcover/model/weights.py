"""Named pretrained encoder weights: where they are published, their checksums, bands and normalization.

``imagenet`` (torchvision's ResNet-18/34/50, as arcgis.learn starts from) is what a new model starts from by
default; ``ssl4eo-s2`` and the ``ssl4eo-landsat-*`` weights (self-supervised MoCo ResNet-18/50 published with
torchgeo) are for Sentinel-2 and Landsat imagery. Their first convolution is matched to the model's bands by
name (the export's band names: ``red``, ``B04``, ``nir``, ``SR_B5`` ...); bands without a match start as
today's adaptation of the pretrained kernels to another band count (see :func:`.pretrained.adapt_first_conv`).

Checksums: torchvision and torchgeo name each file ``<name>-<first 8 hex digits of its SHA-256>.pth``; those
prefixes are what is pinned here (the full digests are not published beside the URLs), and a download must
start with them.

Normalization: the weights were trained on inputs scaled as ``Normalization`` says. landcover feeds every model
its bands standardized by the training data's own mean and standard deviation, so the encoder's first layers
adapt to that during fine-tuning; the published scaling is recorded for reference.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LandcoverError, arg, on_command_line, warn
from .download import DownloadFailed, OfflineMode, cached_download, mirrored, weights_cache_dir
from .encoder import ResNetEncoder
from .pretrained import load_pretrained_encoder


class PretrainedWeightsWarning(UserWarning):
    """The default pretrained weights could not be had: training starts from random weights."""


@dataclass(frozen=True)
class NamedWeights:
    """Published encoder weights for some backbones, with the bands their first convolution reads."""

    name: str
    description: str
    #: backbone -> (published URL, SHA-256 or its published prefix)
    files: dict[str, tuple[str, str]]
    #: per input channel of the first convolution, in order: the names that band goes by (the first is its own)
    bands: tuple[tuple[str, ...], ...]
    normalization: str
    source: str

    def band_labels(self) -> list[str]:
        return [names[0] for names in self.bands]


def _bands(*spec: str) -> tuple[tuple[str, ...], ...]:
    """``"B02 blue"`` → ``("B02", "blue")``: each band's own name, then its aliases."""
    return tuple(tuple(s.split()) for s in spec)


_TV = "https://download.pytorch.org/models/"
_HF_L = "https://hf.co/torchgeo/ssl4eo_landsat/resolve/1c88bb51b6e17a21dde5230738fa38b74bd74f76/"
# ImageNet's RGB: "red"/"green"/"blue" bands of the user's imagery take their own kernels (as arcgis.learn does).
_RGB = _bands("red r", "green g", "blue b")
# Sentinel-2 L1C, the 13 bands of SSL4EO-S12 in torchgeo's order (B1 ... B8, B8A, B9 ... B12).
_S2 = _bands("B01 B1 coastal coastalaerosol coastalblue", "B02 B2 blue", "B03 B3 green", "B04 B4 red",
             "B05 B5 rededge1", "B06 B6 rededge2", "B07 B7 rededge3", "B08 B8 nir nearinfrared infrared",
             "B8A B08A nir08 nirnarrow narrownir rededge4", "B09 B9 watervapour watervapor nir09",
             "B10 cirrus", "B11 swir1 swir16 shortwaveinfrared1", "B12 swir2 swir22 shortwaveinfrared2")
_BLUE, _GREEN, _RED = "blue", "green", "red"
_NIR, _SWIR1, _SWIR2 = "nir nearinfrared infrared nir08", "swir1 swir16 shortwaveinfrared1", \
    "swir2 swir22 shortwaveinfrared2"
# Landsat, SSL4EO-L's bands per product (the Earth Engine collections it was drawn from, in their order).
_TM_TOA = _bands(f"B1 {_BLUE}", f"B2 {_GREEN}", f"B3 {_RED}", f"B4 {_NIR}", f"B5 {_SWIR1}",
                 "B6 thermal tir lwir lwir11", f"B7 {_SWIR2}")
_ETM_TOA = _bands(f"B1 {_BLUE}", f"B2 {_GREEN}", f"B3 {_RED}", f"B4 {_NIR}", f"B5 {_SWIR1}",
                  "B6_VCID_1 thermal1 thermallowgain", "B6_VCID_2 thermal2 thermalhighgain", f"B7 {_SWIR2}",
                  "B8 pan panchromatic")
_ETM_SR = _bands(f"SR_B1 B1 {_BLUE}", f"SR_B2 B2 {_GREEN}", f"SR_B3 B3 {_RED}", f"SR_B4 B4 {_NIR}",
                 f"SR_B5 B5 {_SWIR1}", f"SR_B7 B7 {_SWIR2}")
_OLI_TIRS_TOA = _bands("B1 coastal coastalaerosol coastalblue", f"B2 {_BLUE}", f"B3 {_GREEN}", f"B4 {_RED}",
                       f"B5 {_NIR}", f"B6 {_SWIR1}", f"B7 {_SWIR2}", "B8 pan panchromatic", "B9 cirrus",
                       "B10 thermal1 tirs1 lwir11", "B11 thermal2 tirs2 lwir12")
_OLI_SR = _bands("SR_B1 B1 coastal coastalaerosol coastalblue", f"SR_B2 B2 {_BLUE}", f"SR_B3 B3 {_GREEN}",
                 f"SR_B4 B4 {_RED}", f"SR_B5 B5 {_NIR}", f"SR_B6 B6 {_SWIR1}", f"SR_B7 B7 {_SWIR2}")
_SSL4EO_L = ("SSL4EO-L (Stewart et al. 2023, arXiv:2306.09424), MoCo v2, published with torchgeo "
             "(ResNet18_Weights/ResNet50_Weights.LANDSAT_*_MOCO)")
_SSL4EO_L_NORM = "reflectance rescaled to 0-255 (uint8) as in SSL4EO-L, divided by 255"


def _landsat(key: str, what: str, bands, r18: str, r50: str) -> NamedWeights:
    return NamedWeights(f"ssl4eo-landsat-{key}", f"Landsat {what}", {
        "resnet18": (f"{_HF_L}resnet18_landsat_{key.replace('-', '_')}_moco-{r18}.pth", r18),
        "resnet50": (f"{_HF_L}resnet50_landsat_{key.replace('-', '_')}_moco-{r50}.pth", r50)},
        bands, _SSL4EO_L_NORM, _SSL4EO_L)


#: the named weights ``pretrained=`` / ``--pretrained`` accept
WEIGHTS: dict[str, NamedWeights] = {w.name: w for w in (
    NamedWeights("imagenet", "ImageNet (torchvision IMAGENET1K_V1, as arcgis.learn)", {
        "resnet18": (f"{_TV}resnet18-f37072fd.pth", "f37072fd"),
        "resnet34": (f"{_TV}resnet34-b627a593.pth", "b627a593"),
        "resnet50": (f"{_TV}resnet50-0676ba61.pth", "0676ba61")},
        _RGB, "RGB / 255, then mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)", "torchvision"),
    NamedWeights("ssl4eo-s2", "Sentinel-2 L1C, 13 bands", {
        "resnet18": ("https://hf.co/torchgeo/resnet18_sentinel2_all_moco/resolve/"
                     "5b8cddc9a14f3844350b7f40b85bcd32aed75918/resnet18_sentinel2_all_moco-59bfdff9.pth",
                     "59bfdff9"),
        "resnet50": ("https://hf.co/torchgeo/resnet50_sentinel2_all_moco/resolve/"
                     "da4f3c9dbe09272eb902f3b37f46635fa4726879/resnet50_sentinel2_all_moco-df8b932e.pth",
                     "df8b932e")},
        _S2, "L1C digital numbers divided by 10000",
        "SSL4EO-S12 (Wang et al. 2022, arXiv:2211.07044), MoCo v3, published with torchgeo "
        "(ResNet18_Weights/ResNet50_Weights.SENTINEL2_ALL_MOCO)"),
    _landsat("oli-sr", "8-9 OLI surface reflectance, 7 bands", _OLI_SR, "660e82ed", "ff580dad"),
    _landsat("oli-tirs-toa", "8-9 OLI/TIRS top of atmosphere, 11 bands", _OLI_TIRS_TOA, "a3002f51", "de7f5e0f"),
    _landsat("etm-sr", "7 ETM+ surface reflectance, 6 bands", _ETM_SR, "4f078acd", "1266cde3"),
    _landsat("etm-toa", "7 ETM+ top of atmosphere, 9 bands", _ETM_TOA, "bb88689c", "e9a84d5a"),
    _landsat("tm-toa", "4-5 TM top of atmosphere, 7 bands", _TM_TOA, "1c691b4f", "ba1ce753"),
)}
#: ``ssl4eo-landsat``: the Landsat product whose bands match the model's best (see :func:`choose_landsat`)
LANDSAT = "ssl4eo-landsat"
NAMES = [*WEIGHTS, LANDSAT]


def _key(name: str) -> str:
    """Band names compared without case, spaces or punctuation: ``SR_B4`` ~ ``sr-b4``, ``Red`` ~ ``red``."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def match_bands(band_names: Sequence[str], weights: NamedWeights) -> list[int | None]:
    """For each of the model's bands, the input channel of ``weights`` with that name, or None."""
    lookup: dict[str, int] = {}
    for i, names in enumerate(weights.bands):
        for name in names:
            lookup.setdefault(_key(name), i)
    return [lookup.get(_key(b)) for b in band_names]


def choose_landsat(band_names: Sequence[str]) -> NamedWeights:
    """The SSL4EO-L product for these bands: most bands matched by name, then the same band count, then the
    order of :data:`WEIGHTS` (Landsat 8-9 first)."""
    landsat = [w for w in WEIGHTS.values() if w.name.startswith(LANDSAT + "-")]

    def score(w: NamedWeights) -> tuple[int, bool]:
        return sum(i is not None for i in match_bands(band_names, w)), len(w.bands) == len(band_names)

    return max(landsat, key=score)  # max keeps the first of equals


def is_named(source: object) -> bool:
    """Whether ``source`` names registered weights (and is not a file or folder of that name)."""
    return isinstance(source, str) and source.strip().lower() in NAMES and not Path(source).exists()


def _no_pretrained() -> str:
    return "--no-pretrained" if on_command_line() else "pretrained=False"


def _choose_source(pretrained_path, pretrained) -> tuple[str | os.PathLike | None, bool]:
    """(what to start from, whether it is only the default); None: random weights."""
    if isinstance(pretrained, bool) or pretrained is None:
        if pretrained_path is not None and pretrained is False:
            raise LandcoverError(f"{arg('pretrained_path', str(pretrained_path))} and {_no_pretrained()}: give "
                                 "one of them")
        if pretrained_path is not None:
            return pretrained_path, False
        return ("imagenet", True) if pretrained else (None, False)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise LandcoverError(f"pretrained={pretrained!r}: give True, False, the name of published weights "
                             f"({', '.join(NAMES)}) or a weights file")
    if pretrained_path is not None and str(pretrained_path) != str(pretrained):
        raise LandcoverError(f"{arg('pretrained_path', str(pretrained_path))} and pretrained={str(pretrained)!r}: "
                             "give one of them")
    return pretrained, False


def start_encoder(encoder: ResNetEncoder, band_names: Sequence[str], pretrained_path, pretrained,
                  load_file: Callable[[str | os.PathLike], None]) -> dict:
    """Give ``encoder`` the weights ``pretrained_path`` / ``pretrained`` ask for; what it started from.

    ``pretrained=True`` (the default) and no ``pretrained_path``: the ImageNet weights, downloaded once into the
    cache; when they cannot be downloaded a :class:`PretrainedWeightsWarning` says so and the encoder keeps its
    random weights. ``pretrained=False``: random weights. A name (``"ssl4eo-s2"``, ``"ssl4eo-landsat"`` ...):
    those published weights, an error if they cannot be had. Anything else (a file, URL or model package) goes
    to ``load_file``. The returned record goes into the model package's ``.emd`` (``PretrainedWeights``).
    """
    source, default = _choose_source(pretrained_path, pretrained)
    if source is None:
        return {"Name": "none"}
    if not is_named(source):
        load_file(source)
        return {"Source": str(source)}
    name = str(source).strip().lower()
    weights = choose_landsat(band_names) if name == LANDSAT else WEIGHTS[name]
    if encoder.backbone not in weights.files:
        have = " or ".join(weights.files)
        raise LandcoverError(f"{arg('pretrained', name)}: these weights exist for {have}, not {encoder.backbone}; "
                             f"give {arg('backbone', next(iter(weights.files)))}")
    try:
        return load_named(encoder, weights, band_names)
    except DownloadFailed as exc:
        url = mirrored(weights.files[encoder.backbone][0])
        if not default:
            raise LandcoverError(f"{url}: could not download the {weights.name} weights ({exc}); download the "
                                 f"file elsewhere and give it with {arg('pretrained_path', 'FILE')}, or train "
                                 f"from random weights with {_no_pretrained()}") from None
        if not isinstance(exc, OfflineMode):  # offline by choice ($LANDCOVER_OFFLINE): no need to say it each time
            warn(f"could not download the {weights.name} {encoder.backbone} weights ({exc}): training starts "
                 f"from random weights; to start from a copy of {url} give it with "
                 f"{arg('pretrained_path', 'FILE')} ({_no_pretrained()} hides this warning)",
                 PretrainedWeightsWarning)
        return {"Name": "none", "Unavailable": weights.name, "Reason": str(exc)}


def load_named(encoder: ResNetEncoder, weights: NamedWeights, band_names: Sequence[str]) -> dict:
    """Download (once) and load ``weights`` into ``encoder``, bands matched by name; the record of it."""
    url, sha256 = weights.files[encoder.backbone]
    name = url.split("?")[0].rsplit("/", 1)[-1]
    path = cached_download(mirrored(url), weights_cache_dir() / name, sha256,
                           label=f"{weights.name} {encoder.backbone} weights")
    mapping = match_bands(band_names, weights)
    load_pretrained_encoder(encoder, path, band_map=mapping, expect_channels=len(weights.bands))
    labels = weights.band_labels()
    return {"Name": weights.name, "Backbone": encoder.backbone, "URL": url, "SHA256": sha256,
            # [the model's band, the pretrained band its kernel came from (None: adapted)], in the model's order
            "Bands": [[b, labels[i] if i is not None else None] for b, i in zip(band_names, mapping, strict=True)],
            "Normalization": weights.normalization, "Source": weights.source}
