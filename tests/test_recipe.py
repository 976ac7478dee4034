"""The small-set recipe: random windows of the whole labelled area, D4 + band jitter, lr_find by default,
early stopping that restores the best weights, backbone and epochs sized from the data."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

import landcover.data.mosaic as mosaic_module
from conftest import write_raster
from landcover.data import prepare_data
from landcover.data.loader import ChipDataset, read_label
from landcover.data.mosaic import WindowDataset, build_mosaic, chip_layout
from landcover.data.prepare import MIN_WINDOW_BATCHES
from landcover.data.split import MAX_WITHHELD, compact_split
from landcover.data.tiles import read_export
from landcover.data.transforms import Augment
from landcover.errors import LandcoverError
from landcover.model import ResNetEncoder
from landcover.train import UnetClassifier
from landcover.train.recipe import (
    MAX_WINDOW_PIXELS,
    SMALL_SET_BATCH,
    SMALL_SET_EPOCH_BATCHES,
    TARGET_WINDOWS,
    auto_backbone,
    auto_epochs,
    auto_patience,
    size_batches,
)
from tiles_fixture import write_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHIP, STRIDE = 32, 16
X0, Y0 = 400000.0, 4200000.0


def scene(rows: int = 64, cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A 3-band image whose pixels are all distinct and a label with its right quarter unlabelled (0)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60000, (3, rows, cols)).astype(np.uint16)
    label = np.where(rng.random((rows, cols)) < 0.5, 1, 2).astype(np.uint8)
    label[:, cols * 3 // 4:] = 0
    return image, label


def write_chips(folder: Path, image: np.ndarray, label: np.ndarray) -> list[tuple[Path, Path]]:
    """Chips of the scene on a stride, as `landcover export` cuts them: only those with labelled pixels."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    pairs = []
    for r in range(0, label.shape[0] - CHIP + 1, STRIDE):
        for c in range(0, label.shape[1] - CHIP + 1, STRIDE):
            lab = label[r:r + CHIP, c:c + CHIP]
            if not lab.any():
                continue
            t = from_origin(X0 + c, Y0 - r, 1.0, 1.0)
            name = f"{len(pairs):09d}.tif"
            pairs.append((write_raster(folder / "images" / name, image[:, r:r + CHIP, c:c + CHIP], transform=t),
                          write_raster(folder / "labels" / name, lab, transform=t)))
    return pairs


def lut() -> np.ndarray:
    return np.array([0, 1, 2], np.int64)


def test_windows_lie_in_labelled_area_show_the_scene_and_vary_per_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(mosaic_module, "CLASS_WINDOWS", 0.0)  # class-centred windows: the next test
    image, label = scene()
    pairs = write_chips(tmp_path / "chips", image, label)
    mosaic = build_mosaic(pairs, [], lut(), None, [0, 1, 2])
    assert mosaic is not None and mosaic.image.shape == (3, 64, 112)  # the chips' extent, not the scene's
    mean, std = np.full(3, 100.0), np.full(3, 10.0)
    ds = WindowDataset(mosaic, CHIP, ChipDataset(pairs, lut(), mean, std))
    torch.manual_seed(0)
    positions = set()
    for _ in range(200):
        top, left = ds.sample_window()
        assert 0 <= top <= 64 - CHIP and 0 <= left <= 112 - CHIP
        assert (label[top:top + CHIP, left:left + CHIP] > 0).mean() >= mosaic.min_labelled > 0
        positions.add((top, left))
    # windows straddle the exported chips, not only their fixed positions
    assert any(t % STRIDE or lf % STRIDE for t, lf in positions) and len(positions) > 50
    # each item is the scene at some window: imagery and labels aligned
    x, y = ds[0]
    raw = np.rint(x.numpy() * 10.0 + 100.0).astype(np.int64)
    hits = [(t, lf) for t in range(64 - CHIP + 1) for lf in range(112 - CHIP + 1)
            if np.array_equal(raw[0, :2, :2], image[0, t:t + 2, lf:lf + 2])]
    assert len(hits) == 1
    t, lf = hits[0]
    assert np.array_equal(raw, image[:, t:t + CHIP, lf:lf + CHIP])
    assert np.array_equal(y.numpy(), label[t:t + CHIP, lf:lf + CHIP])
    # two epochs see different windows
    first = torch.stack([ds[i][0] for i in range(len(ds))])
    second = torch.stack([ds[i][0] for i in range(len(ds))])
    assert first.shape == second.shape and not torch.equal(first, second)


def test_class_centred_windows_show_a_rare_class_more_often(tmp_path, monkeypatch):
    image, label = scene(128, 256)
    label[70:73, 100:103] = 3  # 9 pixels of a rare class
    pairs = write_chips(tmp_path / "chips", image, label)
    four = np.array([0, 1, 2, 3], np.int64)
    mosaic = build_mosaic(pairs, [], four, None, [0, 1, 2])
    ds = WindowDataset(mosaic, CHIP, ChipDataset(pairs, four, np.full(3, 100.0), np.full(3, 10.0)))
    assert [len(p) for p in ds.class_pixels][2] == 9

    def share_showing_the_rare_class() -> float:
        torch.manual_seed(0)
        hits = 0
        for _ in range(600):
            top, left = ds.sample_window()
            assert 0 <= top <= mosaic.label.shape[0] - CHIP and 0 <= left <= mosaic.label.shape[1] - CHIP
            hits += bool((mosaic.label[top:top + CHIP, left:left + CHIP] == 3).any())
        return hits / 600

    with_class_windows = share_showing_the_rare_class()
    monkeypatch.setattr(mosaic_module, "CLASS_WINDOWS", 0.0)
    without = share_showing_the_rare_class()
    # a third of the windows around a pixel of one of 3 classes: the rare class in at least 1 window in 9
    assert with_class_windows >= 1 / 9 and with_class_windows > 1.5 * without


def test_validation_footprints_are_withheld_and_other_grids_fall_back(tmp_path):
    image, label = scene()
    pairs = write_chips(tmp_path / "chips", image, label)
    valid, train = pairs[:1], pairs[1:]
    mosaic = build_mosaic(train, valid, lut(), None, [0, 1, 2])
    assert mosaic is not None
    assert not mosaic.label[:CHIP, :CHIP].any()  # the validation chip (top-left) is no data for training
    assert mosaic.label[CHIP:, :CHIP].any()
    # a chip off the common pixel grid (half a pixel shifted): no mosaic, the chips are cropped instead
    img, lab = pairs[0]
    shifted = tmp_path / "shifted.tif"
    write_raster(shifted, image[:, :CHIP, :CHIP], transform=from_origin(X0 + 0.5, Y0, 1.0, 1.0))
    assert build_mosaic([*train, (shifted, lab)], [], lut(), None, [0, 1, 2]) is None


def test_prepare_data_samples_windows_by_default(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=8, size=32)
    data = prepare_data(folder, batch_size=2, val_split_pct=0.25)
    assert isinstance(data.train_ds, WindowDataset) and len(data.train_ds.chips) == 6
    # an epoch is as many windows as chips, but at least MIN_WINDOW_BATCHES batches
    assert len(data.train_ds) == MIN_WINDOW_BATCHES * 2 == len(data.train_dl) * 2
    assert len(prepare_data(folder, batch_size=1, val_split_pct=0.25).train_ds) == 6
    x, y = data.train_ds[0]
    assert x.shape == (4, 32, 32) and y.shape == (32, 32) and y.max() > 0
    assert not isinstance(prepare_data(folder, batch_size=2, sampling="chips").train_ds, WindowDataset)
    png = write_export(tmp_path / "png", n_chips=6, size=32, bands=3, chip_format="png")
    assert not isinstance(prepare_data(png, batch_size=2).train_ds, WindowDataset)
    with pytest.raises(LandcoverError, match="sampling='mosaic'"):
        prepare_data(png, batch_size=2, sampling="mosaic")
    with pytest.raises(LandcoverError, match="sampling='tiles'"):
        prepare_data(folder, sampling="tiles")


def test_d4_and_band_jitter_keep_labels_aligned():
    g = torch.Generator().manual_seed(3)
    label = torch.randint(1, 5, (16, 16), generator=g)
    image = torch.stack([label.float() * (b + 1) for b in range(3)])  # each band a function of the label
    torch.manual_seed(0)
    scales = set()
    for _ in range(20):
        img, lab = Augment()(image, label)
        for b in range(3):
            per_class = [img[b][lab == v] for v in range(1, 5)]
            # one value per class in every band, still increasing with the class: the same pixels moved together
            assert all(torch.allclose(p, p[0].expand_as(p)) for p in per_class)
            assert all(per_class[i][0] < per_class[i + 1][0] for i in range(3))
        ratio = (img[:, lab == 2][:, 0] - img[:, lab == 1][:, 0]) / torch.tensor([1.0, 2.0, 3.0])
        scales.add(tuple(round(float(r), 4) for r in ratio))
        assert not torch.allclose(ratio, ratio[0].expand_as(ratio))  # each band its own contrast
    assert len(scales) == 20
    img, lab = Augment(brightness=0, contrast=1)(image, label)
    assert torch.equal(img[0], lab.float())


def tiny_data(tmp_path: Path):
    return prepare_data(write_export(tmp_path / "ex", n_chips=8, size=32, seed=4), batch_size=2,
                        val_split_pct=0.25)


def test_fit_without_lr_uses_lr_find(tmp_path):
    data = tiny_data(tmp_path)
    model = UnetClassifier(data, backbone="resnet18", pretrained=False)
    calls = []
    real = model.lr_find

    def short_lr_find(**kw):  # fewer steps of the real finder: the test is about fit calling it
        calls.append(kw)
        return real(num_steps=12, **kw)

    model.lr_find = short_lr_find
    model.fit(1, checkpoint=False, precision="32-true", limit_train_batches=1, limit_val_batches=1)
    found = model.lr_finder["suggestion"]
    assert len(calls) == 1 and found > 0 and len(model.lr_finder["rates"]) <= 12
    # an encoder started from random weights learns at the found rate in every layer
    assert model._lr_text == f"{found:.4e}"
    model.fit(1, lr=1e-3, checkpoint=False, precision="32-true", limit_train_batches=1, limit_val_batches=1)
    assert len(calls) == 1 and model._lr_text == "1.0000e-03"  # a given rate is used as it is
    # pretrained weights (a torchvision-format checkpoint): the first stage at a tenth of it, as arcgis.learn
    torch.save(ResNetEncoder("resnet18", 3).state_dict(), tmp_path / "r18.pth")
    tuned = UnetClassifier(data, backbone="resnet18", pretrained_path=tmp_path / "r18.pth")
    tuned.lr_find = lambda **kw: UnetClassifier.lr_find(tuned, num_steps=12, **kw)
    tuned.fit(1, checkpoint=False, precision="32-true", limit_train_batches=1, limit_val_batches=1)
    found = tuned.lr_finder["suggestion"]
    assert tuned._lr_text == f"slice('{found / 10:.4e}', '{found:.4e}', None)"


class Weights(L.Callback):
    """Every epoch's weights, after validation."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.epochs.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def test_early_stopping_restores_the_best_weights(tmp_path, monkeypatch):
    from landcover.train.module import SegmentationModule

    series = [3.0, 1.0, 2.0, 2.5, 2.2, 1.1, 1.2, 1.3, 0.9, 0.1]

    def scripted_step(self, batch, batch_idx):
        # the real forward pass and metrics, but a scripted validation loss: the best epoch is known
        x, y = batch
        logits = self(x).float()
        self.log("valid_loss", torch.tensor(series[self.current_epoch]), on_epoch=True, batch_size=x.shape[0])
        self.confusion.update(logits.argmax(dim=1), y)

    monkeypatch.setattr(SegmentationModule, "validation_step", scripted_step)
    model = UnetClassifier(tiny_data(tmp_path), backbone="resnet18", pretrained=False)
    weights = Weights()
    model.fit(10, lr=1e-3, one_cycle=False, early_stopping=2, checkpoint=False, monitor="valid_loss",
              precision="32-true", callbacks=[weights], limit_train_batches=1, limit_val_batches=1)
    assert len(weights.epochs) == 4  # epoch 1 was best, 2 and 3 did not improve: stopped
    state = model.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.epochs[1].items())
    assert not all(torch.equal(state[k], v) for k, v in weights.epochs[3].items())
    assert model._monitored == ("valid_loss", pytest.approx(1.0))
    # Under one-cycle the first half (the rate's rise and peak) is neither judged nor kept: epochs 2-4 do not stop
    # the run and epoch 1's lucky value is not the best; judged from epoch 5, the run stops when epochs 6 and 7 are
    # no better than 5, and epoch 5 returns.
    model = UnetClassifier(tiny_data(tmp_path / "c"), backbone="resnet18", pretrained=False)
    weights = Weights()
    model.fit(10, lr=1e-3, early_stopping=2, checkpoint=False, monitor="valid_loss", precision="32-true",
              callbacks=[weights], limit_train_batches=1, limit_val_batches=1)
    assert len(weights.epochs) == 8
    state = model.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.epochs[5].items())
    assert model._monitored == ("valid_loss", pytest.approx(1.1))
    # the same with checkpoint files: the best checkpoint is the annealing half's best
    model.fit(10, lr=1e-3, early_stopping=2, monitor="valid_loss", precision="32-true", limit_train_batches=1,
              limit_val_batches=1)
    assert model.checkpoint_path.name == "best-epoch=005.ckpt"
    with pytest.raises(LandcoverError, match="early_stopping"):
        model.fit(1, lr=1e-3, early_stopping=-1)


def sized(train_chips: int, chip: int, batch: int = 16) -> SimpleNamespace:
    n_valid = max(1, train_chips // 9)
    pixels = (train_chips + n_valid) * chip * chip
    return SimpleNamespace(class_pixel_counts={1: pixels // 2, 2: pixels - pixels // 2}, batch_size=batch,
                           train_ds=range(train_chips), valid_ds=range(n_valid), chip_size=chip)


def test_backbone_and_epochs_are_sized_from_the_data():
    tiny, large = sized(30, 64), sized(5000, 256)
    assert auto_backbone(tiny) == "resnet18" and auto_backbone(large) == "resnet34"
    assert auto_epochs(tiny) == 100  # one step an epoch: as many epochs as allowed
    # about TARGET_WINDOWS windows: 128 windows an epoch in batches of 8 ...
    assert auto_epochs(sized(128, 64, batch=8)) == math.ceil(TARGET_WINDOWS / 128)
    # ... unless they pass MAX_WINDOW_PIXELS: 128 x 128 windows stop at about 4,900
    assert auto_epochs(sized(256, 128)) == math.ceil(MAX_WINDOW_PIXELS / 128**2 / 256)
    assert auto_epochs(large) == 10
    assert auto_patience(10) == 5 and auto_patience(100) == 25


def test_a_small_set_trains_on_smaller_batches_and_longer_epochs(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=24, size=32)
    data = prepare_data(folder, batch_size=16, val_split_pct=0.25)
    assert isinstance(data.train_ds, WindowDataset) and len(data.train_ds) == MIN_WINDOW_BATCHES * 16
    size_batches(data)
    assert data.batch_size == SMALL_SET_BATCH
    assert len(data.train_ds) == SMALL_SET_EPOCH_BATCHES * SMALL_SET_BATCH
    assert len(data.train_dl) == SMALL_SET_EPOCH_BATCHES
    # a smaller batch asked for is kept
    data = prepare_data(folder, batch_size=4, val_split_pct=0.25)
    size_batches(data)
    assert data.batch_size == 4 and len(data.train_dl) == SMALL_SET_EPOCH_BATCHES
    # crops of the chips (no mosaic) keep their epoch of one pass over the chips
    chips = prepare_data(folder, batch_size=16, val_split_pct=0.25, sampling="chips")
    size_batches(chips)
    assert chips.batch_size == SMALL_SET_BATCH and len(chips.train_ds) == 18
    # larger chips, whose windows the pixel cap bounds, and larger sets keep their batches
    for ns in (sized(64, 128), sized(5000, 64)):
        size_batches(ns)
        assert ns.batch_size == 16


def test_cli_defaults_are_the_recipe():
    import argparse

    from landcover.cli import train as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "chips", "--out", "m"])
    assert (args.backbone, args.epochs, args.monitor, args.sampling) == ("auto", None, "valid_loss", "auto")
    assert args.batch_size is None  # sized: train.recipe.size_batches
    assert not args.no_early_stopping and not args.no_augment and args.lr is None
    assert (args.dice_loss_fraction, args.dice_loss_average) == (0.5, "macro")
    args = parser.parse_args(["train", "chips", "--out", "m", "--sampling", "chips", "--no-augment",
                              "--no-early-stopping", "--max-minutes", "1.5", "--backbone", "resnet34"])
    assert (args.sampling, args.no_augment, args.no_early_stopping, args.max_minutes) == ("chips", True, True, 1.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "chips", "--out", "m", "--early-stopping", "--no-early-stopping"])


def test_compact_split_keeps_rare_classes_in_training_and_withholds_little(tmp_path):
    image, label = scene()
    label[20:26, 40:46] = 3  # a rare class, inside 4 of the overlapping chips
    pairs = write_chips(tmp_path / "chips", image, label)
    layout = chip_layout(pairs)
    assert layout is not None and len(layout.origins) == len(pairs) == 18
    labels = [label[r:r + CHIP, c:c + CHIP] for r, c in layout.origins]
    footprint = np.zeros(label.shape, bool)
    for seed in range(10):
        valid = compact_split(layout, labels, 3, seed)
        assert len(valid) == 3 and valid == compact_split(layout, labels, 3, seed)
        footprint[:] = False
        for i in valid:
            r, c = layout.origins[i]
            footprint[r:r + CHIP, c:c + CHIP] = True
        # the rare class stays in training, and the block overlaps: 3 chips withhold less than 3 chips' area
        assert (footprint & (label == 3)).sum() <= MAX_WITHHELD * (label == 3).sum()
        assert footprint.sum() < 3 * CHIP * CHIP
        # one block: every chip touches another
        for i in valid:
            assert any(abs(np.subtract(layout.origins[i], layout.origins[j])).max() <= CHIP for j in valid - {i})
    # prepare_data validates on such a block when it samples windows
    folder = write_export(tmp_path / "ex", n_chips=12, size=32)
    data = prepare_data(folder, batch_size=2, val_split_pct=0.25, seed=5)
    assert isinstance(data.train_ds, WindowDataset) and len(data.valid_ds) == 3
    pairs = read_export(folder).pairs
    expected = compact_split(chip_layout(pairs), [read_label(lab) for _, lab in pairs], 3, 5)
    assert {pairs[i][0].name for i in expected} == {img.name for img, _ in data.valid_ds.pairs}
