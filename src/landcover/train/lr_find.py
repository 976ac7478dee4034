"""Learning-rate range test: train briefly while the rate grows exponentially, then pick a rate from the curve.

The suggestion is the "valley" rule used by fastai (which arcgis.learn's ``lr_find`` follows): the longest run of
decreasing smoothed loss, and a rate a little past its middle — where the loss falls fastest but safely before
it blows up.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.utils.data import DataLoader

from ..model import UNet
from .losses import SegmentationLoss, mixup_batch, mixup_loss
from .module import WEIGHT_DECAY, autocast_for


def lr_range_test(net: UNet, loss_fn: SegmentationLoss, loader: DataLoader, device: torch.device,
                  precision: str, channels_last: bool, start_lr: float = 1e-7, end_lr: float = 10.0,
                  num_steps: int = 100, beta: float = 0.98,
                  mixup: bool = False) -> tuple[list[float], list[float]]:
    """(rates, smoothed losses); stops early when the loss diverges. The weights are restored afterwards.

    ``mixup``: mix each batch and its loss as training does (:func:`~.losses.mixup_batch`).
    """
    saved = copy.deepcopy(net.state_dict())
    net.train().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=start_lr, weight_decay=WEIGHT_DECAY)
    factor = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    rates: list[float] = []
    losses: list[float] = []
    avg, best, step = 0.0, math.inf, 0
    try:
        while step < num_steps:
            for x, y in loader:
                lr = start_lr * factor**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = x.to(device), y.to(device)
                if mixup:
                    x, lam, perm = mixup_batch(x)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_for(precision, device):
                    logits = net(x)
                logits = logits.float()
                loss = mixup_loss(loss_fn, logits, y, lam, perm) if mixup else loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                avg = beta * avg + (1 - beta) * loss.detach().item()
                smoothed = avg / (1 - beta ** (step + 1))
                rates.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if step >= num_steps or not math.isfinite(smoothed) or smoothed > 4 * best:
                    return rates, losses
    finally:
        net.load_state_dict(saved)
        net.to(memory_format=torch.contiguous_format)
    return rates, losses


def suggest_lr(rates: list[float], losses: list[float]) -> float:
    """The valley rule; with too few points, a tenth of the rate at the lowest loss."""
    pts = [(r, v) for r, v in zip(rates, losses, strict=True) if math.isfinite(v)]
    if len(pts) >= 15:
        pts = pts[5:-5]  # the first steps are noise, the last ones the blow-up
    if len(pts) < 4:
        if not pts:
            return 1e-4
        return min(pts, key=lambda p: p[1])[0] / 10
    vals = [v for _, v in pts]
    n = len(vals)
    run = [1] * n  # longest decreasing subsequence ending at i
    for i in range(1, n):
        for j in range(i):
            if vals[i] < vals[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
    end = max(range(n), key=lambda i: run[i])
    start = end - run[end] + 1
    third = (end - start) / 3
    return pts[min(n - 1, start + int(third) + int(third / 2))][0]
