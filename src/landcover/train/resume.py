"""``fit(resume=...)``: checking that a training checkpoint belongs to the model, and what resuming needs."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import LandcoverError, arg
from ..model import BACKBONES
from .checks import _bands, _extract_bands_arg
from .packaging import _is_package


def check_resume(model, resume: str | os.PathLike) -> dict:
    """Check that ``resume`` is a training checkpoint of ``model`` (a UnetClassifier); what resuming needs from it.

    Read as untrusted (tensors and plain values only; memory-mapped, so a large file is not read whole).
    """
    path = Path(resume)
    fix = f"give {arg('resume')} the last.ckpt or a best-*.ckpt of a landcover train run"
    ckpt = _load_checkpoint(path, fix)
    weights, groups = _training_state(ckpt, path, fix)
    meta = ckpt.get("landcover") if isinstance(ckpt.get("landcover"), dict) else {}
    _check_matches_model(model, weights, meta, path, fix)
    if len(groups) != len(model.net.layer_groups()) or not all(isinstance(g, dict) for g in groups):
        raise LandcoverError(f"{path}: not a landcover training checkpoint (its optimizer has {len(groups)} "
                             f"parameter groups); {fix}")
    return _resume_plan(ckpt, groups)


def _load_checkpoint(path: Path, fix: str) -> Any:
    """The checkpoint file's contents, loaded weights-only; refuses a model package, a missing or unreadable file."""
    if path.suffix.lower() in (".emd", ".dlpk") or _is_package(path):
        raise LandcoverError(f"{path}: a model package, not a training checkpoint; to train on from it use "
                             f"{arg('pretrained_path', path)}, or {fix}")
    if not path.is_file():
        raise LandcoverError(f"{path}: checkpoint to resume from not found ({fix}, in "
                             "<folder>/models/checkpoints/<date>_<time>/)")
    if not zipfile.is_zipfile(path):
        raise LandcoverError(f"{path}: not a training checkpoint (not a PyTorch checkpoint file); {fix}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any failure to read is the same user error
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "weights only" in reason.lower():
            reason = "it holds Python objects, which are not loaded from untrusted files"
        raise LandcoverError(f"{path}: not a readable training checkpoint ({reason}); {fix}") from None


def _training_state(ckpt: Any, path: Path, fix: str) -> tuple[dict[str, torch.Tensor], list]:
    """(U-Net weights without the ``net.`` prefix, optimizer parameter groups); refuses a checkpoint without them."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    weights = {k[4:]: v for k, v in state.items() if isinstance(k, str) and k.startswith("net.")
               and isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    optimizers = ckpt.get("optimizer_states") if isinstance(ckpt, dict) else None
    groups = optimizers[0].get("param_groups") if (isinstance(optimizers, list) and optimizers
                                                   and isinstance(optimizers[0], dict)) else None
    if not weights or not isinstance(groups, list) or not isinstance(ckpt.get("epoch"), int):
        raise LandcoverError(f"{path}: not a landcover training checkpoint (no U-Net training state: plain "
                             f"weights go to {arg('pretrained_path')}); {fix}")
    return weights, groups


def _check_matches_model(model, weights: dict[str, torch.Tensor], meta: dict, path: Path, fix: str) -> None:
    """Refuse weights trained with another backbone, classes or bands than ``model``, or with other layers."""
    backbone = meta.get("backbone") or _backbone_of(weights)
    if backbone and backbone != model.backbone:
        raise LandcoverError(f"{path}: the checkpoint was trained with backbone {backbone}, this run uses "
                             f"{model.backbone}; resume with {arg('backbone', backbone)}")
    ours = [c.value for c in model.classes]
    theirs = meta.get("classes")
    head = weights.get("head.weight")
    n = int(head.shape[0]) - 1 if head is not None else len(ours)
    if (isinstance(theirs, list) and theirs != ours) or n != len(ours):
        what = ", ".join(map(str, theirs)) if isinstance(theirs, list) else f"{n} classes"
        raise LandcoverError(f"{path}: the checkpoint was trained on classes {what}, the data has classes "
                             f"{', '.join(map(str, ours))}; resume with the data it was trained on, or start a "
                             f"new run from its model package with {arg('pretrained_path')}")
    conv1 = weights.get("encoder.conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != len(model.band_names):
        raise LandcoverError(f"{path}: the checkpoint takes {conv1.shape[1]} bands, the data has "
                             f"{len(model.band_names)}; resume with the data it was trained on")
    bands = meta.get("extract_bands")
    if isinstance(bands, list) and bands != model.extract_bands:
        # Same count, other bands: the weights would meet bands they were not trained on.
        raise LandcoverError(f"{path}: the checkpoint was trained on bands {_bands(bands)} of the chips, this run "
                             f"reads {_bands(model.extract_bands)}; resume with {_extract_bands_arg(bands)}")
    own = model.net.state_dict()
    for key in sorted(set(own) | set(weights)):
        if key not in weights or key not in own or own[key].shape != weights[key].shape:
            raise LandcoverError(f"{path}: layer {key} does not match this {model.backbone} U-Net; {fix} with "
                                 "the same backbone, bands and classes")


def _resume_plan(ckpt: dict, groups: list[dict]) -> dict:
    """What resuming needs: epochs done, scheduler steps left and the learning rates of the parameter groups."""
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


def _backbone_of(weights: dict[str, torch.Tensor]) -> str | None:
    """The backbone whose encoder layout (block type, blocks per stage) the U-Net weights have, if any."""
    bottleneck = "encoder.layer1.0.conv3.weight" in weights
    blocks = tuple(len({k.split(".")[2] for k in weights if k.startswith(f"encoder.layer{i}.")}) for i in range(1, 5))
    for name, (block, layers) in BACKBONES.items():
        if tuple(layers) == blocks and (getattr(block, "expansion", 1) == 4) == bottleneck:
            return name
    return None
