"""Load ImageNet ResNet weights (torchvision or timm format) into the encoder, from a file or a URL.

Checkpoints are untrusted input: ``.safetensors`` are read with safetensors, anything else with
``torch.load(weights_only=True)`` so no pickled code runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..errors import LandcoverError
from .encoder import ResNetEncoder


def read_state_dict(path_or_url: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a ``.safetensors``/``.pth``/``.pt``/``.bin`` file or an http(s) URL."""
    src = str(path_or_url)
    if src.startswith(("http://", "https://")):
        cache = Path(os.environ.get("LANDCOVER_CACHE", Path.home() / ".cache" / "landcover")) / "weights"
        cache.mkdir(parents=True, exist_ok=True)
        local = cache / (hashlib.sha256(src.encode()).hexdigest()[:16] + "-" + Path(src.split("?")[0]).name)
        if not local.exists():
            try:
                torch.hub.download_url_to_file(src, str(local), progress=False)
            except Exception as exc:
                raise LandcoverError(f"{src}: could not download weights ({exc})") from None
        src = str(local)
    path = Path(src)
    if not path.is_file():
        raise LandcoverError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LandcoverError(f"{path}: not a readable weights file ({str(exc).splitlines()[0][:200]})") from None
    # Unwrap the usual containers: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LandcoverError(f"{path}: does not hold a state dict of tensors")
    return sd


def load_pretrained_encoder(encoder: ResNetEncoder, path_or_url: str | os.PathLike) -> list[str]:
    """Load a torchvision/timm ResNet checkpoint into ``encoder``; returns the keys that were not used.

    The first convolution is adapted to the encoder's band count the way segmentation_models_pytorch does it:
    the RGB kernels are cycled over the bands and scaled by 3/bands, so activations keep their magnitude.
    """
    sd = read_state_dict(path_or_url)
    # Strip wrapper prefixes ("module.", "encoder.", "backbone.") left by DDP or other frameworks.
    for prefix in ("module.", "encoder.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd if not k.startswith(("fc.", "head."))):
            sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    own = encoder.state_dict()
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] != encoder.in_channels:
        n = encoder.in_channels
        idx = torch.arange(n) % w.shape[1]
        sd["conv1.weight"] = w[:, idx] * (w.shape[1] / n)
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
