"""Augmentations for overhead imagery, in torch, applied to a normalized chip and its label together.

Overhead imagery has no "up": the 8 flips/rotations of the square (the dihedral group D4) are all valid views.
Brightness/contrast jitter imitates differences in sun, season and sensor calibration. Randomness comes from
torch's global generator, which Lightning and the DataLoader seed per worker.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (image (C,H,W) float, label (H,W) int64) -> (image, label)
Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def random_crop(image: torch.Tensor, label: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` window of the chip (the chip itself when it is not larger)."""
    h, w = label.shape[-2:]
    if h <= size and w <= size:
        return image, label
    top = int(torch.randint(0, h - size + 1, ())) if h > size else 0
    left = int(torch.randint(0, w - size + 1, ())) if w > size else 0
    return image[:, top:top + size, left:left + size], label[top:top + size, left:left + size]


def dihedral(image: torch.Tensor, label: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th of the 8 flips/rotations (k = 0 is the identity; 1-3 rotate, 4-7 flip then rotate)."""
    if k >= 4:
        image, label = image.flip(-1), label.flip(-1)
    r = k % 4
    if r:
        image, label = torch.rot90(image, r, (-2, -1)), torch.rot90(label, r, (-2, -1))
    return image, label


class Augment:
    """The default training augmentation: a random dihedral transform and brightness/contrast jitter.

    ``brightness`` shifts the bands by up to that many standard deviations; ``contrast`` scales them by a
    factor between ``1/contrast`` and ``contrast``. Pixels are already normalized (zero mean, unit variance).
    ``per_band``: each band's shift and scale is half a draw shared by all bands (sun, haze) and half its own
    (calibration, season differ per band), within the same bounds; False: one draw for all bands.
    """

    def __init__(self, flips: bool = True, brightness: float = 0.2, contrast: float = 1.25, per_band: bool = True):
        self.flips, self.brightness, self.contrast, self.per_band = flips, brightness, contrast, per_band

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flips:
            image, label = dihedral(image, label, int(torch.randint(0, 8, ())))
        if self.contrast > 1 or self.brightness > 0:
            log_c = torch.log(torch.tensor(float(self.contrast)))
            scale = torch.exp(_jitter(image.shape[0], self.per_band) * log_c)
            shift = _jitter(image.shape[0], self.per_band) * self.brightness
            image = image * scale + shift
        return image.contiguous(), label.contiguous()

    def __repr__(self) -> str:
        return (f"Augment(flips={self.flips}, brightness={self.brightness}, contrast={self.contrast}, "
                f"per_band={self.per_band})")


def _jitter(bands: int, per_band: bool) -> torch.Tensor:
    """Uniform draws in [-1, 1] shaped ``(bands, 1, 1)``: the mean of a shared and a per-band draw, or one draw."""
    shared = torch.rand(()) * 2 - 1
    if not per_band:
        return shared.expand(bands, 1, 1)
    return (shared + (torch.rand(bands, 1, 1) * 2 - 1)) / 2
