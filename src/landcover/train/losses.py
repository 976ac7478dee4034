"""The training loss: cross-entropy over labelled pixels, optionally class-balanced, focal, mixed with Dice.

Index 0 (no data) never contributes; neither do ``ignore_classes`` (weight 0), as in arcgis.learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: ``dice_loss_average`` values: one Dice over all pixels pooled, or the mean of per-class Dice
DICE_AVERAGES = ("micro", "macro")
#: mixup's Beta(alpha, alpha), as arcgis.learn (fastai's MixUp callback)
MIXUP_ALPHA = 0.4


class SegmentationLoss(nn.Module):
    """``(1 - f) * CE + f * Dice`` over pixels whose label is not 0.

    ``weight``: per class index (index 0 is forced to 0); a weighted mean over pixels as in ``F.cross_entropy``.
    ``focal``: scale each pixel's CE by ``(1 - p_true) ** 2`` (focal loss, alpha 1, gamma 2).
    ``dice_fraction``: f, mixing in a soft Dice loss over the labelled pixels of the kept classes (weight > 0).
    ``dice_average``: ``"micro"``: one Dice over all those classes' pixels pooled; ``"macro"``: the mean of the
    per-class Dice over the kept classes present in the batch's labelled targets.
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, focal: bool = False,
                 dice_fraction: float = 0.0, dice_average: str = "micro"):
        super().__init__()
        w = torch.ones(num_classes) if weight is None else weight.detach().float().clone()
        w[0] = 0.0
        self.register_buffer("weight", w)
        if dice_average not in DICE_AVERAGES:
            raise ValueError(f"dice_average={dice_average!r}: one of {', '.join(DICE_AVERAGES)}")
        self.focal, self.dice_fraction, self.dice_average = focal, float(dice_fraction), dice_average

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
        if self.dice_average == "micro":
            inter = (probs * onehot).sum()
            return 1 - 2 * inter / (probs.sum() + onehot.sum()).clamp_min(1e-6)
        dims = (0, 2, 3)
        inter, prob_sum, true_sum = (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)
        present = true_sum > 0  # kept classes with labelled pixels in this batch (at least one: total > 0)
        dice = 2 * inter[present] / (prob_sum[present] + true_sum[present]).clamp_min(1e-6)
        return 1 - dice.mean()


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


def mixup_batch(x: torch.Tensor, alpha: float = MIXUP_ALPHA) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Mix a batch with a shuffled copy of itself: ``(lam * x + (1 - lam) * x[perm], lam, perm)``.

    One ``lam ~ Beta(alpha, alpha)`` per batch, folded to ``max(lam, 1 - lam)`` so the original image
    dominates; ``perm`` a random permutation of the batch. Drawn from torch's CPU generator (seeded by
    ``lightning.seed_everything`` / ``torch.manual_seed``), so runs are reproducible on any device.
    """
    a = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(a, a).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], lam, perm


def mixup_loss(loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor, lam: float,
               perm: torch.Tensor) -> torch.Tensor:
    """The mixup loss: ``lam * L(logits, y) + (1 - lam) * L(logits, y[perm])``."""
    return lam * loss_fn(logits, target) + (1.0 - lam) * loss_fn(logits, target[perm])
