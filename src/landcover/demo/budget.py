"""The demo's clock: how long training may take within its time budget, and a progress bar with the time left.

The demo trains to a time budget, not to a fixed number of epochs: the learning-rate finder's steps measure
how fast this machine trains (a 2-core laptop and a 32-core server differ tenfold, and a busy machine several
fold more), and :func:`plan_epochs` sizes training so the whole run ends within the budget. The steps after
training (classify with test-time augmentation, evaluate, maps) are estimated from the same measurement.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

#: seconds the steps after training take besides the model itself (evaluate twice, two maps, areas, report)
AFTER_TRAINING_S = 25.0
#: a forward pass costs about this share of a training step (forward + backward + optimizer) on the same batch
FORWARD_SHARE = 0.35
#: test-time augmentation runs the model 8 times (flips and rotations)
TTA_PASSES = 8


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs fit, and the seconds that estimate rests on."""

    epochs: int
    epoch_s: float
    after_s: float
    fit_budget_s: float

    def describe(self) -> str:
        fits = self.epochs * self.epoch_s <= self.fit_budget_s
        return (f"{self.epochs} epochs of about {self.epoch_s:.0f} s {'fit in' if fits else 'exceed'} "
                f"{self.fit_budget_s:.0f} s (after training about {self.after_s:.0f} s)"
                f"{'' if fits else ': this machine is slow or busy, the run takes longer than its budget'}")


def plan_epochs(budget_left_s: float, step_s: float, train_steps: int, valid_steps: int, classify_px: float,
                batch_px: float, min_epochs: int = 3, max_epochs: int = 60) -> EpochPlan:
    """Epochs of training that fit in ``budget_left_s`` seconds, leaving room for what follows.

    ``step_s``: measured seconds of one training step (a batch of ``batch_px`` pixels); ``train_steps`` and
    ``valid_steps``: batches per epoch; ``classify_px``: pixels the model computes when classifying afterwards
    (one pass; test-time augmentation multiplies it). At least ``min_epochs`` (a model needs a few to learn
    anything; the run then takes longer than the budget, and says so), at most ``max_epochs``."""
    forward_px_s = batch_px / max(step_s * FORWARD_SHARE, 1e-9)
    epoch_s = step_s * (train_steps + FORWARD_SHARE * valid_steps)
    after_s = AFTER_TRAINING_S + TTA_PASSES * classify_px / forward_px_s
    fit_budget = budget_left_s - after_s
    epochs = int(fit_budget // max(epoch_s, 1e-9)) if fit_budget > 0 else 0
    return EpochPlan(max(min_epochs, min(max_epochs, epochs)), epoch_s, after_s, max(0.0, fit_budget))


def clock(seconds: float) -> str:
    """``4 min 05 s`` / ``35 s``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class DemoProgress:
    """A progress bar over the demo's planned seconds, with the step it is in and the time left.

    ``plan``: estimated seconds of each step, in order; :meth:`replan` corrects a step's estimate once it is
    measured on this machine (training and what follows it, after the learning-rate finder). The bar moves by
    planned seconds: a finished step counts its whole estimate, the step in progress the share :meth:`advance`
    reports (training: epochs done). The time left is the rest of the plan, the steps not yet measured scaled by
    how the finished steps compared with their estimates.
    """

    def __init__(self, plan: dict[str, float], log: Callable[[str], None] = print, bar: bool = True):
        from tqdm.auto import tqdm

        self.plan = dict(plan)
        self.label = ""
        self.done: list[str] = []
        self.current: str | None = None
        self.fraction = 0.0
        self.t0 = time.perf_counter()
        self.step_t0 = self.t0
        self.spent: dict[str, float] = {}
        self.measured: set[str] = set()
        self.bar = tqdm(total=1000, file=sys.stderr, disable=not bar, dynamic_ncols=True,
                        bar_format="demo {percentage:3.0f}%|{bar}| {desc}")
        # Lines printed while the bar is drawn go through tqdm, which redraws the bar below them.
        self.log = (lambda m: self.bar.write(m, file=sys.stdout)) if bar and log is print else log

    def step(self, name: str, label: str) -> float:
        """Start step ``name`` (finishing the previous one); returns its start time."""
        self._finish()
        self.current, self.fraction = name, 0.0
        self.step_t0 = time.perf_counter()
        self.label = label
        self.log(f"[demo] {label} ...")
        self._refresh()
        return self.step_t0

    def advance(self, fraction: float, note: str = "") -> None:
        """The current step is ``fraction`` done (0..1)."""
        self.fraction = min(1.0, max(0.0, fraction))
        self._refresh(note)

    def replan(self, name: str, seconds: float) -> None:
        """Step ``name`` will take ``seconds``, as measured on this machine (not scaled any more)."""
        self.plan[name] = float(seconds)
        self.measured.add(name)
        self._refresh()

    def left(self) -> float:
        """Estimated seconds left: the unfinished plan, scaled by the finished steps' actual/planned ratio."""
        planned_done = sum(self.plan.get(n, 0.0) for n in self.done)
        ratio = sum(self.spent.values()) / planned_done if planned_done > 1.0 else 1.0
        ratio = min(max(ratio, 0.5), 4.0)

        def scale(name: str) -> float:
            return 1.0 if name in self.measured else ratio

        rest = sum(v * scale(n) for n, v in self.plan.items() if n not in self.done and n != self.current)
        if self.current is not None:
            planned = self.plan.get(self.current, 0.0) * scale(self.current)
            elapsed = time.perf_counter() - self.step_t0
            rest += max(0.0, elapsed / self.fraction - elapsed if self.fraction > 0.05 else planned - elapsed)
        return rest

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        self._finish()
        self.current = None
        self.bar.n = self.bar.total
        self.bar.set_description_str(f"done in {clock(self.elapsed())}")
        self.bar.close()

    def _finish(self) -> None:
        if self.current is not None and self.current not in self.done:
            self.done.append(self.current)
            self.spent[self.current] = time.perf_counter() - self.step_t0

    def _refresh(self, note: str = "") -> None:
        total = sum(self.plan.values()) or 1.0
        done = sum(self.plan.get(n, 0.0) for n in self.done)
        if self.current is not None:
            done += self.fraction * self.plan.get(self.current, 0.0)
        self.bar.n = min(self.bar.total - 1, int(1000 * done / total))
        text = f"{self.label}{' (' + note + ')' if note else ''}: about {clock(self.left())} left"
        self.bar.set_description_str(text)
