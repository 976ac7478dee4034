"""Installing model packages into the service folder: validated as ``classify_pixels`` loads them, then kept.

A package arrives as an uploaded ``.dlpk`` or as a server path (``.dlpk``, ``.emd`` or package folder under a
data root). It is copied into a staging folder, loaded with :func:`landcover.package.load_package` from that copy
(safetensors only, member names checked, nothing executed), and the staging folder is renamed to
``models/<name>/`` only when it loads: a refused package leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import LandcoverError
from .security import ApiError


def staging_dir(models_dir: Path) -> Path:
    folder = models_dir / f".staging-{uuid.uuid4().hex[:12]}.partial"
    folder.mkdir(parents=True)
    return folder


def check_package_files(source: str, roots) -> None:
    """Refuse a package whose files (the ones :func:`~landcover.package.load_package` reads: a folder's one
    ``.emd`` or ``.dlpk``, an ``.emd``'s weights) are links leading out of the data roots."""
    path = Path(source)
    if path.is_dir():
        emds = sorted(path.glob("*.emd"))
        path = emds[0] if len(emds) == 1 else next(iter(sorted(path.glob("*.dlpk"))), path)
    files = [path]
    if path.suffix.lower() == ".emd":
        try:
            weights = json.loads(path.read_bytes().decode("utf-8-sig")).get("ModelFile")
        except (OSError, ValueError, AttributeError):
            weights = None  # load_package says what is wrong with it
        if isinstance(weights, str) and ".." not in weights.replace("\\", "/").split("/"):
            files.append(path.parent / weights)
    for f in files:
        if not roots.inside(str(f)):
            raise ApiError(403, f"path {source!r}: {f.name} links outside the service's data root")


def copy_package(source: str, staging: Path) -> Path:
    """Copy the package at ``source`` (validated first, in place) into ``staging``; the copy's path."""
    from ..package import _safe_member, load_package

    try:
        pkg = load_package(source)
    except LandcoverError as exc:
        raise ApiError(422, str(exc)) from None
    loaded = Path(pkg.path)
    if loaded.suffix.lower() == ".dlpk":
        dst = staging / loaded.name
        shutil.copyfile(loaded, dst)
        return dst
    emd = json.loads(loaded.read_bytes().decode("utf-8-sig"))
    weights = _safe_member(str(emd["ModelFile"]), str(loaded))
    (staging / weights).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(loaded.parent / weights, staging / weights)
    shutil.copyfile(loaded, staging / loaded.name)
    return staging / loaded.name


def describe(path: Path) -> dict:
    """Load the installed copy (the check that counts) and say what it is: classes, bands, cell size, metrics."""
    from ..package import load_package

    try:
        pkg = load_package(path)
    except LandcoverError as exc:
        raise ApiError(422, str(exc)) from None
    metrics = pkg.extra.get("Metrics") if isinstance(pkg.extra.get("Metrics"), dict) else None
    accuracy = pkg.extra.get("accuracy")
    return {
        "file": path.name,
        "classes": [{"value": c.value, "name": c.name, "color": list(c.color)} for c in pkg.classes],
        "bands": {"extract_bands": [b + 1 for b in pkg.extract_bands], "names": list(pkg.band_names),
                  "dtype": pkg.input_dtype},
        "tile_size": pkg.tile_size, "backbone": pkg.backbone,
        "cell_size": list(pkg.cell_size) if pkg.cell_size else None,
        "metrics": _plain(metrics) if metrics else ({"accuracy": accuracy} if accuracy is not None else None),
    }


def _plain(value):
    """Metrics as JSON (numbers, strings, lists and dicts only)."""
    return json.loads(json.dumps(value, default=str))


def install(staging: Path, copied: Path, models_dir: Path, name: str) -> tuple[Path, dict]:
    """Validate the staged copy and move it to ``models/<name>/``; returns the installed package path and its
    description. The caller removes ``staging`` on any error."""
    info = describe(copied)
    final = models_dir / name
    if final.exists():
        raise ApiError(409, f"model {name!r} is already installed; uninstall it first or choose another name")
    os.replace(staging, final)
    return final / copied.relative_to(staging), info


def default_name(source: str) -> str:
    """A model name from a package path: the .dlpk/.emd stem, or the folder's name."""
    p = Path(source)
    return p.stem if p.suffix.lower() in (".dlpk", ".emd") else p.name
