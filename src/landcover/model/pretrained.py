"""Load ImageNet ResNet weights (torchvision or timm format) into the encoder, from a file or a URL.

Checkpoints are untrusted input: ``.safetensors`` are read with safetensors, anything else with
``torch.load(weights_only=True)`` so no pickled code runs. URLs are downloaded once into the cache
(:mod:`.download`); the published weights known by name are in :mod:`.weights`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import LandcoverError
from .download import DownloadFailed, cached_download, weights_cache_dir
from .encoder import ResNetEncoder

#: What to give instead of a file that is not plain tensors (never torch's advice to unpickle it anyway).
GIVE_INSTEAD = ("give a .safetensors file or a plain state dict saved with torch.save(model.state_dict(), path)")
NOT_TENSORS = ("not plain weights: it holds pickled Python objects besides tensors (or is no checkpoint), which "
               f"are never loaded since unpickling can run code; {GIVE_INSTEAD}")


def read_state_dict(path_or_url: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a ``.safetensors``/``.pth``/``.pt``/``.bin`` file or an http(s) URL."""
    src = str(path_or_url)
    if src.startswith(("http://", "https://")):
        # A URL the user gave: no published checksum to check, cached under a name made from the URL.
        local = weights_cache_dir() / (hashlib.sha256(src.encode()).hexdigest()[:16] + "-"
                                       + Path(src.split("?")[0]).name)
        try:
            src = str(cached_download(src, local))
        except DownloadFailed as exc:
            raise LandcoverError(f"{src}: could not download weights ({exc}); download the file elsewhere and "
                                 "give the file instead") from None
    path = Path(src)
    if not path.is_file():
        raise LandcoverError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol: not the user's concern
                warnings.simplefilter("ignore")
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running whatever code the file carries: never
        # pass that on. Say what to give instead.
        raise LandcoverError(f"{path}: {NOT_TENSORS}") from None
    except Exception as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "weights_only" in detail or "eights only" in detail:
            raise LandcoverError(f"{path}: {NOT_TENSORS}") from None
        raise LandcoverError(f"{path}: not a readable weights file ({detail}); {GIVE_INSTEAD}") from None
    # Unwrap the usual containers: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LandcoverError(f"{path}: does not hold a state dict of tensors; {GIVE_INSTEAD}")
    return sd


def adapt_first_conv(weight: torch.Tensor, bands: int, band_map: list[int | None] | None = None) -> torch.Tensor:
    """The first convolution's kernels ``(out, C, k, k)`` for ``bands`` input bands.

    Bands that ``band_map`` maps to a pretrained channel (by name, see :func:`.weights.match_bands`) take that
    channel's kernel as is. The others are adapted the way segmentation_models_pytorch does it for another band
    count: the pretrained kernels cycled over the bands and scaled by C/bands, so activations keep their
    magnitude. Without any mapped band and with C == bands the kernels are returned unchanged.
    """
    channels = weight.shape[1]
    mapped = [(i, j) for i, j in enumerate(band_map or []) if j is not None]
    if not mapped and channels == bands:
        return weight
    out = weight[:, torch.arange(bands) % channels] * (channels / bands)
    for i, j in mapped:
        out[:, i] = weight[:, j]
    return out


def load_pretrained_encoder(encoder: ResNetEncoder, path_or_url: str | os.PathLike,
                            band_map: list[int | None] | None = None,
                            expect_channels: int | None = None) -> list[str]:
    """Load a torchvision/timm ResNet checkpoint into ``encoder``; returns the keys that were not used.

    The first convolution is adapted to the encoder's bands by :func:`adapt_first_conv`: ``band_map`` gives,
    for each of the encoder's bands, the checkpoint's input channel of the same band (or None);
    ``expect_channels`` is how many input channels the checkpoint's first convolution should have for that map
    to hold (a checkpoint with another count is refused).
    """
    sd = read_state_dict(path_or_url)
    # Strip wrapper prefixes ("module.", "encoder.", "backbone.") left by DDP or other frameworks.
    for prefix in ("module.", "encoder.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd if not k.startswith(("fc.", "head."))):
            sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    own = encoder.state_dict()
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4:
        if expect_channels is not None and w.shape[1] != expect_channels:
            raise LandcoverError(f"{path_or_url}: the first layer reads {w.shape[1]} bands, these weights are "
                                 f"published for {expect_channels}; delete the file and retry")
        sd["conv1.weight"] = adapt_first_conv(w, encoder.in_channels, band_map)
    used = {}
    for key, value in sd.items():
        if key not in own:
            continue
        if own[key].shape != value.shape:
            raise LandcoverError(
                f"{path_or_url}: layer {key} has shape {tuple(value.shape)} but the {encoder.backbone} encoder "
                f"expects {tuple(own[key].shape)} (is this a {encoder.backbone} checkpoint?)"
            )
        used[key] = value
    missing = [k for k in own if k not in used and not k.endswith("num_batches_tracked")]
    if missing:
        raise LandcoverError(
            f"{path_or_url}: not a {encoder.backbone} checkpoint ({len(missing)} encoder layers missing, "
            f"e.g. {missing[0]})"
        )
    encoder.load_state_dict(used, strict=False)
    return [k for k in sd if k not in own]
