"""The arcgis.learn keywords a notebook user ports over: UnetClassifier(mixup=, dice_loss_average=),
fit(tensorboard=), mIOU(show_progress=), per_class_metrics(ignore_classes=), show_results(rows=5, alpha=) and
save(framework=, publish=, gis=, save_optimizer=)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landcover.cli import main as cli_main
from landcover.data import prepare_data
from landcover.errors import LandcoverError, cli_spelling
from landcover.train import ClassMetrics, UnetClassifier
from landcover.train import classifier as classifier_module
from landcover.train.losses import SegmentationLoss
from landcover.train.module import SegmentationModule
from tiles_fixture import write_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(folder: Path, n_chips: int = 8, val: float = 0.25, batch_size: int = 2):
    return prepare_data(write_export(folder, n_chips=n_chips), batch_size=batch_size, val_split_pct=val)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 chips of 64 px, classes 1 Water, 3 Trees, 7 Buildings; 6 of them for validation."""
    return _data(tmp_path_factory.mktemp("parity") / "chips", n_chips=12, val=0.5)


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return UnetClassifier(data, backbone="resnet18")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text.strip(), text
    return text


# --- 1. mixup --------------------------------------------------------------------------------------------------


def _batch(data):
    x, y = next(iter(data.train_dl))
    return x, y


def _module(model, mixup: bool) -> SegmentationModule:
    return SegmentationModule(model.net, model._loss(), [1e-3] * len(model.net.layer_groups()), model.classes,
                              mixup=mixup)


class _Inputs:
    """The tensors the U-Net is called with."""

    def __init__(self, net):
        self.seen: list[torch.Tensor] = []
        self.handle = net.register_forward_pre_hook(lambda mod, args: self.seen.append(args[0].detach().clone()))

    def close(self):
        self.handle.remove()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_mixup_training_step_mixes_the_batch_and_the_loss(model, data):
    x, y = _batch(data)
    module = _module(model, mixup=True)
    inputs = _Inputs(model.net)

    def draw(seed: int) -> tuple[float, torch.Tensor]:
        """What arcgis.learn's mixup (fastai's MixUp, alpha 0.4) draws, from torch's RNG in the brief's order."""
        torch.manual_seed(seed)
        alpha = torch.tensor(0.4)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return max(lam, 1 - lam), torch.randperm(len(x))

    # a seed whose permutation moves the chips and whose lam mixes visibly
    seed = next(s for s in range(100) if draw(s)[1].tolist() != list(range(len(x))) and draw(s)[0] < 0.9)
    lam, perm = draw(seed)
    assert 0.5 <= lam
    try:
        lightning.seed_everything(seed, verbose=False)
        loss = module.training_step((x, y), 0)
        seen = inputs.seen[-1]
        assert not torch.allclose(seen, x)  # the step trains on a mixed batch
        torch.testing.assert_close(seen, lam * x + (1 - lam) * x[perm])
        with torch.no_grad():
            logits = model.net(seen).float()
        # cross-entropy over labelled pixels (label 0 = no data) for each target, weighted by lam
        expected = lam * F.cross_entropy(logits, y, ignore_index=0) + (1 - lam) * F.cross_entropy(
            logits, y[perm], ignore_index=0)
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
        # reproducible under lightning.seed_everything
        lightning.seed_everything(seed, verbose=False)
        module.training_step((x, y), 0)
        torch.testing.assert_close(inputs.seen[-1], seen)
        # validation sees the batch unchanged
        with torch.no_grad():
            module.validation_step((x, y), 0)
        assert torch.equal(inputs.seen[-1], x)
        module.confusion.reset()
        # without mixup the training step sees the batch itself
        _module(model, mixup=False).training_step((x, y), 0)
        assert torch.equal(inputs.seen[-1], x)
    finally:
        inputs.close()


def test_fit_with_mixup_is_reproducible_and_differs_from_plain(tmp_path):
    data = _data(tmp_path / "chips")

    def run(mixup: bool) -> list[float]:
        lightning.seed_everything(5, verbose=False)
        m = UnetClassifier(data, backbone="resnet18", mixup=mixup)
        m.fit(1, lr=1e-3, checkpoint=False)
        return [v for _, v in m.history_train]

    a, b, plain = run(True), run(True), run(False)
    assert a == b
    assert a != plain


def test_lr_find_uses_the_mixed_loss(data, monkeypatch):
    from landcover.train import lr_find

    calls = []
    real = lr_find.mixup_batch

    def spy(x, *args):
        calls.append(len(x))
        return real(x, *args)

    monkeypatch.setattr(lr_find, "mixup_batch", spy)
    UnetClassifier(data, backbone="resnet18").lr_find(allow_plot=False, num_steps=2)
    assert calls == []
    UnetClassifier(data, backbone="resnet18", mixup=True).lr_find(allow_plot=False, num_steps=2)
    assert len(calls) == 2


# --- 1. dice_loss_average ---------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dice_by_hand(logits: torch.Tensor, target: torch.Tensor, kept: list[int]) -> tuple[float, float]:
    """(micro, macro) soft Dice loss over the labelled pixels of the ``kept`` class indices, with numpy."""
    p = _softmax(logits.double().numpy())
    t = target.numpy()
    valid = np.isin(t, kept)
    inter, psum, tsum = {}, {}, {}
    for c in kept:
        inter[c] = (p[:, c] * (t == c) * valid).sum()
        psum[c] = (p[:, c] * valid).sum()
        tsum[c] = ((t == c) & valid).sum()
    micro = 1 - 2 * sum(inter.values()) / (sum(psum.values()) + sum(tsum.values()))
    present = [c for c in kept if tsum[c] > 0]
    macro = 1 - np.mean([2 * inter[c] / (psum[c] + tsum[c]) for c in present])
    return float(micro), float(macro)


def test_macro_and_micro_dice_equal_hand_computations():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g) * 2
    # imbalanced: class 1 almost everywhere, class 2 on 6 pixels, class 3 absent, some unlabelled (0) pixels
    target = torch.ones(2, 8, 8, dtype=torch.long)
    target[0, :2, :3] = 2
    target[1, 5:, 6:] = 0
    micro_ref, macro_ref = _dice_by_hand(logits, target, kept=[1, 2, 3])
    micro = SegmentationLoss(4, dice_fraction=1.0, dice_average="micro")(logits, target)
    macro = SegmentationLoss(4, dice_fraction=1.0, dice_average="macro")(logits, target)
    assert float(micro) == pytest.approx(micro_ref, rel=1e-5)
    assert float(macro) == pytest.approx(macro_ref, rel=1e-5)
    assert abs(micro_ref - macro_ref) > 0.05  # the rare class weighs far more in the macro mean
    # a class with weight 0 (ignore_classes) is left out of both
    weight = torch.tensor([0.0, 1.0, 0.0, 1.0])
    micro_ref, macro_ref = _dice_by_hand(logits, target, kept=[1, 3])
    assert float(SegmentationLoss(4, weight, dice_fraction=1.0, dice_average="macro")(logits, target)) == \
        pytest.approx(macro_ref, rel=1e-5)
    assert float(SegmentationLoss(4, weight, dice_fraction=1.0, dice_average="micro")(logits, target)) == \
        pytest.approx(micro_ref, rel=1e-5)
    # mixed with cross-entropy: (1 - f) * CE + f * Dice
    ce = F.cross_entropy(logits, target, ignore_index=0)
    _, macro_ref = _dice_by_hand(logits, target, kept=[1, 2, 3])
    mixed = SegmentationLoss(4, dice_fraction=0.25, dice_average="macro")(logits, target)
    assert float(mixed) == pytest.approx(0.75 * float(ce) + 0.25 * macro_ref, rel=1e-5)


def test_classifier_passes_dice_average_to_its_loss(data):
    assert UnetClassifier(data, backbone="resnet18")._loss().dice_average == "micro"
    m = UnetClassifier(data, backbone="resnet18", dice_loss_fraction=0.5, dice_loss_average="macro")
    assert m._loss().dice_average == "macro"


@pytest.mark.parametrize("kwargs, match", [
    ({"dice_loss_average": "mean"}, r"dice_loss_average='mean': choose 'micro' or 'macro'"),
    ({"dice_loss_average": None}, r"dice_loss_average=None: choose 'micro' or 'macro'"),
    ({"mixup": "yes"}, r"mixup='yes': give True or False"),
    ({"mixup": 0.4}, r"mixup=0.4: give True or False"),
])
def test_bad_training_options_are_one_line(data, kwargs, match):
    with pytest.raises(LandcoverError, match=match) as exc:
        UnetClassifier(data, backbone="resnet18", **kwargs)
    _one_line(exc)


def test_options_recorded_in_the_package_and_shown(data, tmp_path):
    m = UnetClassifier(data, backbone="resnet18", mixup=True, dice_loss_fraction=0.3, dice_loss_average="macro")
    assert "mixup=True" in repr(m) and "dice_loss_average='macro'" in repr(m)
    assert "mixup" not in repr(UnetClassifier(data, backbone="resnet18"))
    facts = m._facts()
    assert facts["Mixup"].startswith("yes") and "macro Dice" in facts["Loss"]
    folder = m.save(tmp_path / "pkg", compute_metrics=False)
    emd = json.loads((folder / "pkg.emd").read_text())
    params = emd["ModelParameters"]
    assert params["backbone"] == "resnet18" and params["backend"] == "pytorch"
    assert params["mixup"] is True and params["dice_loss_average"] == "macro"
    assert params["dice_loss_fraction"] == 0.3
    # from_model: the recorded options come back (as arcgis.learn passes ModelParameters to the constructor)
    loaded = UnetClassifier.from_model(folder)
    assert loaded.mixup is True and loaded.dice_loss_average == "macro"
    # a package written before these options existed ({"backbone", "backend"} only) still loads
    emd["ModelParameters"] = {"backbone": "resnet18", "backend": "pytorch"}
    (folder / "pkg.emd").write_text(json.dumps(emd))
    old = UnetClassifier.from_model(folder / "pkg.emd")
    assert old.mixup is False and old.dice_loss_average == "micro"


# --- 2. fit(tensorboard=True) -----------------------------------------------------------------------------------


def _scalar_tags(event_file: Path) -> set[str]:
    """Scalar tags in a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    raw, tags, pos = event_file.read_bytes(), set(), 0
    while pos + 12 <= len(raw):
        (length,) = struct.unpack("<Q", raw[pos:pos + 8])
        event = Event.FromString(raw[pos + 12:pos + 12 + length])
        tags |= {v.tag for v in event.summary.value}
        pos += 12 + length + 4
    return tags


def test_tensorboard_logs_under_training_log(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    data = _data(tmp_path / "chips")
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(2, lr=1e-3, checkpoint=False, tensorboard=True)
    logs = data.path / "training_log"
    events = list(logs.rglob("events.out.tfevents.*"))
    assert len(events) == 1 and model.tensorboard_dir == events[0].parent
    tags = _scalar_tags(events[0])
    assert {"train_loss_epoch", "valid_loss", "accuracy", "miou"} <= tags, tags
    assert any(t.startswith("lr-") for t in tags)
    # the per-epoch table still prints
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "miou", "time"]
    assert [line.split()[0] for line in lines[1:3]] == ["0", "1"]


def test_tensorboard_read_only_data_logs_to_the_working_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboardX")
    data = _data(tmp_path / "chips")
    real = classifier_module.check_writable_dir

    def read_only_data(folder, *args, **kwargs):
        if Path(folder).is_relative_to(data.path):
            raise LandcoverError(f"{folder}: output folder is not writable (Read-only file system)")
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(classifier_module, "check_writable_dir", read_only_data)
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(1, lr=1e-3, checkpoint=False, tensorboard=True, limit_train_batches=1)
    assert model.tensorboard_dir.parent == data.working_dir / "training_log"
    assert list(model.tensorboard_dir.glob("events.out.tfevents.*"))
    assert "read-only" in capsys.readouterr().out


def test_tensorboard_missing_is_one_line(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    model = UnetClassifier(data, backbone="resnet18")
    model.lr_find = lambda **kw: pytest.fail("the error must come before any work")
    with pytest.raises(LandcoverError, match="pip install tensorboard") as exc:
        model.fit(1, tensorboard=True)
    _one_line(exc)
    with pytest.raises(LandcoverError, match="tensorboard='yes': give True or False"):
        model.fit(1, lr=1e-3, tensorboard="yes")


def test_cli_train_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    chips = write_export(tmp_path / "chips", n_chips=6)
    out = tmp_path / "models" / "tb"
    rc = cli_main(["train", str(chips), "--out", str(out), "--backbone", "resnet18", "--epochs", "1",
                   "--batch-size", "2", "--lr", "1e-3", "--val-split", "0.2", "--tensorboard", "--mixup",
                   "--dice-loss-fraction", "0.2", "--dice-loss-average", "macro"])
    text = capsys.readouterr().out
    assert rc == 0
    assert list((chips / "training_log").rglob("events.out.tfevents.*"))
    assert "TensorBoard logs:" in text and str(chips / "training_log") in text
    params = json.loads((out / "tb.emd").read_text())["ModelParameters"]
    assert params["mixup"] is True and params["dice_loss_average"] == "macro"
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--tensorboard" in help_text and "training_log" in help_text and "--mixup" in help_text


# --- 3. mIOU(show_progress=) ------------------------------------------------------------------------------------


def test_miou_show_progress(model, capsys):
    model._metrics = None
    capsys.readouterr()
    ious = model.mIOU(show_progress=True)
    err = capsys.readouterr().err
    assert "validation" in err and "batch" in err  # a tqdm bar over the validation batches
    assert set(ious) == {"Water", "Trees", "Buildings"}
    model.mIOU()  # cached: nothing to show
    assert capsys.readouterr().err == ""
    model._metrics = None
    assert model.mIOU(show_progress=False) == ious
    assert capsys.readouterr().err == ""
    model._metrics = None
    assert model.mIOU(mean=True, show_progress=False) == pytest.approx(np.mean(list(ious.values())))
    assert capsys.readouterr().err == ""
    with pytest.raises(LandcoverError, match="show_progress='no': give True or False"):
        model.mIOU(show_progress="no")


# --- 4. per_class_metrics(ignore_classes=) ----------------------------------------------------------------------


def test_per_class_metrics_ignore_classes_and_table(model):
    full = model.per_class_metrics()
    assert isinstance(full, ClassMetrics) and isinstance(full, dict)
    assert list(full) == ["Water", "Trees", "Buildings"]
    assert set(full["Water"]) == {"precision", "recall", "f1", "iou", "support"}
    assert json.loads(json.dumps(full)) == full  # still plain data
    part = model.per_class_metrics(ignore_classes=[3])
    assert list(part) == ["Water", "Buildings"] and part["Water"] == full["Water"]
    assert list(model.per_class_metrics(ignore_classes=7)) == ["Water", "Trees"]
    assert model.per_class_metrics(ignore_classes=None) == full
    html = full._repr_html_()
    assert html.startswith("<table") and all(f"<th>{n}</th>" in html for n in full)
    assert all(f"<th>{row}</th>" in html for row in ("precision", "recall", "f1", "iou", "support"))
    assert "Trees" not in part._repr_html_()
    text = str(part)
    lines = text.splitlines()
    assert lines[0].split() == ["Water", "Buildings"]
    assert [line.split()[0] for line in lines[1:]] == ["precision", "recall", "f1", "iou", "support"]
    assert lines[-1].split()[1:] == [str(full["Water"]["support"]), str(full["Buildings"]["support"])]


@pytest.mark.parametrize("bad, match", [
    ([99], r"class 99 is not in the model \(classes: 1, 3, 7\)"),
    (["Trees"], r"give class values, e\.g\. ignore_classes=\[1\] \(classes: 1, 3, 7\)"),
    ("Trees", r"give class values"),
])
def test_per_class_metrics_bad_ignore_classes(model, bad, match):
    with pytest.raises(LandcoverError, match=match) as exc:
        model.per_class_metrics(ignore_classes=bad)
    _one_line(exc)


# --- 5. show_results(rows=5, alpha=) ----------------------------------------------------------------------------


def test_show_results_rows_and_alpha(model):
    fig = model.show_results()  # arcgis.learn's default: 5 rows
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 * 3
    truth_overlay = panels[1].images[1].get_array()
    assert float(np.max(truth_overlay[..., 3])) == pytest.approx(0.7)
    fig = model.show_results(rows=2, alpha=0.3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 3
    for ax in panels[1:3]:  # truth and prediction over the image
        assert len(ax.images) == 2
        # classes at opacity alpha, no data (0: what an untrained model may predict) transparent
        assert {round(float(a), 6) for a in np.unique(ax.images[1].get_array()[..., 3])} <= {0.0, 0.3}
    assert float(np.max(panels[1].images[1].get_array()[..., 3])) == pytest.approx(0.3)
    for kwargs, match in (({"alpha": 1.5}, "alpha=1.5: give an opacity from 0 to 1"),
                          ({"alpha": "x"}, "alpha='x': give an opacity"),
                          ({"rows": 0}, r"rows=0\): give a whole number")):
        with pytest.raises(LandcoverError, match=match):
            model.show_results(**kwargs)


# --- 6. save(framework=, publish=, gis=, save_optimizer=) -------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"framework": "tflite"}, r"framework='tflite'.*PyTorch weights \(safetensors\).*builds ONNX"),
    ({"framework": "TF-ONNX"}, r"framework='TF-ONNX'.*framework='PyTorch'"),
    ({"framework": "torchscript"}, r"landcover classify builds ONNX"),
    ({"publish": True}, r"does not publish to a portal; upload the \.dlpk .*gis\.content\.add"),
    ({"gis": object()}, r"does not publish to a portal"),
    ({"save_optimizer": True}, r"models/checkpoints/<date>_<time>/last\.ckpt.*fit\(resume=\.\.\.\)"),
])
def test_save_arcgis_options_not_done_are_one_line(model, tmp_path, kwargs, match):
    with pytest.raises(LandcoverError, match=match) as exc:
        model.save(tmp_path / "m", **kwargs)
    _one_line(exc)
    assert not (tmp_path / "m").exists()  # refused before anything is written


def test_save_framework_pytorch_and_positional_calls(model, tmp_path):
    extra = tmp_path / "note.txt"
    extra.write_text("hello")
    folder = model.save(tmp_path / "a", framework="pytorch", publish=False, gis=None, save_optimizer=False,
                        compute_metrics=False)
    assert (folder / "a.dlpk").is_file()
    # the existing positional order (name, extra_files, compute_metrics, overwrite) still works
    folder = model.save(tmp_path / "b", {"notes/note.txt": extra}, False, True, framework="PyTorch")
    assert (folder / "notes" / "note.txt").read_text() == "hello"
    # arcgis.learn's positional framework lands on extra_files: one line saying to pass it by keyword
    with pytest.raises(LandcoverError, match=r"framework='PyTorch'") as exc:
        model.save(tmp_path / "c", "PyTorch")
    _one_line(exc)


def test_save_optimizer_names_the_last_checkpoint(tmp_path):
    data = _data(tmp_path / "chips")
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(1, lr=1e-3, limit_train_batches=1)
    with pytest.raises(LandcoverError) as exc:
        model.save("m", save_optimizer=True)
    text = _one_line(exc)
    assert str(model.last_checkpoint) in text and "fit(resume=...)" in text


# --- 7. prepare_data(extract_bands=) through the package to classification ------------------------------------


def test_extract_bands_reach_the_package_and_classification(tmp_path, capsys):
    """A model trained on bands 4, 1, 2 of 4-band chips records them as its ExtractBands, reloads only with the
    same selection, and classifies a 4-band raster exactly as the same weights classify a raster that holds just
    those three bands."""
    import dataclasses

    import rasterio
    from rasterio.transform import from_origin

    from landcover.classify import classify_pixels
    from landcover.package import load_package, save_package

    chips = write_export(tmp_path / "chips", n_chips=8, bands=4)
    data = prepare_data(chips, batch_size=2, val_split_pct=0.25, extract_bands=[3, 0, 1])
    torch.manual_seed(0)
    model = UnetClassifier(data, backbone="resnet18")
    assert model.extract_bands == [3, 0, 1]
    folder = model.save(tmp_path / "models" / "nirg", compute_metrics=False)
    emd = json.loads((folder / "nirg.emd").read_text())
    assert emd["ExtractBands"] == [3, 0, 1]
    with pytest.raises(LandcoverError) as err:
        UnetClassifier.from_model(folder, data=prepare_data(chips, batch_size=2, val_split_pct=0.25))
    assert "extract_bands=[3, 0, 1]" in _one_line(err)
    again = UnetClassifier.from_model(folder, data=prepare_data(chips, batch_size=2, val_split_pct=0.25,
                                                                extract_bands=[3, 0, 1]))
    assert again.extract_bands == [3, 0, 1]

    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (4, 96, 96), dtype=np.uint8)
    profile = dict(driver="GTiff", width=96, height=96, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(600000, 4500000, 1, 1))
    with rasterio.open(tmp_path / "four.tif", "w", count=4, **profile) as ds:
        ds.write(image)
    with rasterio.open(tmp_path / "three.tif", "w", count=3, **profile) as ds:
        ds.write(image[[3, 0, 1]])
    pkg = load_package(folder)
    plain = save_package(dataclasses.replace(pkg, extract_bands=[0, 1, 2]), tmp_path / "models" / "plain")
    out4 = classify_pixels(tmp_path / "four.tif", folder, tmp_path / "four-out.tif", padding=8, backend="fp32",
                           progress=False)
    out3 = classify_pixels(tmp_path / "three.tif", plain, tmp_path / "three-out.tif", padding=8, backend="fp32",
                           progress=False)
    with rasterio.open(out4) as a, rasterio.open(out3) as b:
        assert np.array_equal(a.read(1), b.read(1))
    with pytest.raises(LandcoverError) as err:
        classify_pixels(tmp_path / "three.tif", folder, tmp_path / "x.tif", backend="fp32", progress=False)
    assert "4, 1, 2" in _one_line(err)


def test_cli_extract_bands_are_counted_from_1(tmp_path, capsys):
    chips = write_export(tmp_path / "chips", n_chips=6, bands=4)
    out = tmp_path / "models" / "nir"
    rc = cli_main(["train", str(chips), "--out", str(out), "--backbone", "resnet18", "--epochs", "1",
                   "--batch-size", "2", "--lr", "1e-3", "--val-split", "0.2", "--extract-bands", "4", "1", "2",
                   "--stratify"])
    assert rc == 0
    assert json.loads((out / "nir.emd").read_text())["ExtractBands"] == [3, 0, 1]
    capsys.readouterr()
    rc = cli_main(["train", str(chips), "--out", str(tmp_path / "models" / "bad"), "--backbone", "resnet18",
                   "--extract-bands", "5", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "--extract-bands 5 1: give distinct bands from 1 to 4" in err


# --- 8. what a package or checkpoint records about bands and training options --------------------------------


def test_resume_with_other_bands_is_refused(tmp_path):
    chips = write_export(tmp_path / "chips", n_chips=6, bands=4)
    first = UnetClassifier(prepare_data(chips, batch_size=2, val_split_pct=0.25, extract_bands=[3, 0, 1]),
                           backbone="resnet18")
    first.fit(1, lr=1e-3)
    other = UnetClassifier(prepare_data(chips, batch_size=2, val_split_pct=0.25, extract_bands=[0, 1, 2]),
                           backbone="resnet18")
    with pytest.raises(LandcoverError) as err:
        other.fit(2, lr=1e-3, resume=first.last_checkpoint)
    text = _one_line(err)
    assert "trained on bands [3, 0, 1] (0-based)" in text and text.endswith("resume with extract_bands=[3, 0, 1]")
    with cli_spelling(), pytest.raises(LandcoverError) as err:  # the CLI counts bands from 1, as GDAL
        other.fit(2, lr=1e-3, resume=first.last_checkpoint)
    text = _one_line(err)
    assert "trained on bands 4 1 2 of the chips, this run reads 1 2 3;" in text
    assert text.endswith("resume with --extract-bands 4 1 2")


def test_from_model_keeps_the_training_options(data, tmp_path):
    torch.manual_seed(0)
    model = UnetClassifier(data, backbone="resnet18", mixup=True, dice_loss_fraction=0.3,
                           dice_loss_average="macro", focal_loss=True)
    folder = model.save(tmp_path / "opts", compute_metrics=False)
    emd = json.loads((folder / "opts.emd").read_text())
    assert emd["IsMultispectral"] is True  # 4 bands
    for reloaded in (UnetClassifier.from_model(folder), UnetClassifier.from_model(folder, data=data)):
        assert reloaded._training_options() == {"class_balancing": False, "focal_loss": True,
                                                "dice_loss_fraction": 0.3, "dice_loss_average": "macro",
                                                "mixup": True}
    resaved = UnetClassifier.from_model(folder, data=data).save(tmp_path / "again", compute_metrics=False)
    assert json.loads((resaved / "again.emd").read_text())["ModelParameters"] == emd["ModelParameters"]


def test_pretrained_on_other_bands_warns(tmp_path):
    chips = write_export(tmp_path / "chips", n_chips=6, bands=4)
    nir = UnetClassifier(prepare_data(chips, batch_size=2, val_split_pct=0.25, extract_bands=[3, 0, 1]),
                         backbone="resnet18")
    folder = nir.save(tmp_path / "nir", compute_metrics=False)
    rgb = prepare_data(chips, batch_size=2, val_split_pct=0.25, extract_bands=[0, 1, 2])
    with pytest.warns(UserWarning, match=r"trained on bands \[3, 0, 1\]"):
        UnetClassifier(rgb, backbone="resnet18", pretrained_path=folder)


def test_more_bad_training_input_is_one_line(data, tmp_path):
    chips = write_export(tmp_path / "chips", n_chips=6)
    cases = [
        (lambda: UnetClassifier(prepare_data(chips, batch_size=1, val_split_pct=0.25), backbone="resnet18",
                                mixup=True), "batch_size=2"),
        (lambda: UnetClassifier(data, backbone="resnet18", dice_loss_fraction="x"), "dice_loss_fraction='x'"),
        (lambda: prepare_data(chips, batch_size="eight"), "batch_size='eight'"),
        (lambda: prepare_data(chips, batch_size=2, rgb_bands=[0, 1, 2, 3]), "4 indices, not 3"),
    ]
    for make, expected in cases:
        with pytest.raises(LandcoverError) as err:
            make()
        assert expected in _one_line(err)
    model = UnetClassifier(data, backbone="resnet18")
    with pytest.raises(LandcoverError) as err:
        model.per_class_metrics(ignore_classes=[1, 3, 7])
    assert "leaves no class" in _one_line(err)


def test_unwritable_working_folder_is_refused_before_training(tmp_path):
    chips = write_export(tmp_path / "chips", n_chips=6)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = prepare_data(chips, batch_size=2, val_split_pct=0.25, working_dir=blocker / "work")
    model = UnetClassifier(data, backbone="resnet18")
    with pytest.raises(LandcoverError) as err:
        model.fit(1, lr=1e-3)
    assert "working_dir=" in _one_line(err) and model.history_train == []


def test_cli_extract_bands_say_they_count_from_1(tmp_path, capsys):
    chips = write_export(tmp_path / "chips", n_chips=6, bands=4)
    with pytest.raises(SystemExit):
        cli_main(["train", str(chips), "--out", str(tmp_path / "m"), "--extract-bands", "3", "0", "1"])
    assert "counted from 1" in capsys.readouterr().err


# --- 9. freeze / unfreeze / load / backbones / available_metrics ---------------------------------------------


def test_freeze_trains_only_decoder_head_and_encoder_batch_norm(data):
    torch.manual_seed(0)
    model = UnetClassifier(data, backbone="resnet18")
    assert "resnet34" in UnetClassifier.backbones() and model.available_metrics == ["valid_loss", "accuracy", "miou"]
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.freeze()
    frozen = {n for n, p in model.net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.") and "bn" not in n for n in frozen)
    assert "encoder.conv1.weight" in frozen and "encoder.bn1.weight" not in frozen
    model.fit(1, lr=1e-2, checkpoint=False)
    after = model.net.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["encoder.bn1.weight"], after["encoder.bn1.weight"])
    model.unfreeze().fit(1, lr=1e-2, checkpoint=False)
    assert all(p.requires_grad for p in model.net.parameters())
    assert not torch.equal(before["encoder.conv1.weight"], model.net.state_dict()["encoder.conv1.weight"])


def test_load_puts_a_saved_models_weights_into_this_one(data, tmp_path):
    torch.manual_seed(0)
    saved = UnetClassifier(data, backbone="resnet18")
    saved.save("loadme", compute_metrics=False)  # -> <working_dir>/models/loadme
    torch.manual_seed(1)
    other = UnetClassifier(data, backbone="resnet18")
    assert not torch.equal(other.net.state_dict()["head.weight"], saved.net.state_dict()["head.weight"])
    assert other.load("loadme") is other
    assert all(torch.equal(v, saved.net.state_dict()[k]) for k, v in other.net.state_dict().items())
    chips = write_export(tmp_path / "two", n_chips=6, values=(1, 3), names=("Water", "Trees"))
    stranger = UnetClassifier(prepare_data(chips, batch_size=2, val_split_pct=0.25), backbone="resnet18")
    with pytest.raises(LandcoverError) as err:
        stranger.load(Path(data.working_dir) / "models" / "loadme")
    assert "classes [1, 3, 7] differ" in _one_line(err) and "pretrained_path" in _one_line(err)
    with pytest.raises(LandcoverError):
        other.load("no-such-model")
