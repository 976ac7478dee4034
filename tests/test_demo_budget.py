"""The demo's time budget: training sized from a measurement, the progress bar's time left (no training here)."""

from __future__ import annotations

import pytest

from landcover.demo import budget as budget_mod
from landcover.demo.budget import AFTER_TRAINING_S, DemoProgress, clock, plan_epochs
from landcover.demo.run import DemoSettings, _sized_epochs
from landcover.errors import LandcoverError


def test_epochs_fill_the_budget_left_after_what_follows_training():
    # 0.5 s per step of 16 x 128² px, 10 training and 2 validation batches per epoch: ~5.35 s per epoch
    plan = plan_epochs(200.0, 0.5, 10, 2, classify_px=1e6, batch_px=16 * 128 ** 2)
    assert plan.epoch_s == pytest.approx(0.5 * (10 + 0.35 * 2))
    forward_px_s = 16 * 128 ** 2 / (0.5 * 0.35)
    assert plan.after_s == pytest.approx(AFTER_TRAINING_S + 8 * 1e6 / forward_px_s)
    assert plan.epochs == int((200.0 - plan.after_s) // plan.epoch_s)
    assert plan.epochs * plan.epoch_s + plan.after_s <= 200.0 < (plan.epochs + 1) * plan.epoch_s + plan.after_s
    # a machine twice as slow gets about half the epochs, never more
    slow = plan_epochs(200.0, 1.0, 10, 2, classify_px=1e6, batch_px=16 * 128 ** 2)
    assert slow.epochs < plan.epochs and slow.epochs * slow.epoch_s + slow.after_s <= 200.0


def test_epochs_are_bounded():
    fast = plan_epochs(270.0, 0.001, 10, 2, classify_px=1e6, batch_px=16 * 128 ** 2)
    assert fast.epochs == 60
    hopeless = plan_epochs(20.0, 5.0, 10, 2, classify_px=1e6, batch_px=16 * 128 ** 2)
    assert hopeless.epochs == 3 and hopeless.fit_budget_s == 0.0  # a few epochs even when over the budget


def test_modes():
    default, quick, full = (DemoSettings.for_mode(m) for m in ("default", "quick", "full"))
    assert default.budget_s <= 280 and default.backbone == "resnet18" and default.epochs is None
    assert quick.budget_s < default.budget_s
    assert full.backbone == "resnet34" and full.epochs == 30 and full.budget_s is None
    # the budgeted runs' few finder steps search where a network trained from random weights wants its rate;
    # the full run's 80 steps search arcgis.learn's whole range
    assert default.lr_range == quick.lr_range == (1e-5, 1.0) and full.lr_range == (1e-7, 10.0)
    assert DemoSettings.for_mode(True) == quick and DemoSettings.for_mode(False) == default
    assert set(default.plan()) == {"scene", "export", "prepare", "lr_find", "fit", "classify", "evaluate", "maps"}
    with pytest.raises(LandcoverError, match="mode='fast': choose one of default, quick, full"):
        DemoSettings.for_mode("fast")


def test_sized_epochs_use_the_lr_finders_steps(monkeypatch):
    cfg = DemoSettings.for_mode("default")
    logged = []

    class Bar:
        plan = cfg.plan()

        def elapsed(self):
            return 50.0

        def replan(self, name, seconds):
            self.plan[name] = seconds

        def log(self, message):
            logged.append(message)

    class Data:
        train_ds, valid_ds = [0] * 160, [0] * 20

    class Model:
        lr_finder = {"rates": [0.0] * 30}

    bar = Bar()
    epochs = _sized_epochs(cfg, Data, Model, lr_seconds=15.0, bar=bar)
    b = cfg.batch_size
    expected = plan_epochs(cfg.budget_s - 50.0, 0.5, 160 // b, -(-20 // b), 4.0 * 1024 ** 2 / 4, b * 128 ** 2)
    assert epochs == expected.epochs and bar.plan["fit"] == pytest.approx(epochs * expected.epoch_s)
    assert sum(bar.plan[n] for n in ("classify", "evaluate", "maps")) == pytest.approx(expected.after_s)
    assert logged and f"{epochs} epochs" in logged[0] and "budget 4 min 30 s" in logged[0]
    assert epochs >= cfg.min_epochs
    # a machine 20 times slower still trains the fewest epochs that learn every class, and says it runs over
    logged.clear()
    assert _sized_epochs(cfg, Data, Model, lr_seconds=300.0, bar=bar) == cfg.min_epochs
    assert "takes longer than its budget" in logged[0]


def test_progress_estimates_the_time_left(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: now[0])
    lines = []
    bar = DemoProgress({"a": 10.0, "b": 30.0, "c": 20.0}, lines.append, bar=False)
    bar.step("a", "step a")
    assert bar.left() == pytest.approx(60.0)
    now[0] = 20.0  # step a took twice its estimate: the rest of the plan is scaled by 2
    bar.step("b", "step b")
    assert bar.left() == pytest.approx(2 * 30 + 2 * 20)
    now[0] = 50.0
    bar.advance(0.5, "epoch 5/10")  # half of b in 30 s: 30 s more, then c at twice its estimate
    assert bar.left() == pytest.approx(30.0 + 2 * 20)
    bar.replan("c", 5.0)  # measured on this machine: no longer scaled
    assert bar.left() == pytest.approx(30.0 + 5)
    bar.close()
    assert lines == ["[demo] step a ...", "[demo] step b ..."]
    assert clock(245) == "4 min 05 s" and clock(35.4) == "35 s"
