"""landcover train: resuming (more epochs, a checkpoint of another model, a file that is no checkpoint), refusing to
replace an existing --out, messages that name the CLI flags, and where checkpoints go."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Callback
from rasterio.transform import from_origin

from landcover.cli import main as cli_main
from landcover.data import prepare_data
from landcover.data.prepare import MIN_WINDOW_BATCHES
from landcover.errors import LandcoverError, cli_spelling
from landcover.package import load_package
from landcover.train import UnetClassifier
from tiles_fixture import write_export

#: tiny chips: 32 px, resnet18; 8 chips at val_split 0.25 and batch 2 are 6 training chips, and an epoch of
#: random windows is at least MIN_WINDOW_BATCHES (4) batches
CHIP, STEPS = 32, MIN_WINDOW_BATCHES
TRAIN = ["--backbone", "resnet18", "--batch-size", "2", "--val-split", "0.25", "--lr", "1e-3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _chips(folder: Path, **kw) -> Path:
    return write_export(folder, n_chips=8, size=CHIP, **kw)


def _data(chips: Path):
    return prepare_data(chips, batch_size=2, val_split_pct=0.25)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Chips, their data and the last.ckpt of a finished 1-epoch one-cycle run at lr 1e-3."""
    work = tmp_path_factory.mktemp("first_run")
    chips = _chips(work / "chips")
    data = _data(chips)
    torch.manual_seed(0)
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(1, lr=1e-3)
    return chips, data, model.last_checkpoint


def _copy(ckpt: Path, folder: Path) -> Path:
    """A copy to resume from: a resumed run writes beside its checkpoint and must not change the fixture's."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ckpt, folder / "last.ckpt"))


class RecordLr(Callback):
    """The head's learning rate at every training step."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[-1]["lr"])


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _one_cycle(total: int, max_lr: float = 1e-3) -> list[float]:
    """The rates torch's OneCycleLR gives, as fit() configures it."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.3)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --- 1. resuming with more epochs ----------------------------------------------------------------------------------


def test_resume_with_more_epochs_runs_a_new_one_cycle_over_the_added_epochs(first_run, tmp_path):
    _, data, last = first_run
    ckpt = _copy(last, tmp_path / "ckpt")
    record = RecordLr()
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(3, lr=1e-3, resume=ckpt, callbacks=[record])  # was: "Tried to step 4 times ... total steps is 3"
    assert len(model.history_valid) == 2  # epochs 1 and 2; epoch 0 came from the checkpoint
    # a whole one-cycle schedule over the 2 added epochs, at the given rate
    np.testing.assert_allclose(record.lrs, _one_cycle(2 * STEPS), rtol=1e-6)
    assert model.checkpoint_path.parent == ckpt.parent  # still written beside the checkpoint
    # Once more from the extended run's last.ckpt, whose schedule (2 x STEPS steps) has ended. The 6 chips in
    # batches of 6 make one step per epoch: 3 epochs left to run, on a new schedule; the old must not go on.
    record = RecordLr()
    six = prepare_data(first_run[0], batch_size=6, val_split_pct=0.25, sampling="chips")
    model = UnetClassifier(six, backbone="resnet18")
    model.fit(6, lr=1e-3, resume=ckpt, callbacks=[record])
    assert len(model.history_valid) == 3
    np.testing.assert_allclose(record.lrs, _one_cycle(3), rtol=1e-6)


def test_resume_of_an_interrupted_run_continues_its_schedule(tmp_path):
    data = _data(_chips(tmp_path / "chips"))
    first, rest = RecordLr(), RecordLr()
    UnetClassifier(data, backbone="resnet18").fit(3, lr=1e-3, callbacks=[first, StopAfterFirstEpoch()])
    last = next((tmp_path / "models" / "checkpoints").glob("*/last.ckpt"))
    # without --lr the resumed run takes the checkpoint's rates (no learning-rate finder on a fresh model)
    model = UnetClassifier(data, backbone="resnet18")
    model.lr_find = lambda **kw: pytest.fail("the learning-rate finder ran on a resumed run")
    model.fit(3, resume=last, callbacks=[rest])
    assert len(first.lrs) == STEPS and len(model.history_valid) == 2
    # exactly the schedule of an uninterrupted 3-epoch run: the checkpoint's scheduler state was restored
    np.testing.assert_allclose(first.lrs + rest.lrs, _one_cycle(3 * STEPS), rtol=1e-6)


def test_resume_with_a_constant_rate_trains_at_that_rate(first_run, tmp_path):
    _, data, last = first_run
    record = RecordLr()
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(2, lr=1e-4, one_cycle=False, resume=_copy(last, tmp_path), callbacks=[record])
    assert record.lrs == [1e-4] * STEPS  # not the rate the one-cycle checkpoint's optimizer ended at


def test_resume_needs_epochs_beyond_the_checkpoint(first_run, tmp_path, capsys):
    chips, data, last = first_run
    with pytest.raises(LandcoverError, match=r"already trained 1 epoch.*epochs=2 or more"):
        UnetClassifier(data, backbone="resnet18").fit(1, lr=1e-3, resume=last)
    rc = cli_main(["train", str(chips), "--out", str(tmp_path / "m"), "--epochs", "1", "--resume", str(last), *TRAIN])
    err = _one_line_error(capsys)
    assert rc == 2 and "--epochs 2 or more" in err


def test_cli_resume_with_more_epochs(first_run, tmp_path, capsys):
    chips, _, last = first_run
    ckpt = _copy(last, tmp_path / "ckpt")
    out = tmp_path / "res"
    rc = cli_main(["train", str(chips), "--out", str(out), "--epochs", "2", "--resume", str(ckpt), *TRAIN])
    assert rc == 0, capsys.readouterr().err
    assert (out / "res.dlpk").is_file()


# --- 2. a checkpoint of another model ------------------------------------------------------------------------------


def test_resume_refuses_a_checkpoint_of_other_classes_backbone_or_bands(first_run, tmp_path, capsys):
    chips, data, last = first_run
    two = _data(_chips(tmp_path / "two", values=(1, 2), names=("A", "B")))
    with pytest.raises(LandcoverError) as err:
        UnetClassifier(two, backbone="resnet18").fit(2, lr=1e-3, resume=last)
    assert str(last) in str(err.value) and "classes" in str(err.value) and "1, 3, 7" in str(err.value)
    with pytest.raises(LandcoverError, match=r"backbone resnet18.*backbone='resnet18'") as err:
        UnetClassifier(data, backbone="resnet34").fit(2, lr=1e-3, resume=last)
    assert str(last) in str(err.value)
    three_bands = _data(_chips(tmp_path / "rgb", bands=3))
    with pytest.raises(LandcoverError, match=r"4 bands.*3"):
        UnetClassifier(three_bands, backbone="resnet18").fit(2, lr=1e-3, resume=last)
    # the CLI: one line, exit code 2, no package
    out = tmp_path / "m"
    rc = cli_main(["train", str(tmp_path / "two"), "--out", str(out), "--epochs", "2", "--resume", str(last), *TRAIN])
    err = _one_line_error(capsys)
    assert rc == 2 and str(last) in err and "size mismatch" not in err
    assert not out.exists()
    rc = cli_main(["train", str(chips), "--out", str(out), "--epochs", "2", "--resume", str(last), *TRAIN,
                   "--backbone", "resnet34"])
    err = _one_line_error(capsys)
    assert rc == 2 and "resume with --backbone resnet18" in err


# --- 3. a file that is not a checkpoint ----------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


def test_resume_refuses_files_that_are_not_training_checkpoints(first_run, tmp_path, capsys):
    chips, data, _ = first_run
    model = UnetClassifier(data, backbone="resnet18")
    tiny = tmp_path / "tiny.tif"
    with rasterio.open(tiny, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(0, 4, 1, 1)) as ds:
        ds.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(LandcoverError, match=r"tiny\.tif: not a .*checkpoint"):
        model.fit(2, lr=1e-3, resume=tiny)
    weights = tmp_path / "weights.pth"
    torch.save(model.net.state_dict(), weights)  # plain weights: no training state to resume
    with pytest.raises(LandcoverError, match=r"weights\.pth: not a .*training checkpoint"):
        model.fit(2, lr=1e-3, resume=weights)
    # a pickle that would run code is refused unread
    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(LandcoverError, match=r"evil\.ckpt: not a .*checkpoint"):
        model.fit(2, lr=1e-3, resume=evil)
    assert not (tmp_path / "pwned").exists()
    # a model package is not a checkpoint: point to --pretrained
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pkg.emd").write_text("{}")
    (pkg / "pkg.safetensors").write_bytes(b"0")
    with pytest.raises(LandcoverError, match=r"model package.*pretrained_path="):
        model.fit(2, lr=1e-3, resume=pkg)
    rc = cli_main(["train", str(chips), "--out", str(tmp_path / "m"), "--epochs", "2", "--resume", str(tiny), *TRAIN])
    err = _one_line_error(capsys)
    assert rc == 2 and "tiny.tif" in err and "--resume" in err


# --- 4. an existing --out ------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_train_refuses_to_replace_an_existing_out_without_overwrite(first_run, tmp_path, capsys):
    chips, data, _ = first_run
    out = tmp_path / "good"
    out.mkdir()
    (out / "good.emd").write_text('{"a user\'s": "good model"}')
    (out / "good.safetensors").write_bytes(b"weights")
    before = _files(out)
    args = ["train", str(chips), "--epochs", "1", *TRAIN]
    rc = cli_main([*args, "--out", str(out)])
    err = _one_line_error(capsys)
    assert rc == 2 and str(out) in err and "--overwrite" in err
    assert _files(out) == before
    # a folder of other files is never emptied, not even with --overwrite
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        rc = cli_main([*args, "--out", str(other), *extra])
        err = _one_line_error(capsys)
        assert rc == 2 and str(other) in err and "not empty" in err
        assert _files(other) == {"notes.txt": b"keep me"}
    # --overwrite replaces a model package
    rc = cli_main([*args, "--out", str(out), "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    after = _files(out)
    assert load_package(out).backbone == "resnet18" and after["good.emd"] != before["good.emd"]
    assert "good.dlpk" in after and "good.safetensors" in after
    # the Python API: overwrite=False refuses, and a folder that holds no package is never replaced
    model = UnetClassifier(data, backbone="resnet18")
    with pytest.raises(LandcoverError, match="overwrite=True"):
        model.save(out, overwrite=False)
    with pytest.raises(LandcoverError, match="not empty"):
        model.save(other)
    assert _files(other) == {"notes.txt": b"keep me"}


# --- 5. messages name the CLI flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "flag"), [
    (["--val-split", "0"], "--val-split"),
    (["--lr", "1e-3:1e-5"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "50"], "--batch-size"),  # more than the training chips: found when the data is read
])
def test_cli_messages_name_the_flags(first_run, tmp_path, capsys, argv, flag):
    chips, _, _ = first_run
    try:  # bad usage is refused by the parser (SystemExit), bad data by the command
        rc = cli_main(["train", str(chips), "--out", str(tmp_path / "m"), *TRAIN, *argv])  # the last value counts
    except SystemExit as exc:
        rc = exc.code
    err = _one_line_error(capsys)
    assert rc == 2 and flag in err
    assert not any(name in err for name in ("val_split_pct", "lr=", "epochs=", "batch_size"))


def test_messages_name_arguments_as_the_user_gave_them(tmp_path, capsys):
    """A batch larger than the training chips (found once the data is read): ``batch_size=50`` from Python,
    ``--batch-size 50`` from the CLI."""
    chips = _chips(tmp_path / "chips")
    with pytest.raises(LandcoverError, match=r"^batch_size=50 is larger than the 6 training chips"):
        prepare_data(chips, batch_size=50, val_split_pct=0.25)
    with cli_spelling(), pytest.raises(LandcoverError, match=r"^--batch-size 50 is larger than the 6 training"):
        prepare_data(chips, batch_size=50, val_split_pct=0.25)
    rc = cli_main(["lr-find", str(chips), "--out", str(tmp_path / "lr.png"), "--batch-size", "50",
                   "--val-split", "0.25"])
    err = _one_line_error(capsys)
    assert rc == 2 and "error: --batch-size 50 is larger than the 6 training chips" in err


# --- 6. where checkpoints go -------------------------------------------------------------------------------------


def test_help_says_where_checkpoints_go(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "models/checkpoints" in text and "last.ckpt" in text and "--overwrite" in text


def test_api_mistakes_of_a_notebook_user_are_one_line(first_run, tmp_path):
    chips, data, _ = first_run
    with pytest.raises(LandcoverError, match=r"UnetClassifier\(prepare_data\("):
        UnetClassifier(str(chips))  # the folder instead of prepare_data(folder)
    model = UnetClassifier(data, backbone="resnet18")
    with pytest.raises(LandcoverError, match="give the model a name"):
        model.save("")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(LandcoverError, match="afile: is a file, not a folder"):
        model.save(blocker / "m")  # its parent is a file
