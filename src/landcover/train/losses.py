"""The training loss: cross-entropy over labelled pixels, optionally class-balanced, focal, mixed with Dice.

Index 0 (no data) never contributes; neither do ``ignore_classes`` (weight 0), as in arcgis.learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationLoss(nn.Module):
    """``(1 - f) * CE + f * Dice`` over pixels whose label is not 0.

    ``weight``: per class index (index 0 is forced to 0); a weighted mean over pixels as in ``F.cross_entropy``.
    ``focal``: scale each pixel's CE by ``(1 - p_true) ** 2`` (focal loss, alpha 1, gamma 2).
    ``dice_fraction``: f, mixing in a micro-averaged soft Dice loss over the non-ignored classes.
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, focal: bool = False,
                 dice_fraction: float = 0.0):
        super().__init__()
        w = torch.ones(num_classes) if weight is None else weight.detach().float().clone()
        w[0] = 0.0
        self.register_buffer("weight", w)
        self.focal, self.dice_fraction = focal, float(dice_fraction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        pixel_weight = self.weight[target]
        total = pixel_weight.sum()
        if total <= 0:
            # A batch without labelled pixels: a zero loss that still has a graph (DDP needs every rank to step).
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, target, reduction="none")
        if self.focal:
            ce = (1 - torch.exp(-ce)) ** 2 * ce
        loss = (ce * pixel_weight).sum() / total
        if self.dice_fraction > 0:
            loss = (1 - self.dice_fraction) * loss + self.dice_fraction * self._dice(logits, target, pixel_weight)
        return loss

    def _dice(self, logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor) -> torch.Tensor:
        valid = (pixel_weight > 0).unsqueeze(1)
        keep = (self.weight > 0).view(1, -1, 1, 1)
        probs = logits.softmax(dim=1) * valid * keep
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * valid * keep
        inter = (probs * onehot).sum()
        return 1 - 2 * inter / (probs.sum() + onehot.sum()).clamp_min(1e-6)


def class_weights(num_classes: int, pixel_counts: list[int], ignore_indices: tuple[int, ...] = (),
                  balance: bool = False) -> torch.Tensor:
    """Loss weight per class index: 1, or inverse pixel frequency (``balance``) scaled to a mean of 1.

    ``pixel_counts[i]`` is the labelled pixels of index ``i + 1``. Classes without pixels and ignored classes
    get 0.
    """
    w = torch.ones(num_classes)
    if balance:
        counts = torch.tensor([0, *pixel_counts], dtype=torch.float64)
        w = torch.where(counts > 0, counts.sum() / counts.clamp_min(1), torch.zeros_like(counts)).float()
        present = w[1:] > 0
        if present.any():
            w[1:] = w[1:] / w[1:][present].mean()
    w[0] = 0.0
    for i in ignore_indices:
        w[i] = 0.0
    return w
