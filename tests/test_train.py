"""UnetClassifier: learning, metrics against numpy, lr_find, fit options, save/load, CLI, DDP, export → train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from landcover.classes import ClassInfo
from landcover.cli import main as cli_main
from landcover.data import prepare_data
from landcover.errors import LandcoverError
from landcover.model import UNet
from landcover.package import load_package, save_package
from landcover.train import UnetClassifier, metrics_from_confusion
from landcover.train.module import SegmentationModule
from tiles_fixture import write_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18 U-Net trained for a few epochs on generated chips whose classes are visually distinct."""
    work = tmp_path_factory.mktemp("train")
    data = prepare_data(write_export(work / "chips", n_chips=16), batch_size=4, val_split_pct=0.25)
    torch.manual_seed(0)
    model = UnetClassifier(data, backbone="resnet18")
    before = model._evaluate()
    model.fit(6, lr=slice(1e-3, 1e-2))
    return data, model, before


def test_learns(trained, capsys):
    data, model, before = trained
    first, last = [np.mean([v for _, v in model.history_train[s]]) for s in (slice(0, 3), slice(-3, None))]
    assert last < first * 0.8  # training loss falls
    assert model.accuracy() > before["accuracy"] + 0.2 and model.accuracy() > 0.7  # accuracy rises
    assert len(model.history_valid) == 6
    # the best checkpoint (lowest valid_loss) is the model we hold
    best_valid = min(v for _, v in model.history_valid)
    assert model._monitored == ("valid_loss", pytest.approx(best_valid, rel=1e-5))
    assert model.checkpoint_path.is_file() and model.last_checkpoint.is_file()


def test_progress_table_printed(tmp_path, capsys):
    data = prepare_data(write_export(tmp_path / "ex", n_chips=6), batch_size=2, val_split_pct=0.2)
    UnetClassifier(data, backbone="resnet18").fit(2, lr=1e-3, checkpoint=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "miou", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert all(len(line.split()) == 6 for line in lines[1:])


def _numpy_metrics(model, data):
    """Confusion matrix and metrics computed independently with numpy from the model's predictions."""
    c = data.c
    cm = np.zeros((c, c), np.int64)
    model.net.eval()
    for x, y in data.valid_dl:
        pred = model._predict_logits(x, torch.device("cpu")).argmax(1).numpy().ravel()
        truth = y.numpy().ravel()
        keep = truth != 0
        np.add.at(cm, (truth[keep], pred[keep]), 1)
    model.net.train()
    return cm


def test_metrics_equal_numpy(trained):
    data, model, _ = trained
    cm = _numpy_metrics(model, data)
    m = model.metrics
    np.testing.assert_array_equal(np.array(m["confusion_matrix"]), cm)
    n = cm.sum()
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    ious = []
    for i, p in enumerate(m["per_class"], start=1):
        tp, truth, pred = cm[i, i], cm[i].sum(), cm[:, i].sum()
        assert p["precision"] == pytest.approx(tp / pred if pred else 0.0)
        assert p["recall"] == pytest.approx(tp / truth)
        assert p["iou"] == pytest.approx(tp / (truth + pred - tp))
        assert p["f1"] == pytest.approx(2 * tp / (truth + pred))
        ious.append(tp / (truth + pred - tp))
    assert model.mIOU(mean=True) == pytest.approx(np.mean(ious))
    pe = (cm.sum(0) * cm.sum(1)).sum() / n**2
    assert m["kappa"] == pytest.approx((np.trace(cm) / n - pe) / (1 - pe))
    assert set(model.per_class_metrics()) == {"Water", "Trees", "Buildings"}


def test_metrics_match_esri_confusion_example():
    # The example of ArcGIS Pro's Compute Confusion Matrix help (arcgis-learn.md §7): rows truth, columns class.
    table = np.array([[49, 4, 4], [2, 40, 2], [3, 3, 59]]).T  # ours: rows = truth
    cm = np.zeros((4, 4), np.int64)
    cm[1:, 1:] = table
    m = metrics_from_confusion(cm, [ClassInfo(v, str(v), (0, 0, 0)) for v in (1, 2, 3)])
    assert m["accuracy"] == pytest.approx(0.8916, abs=1e-4)
    assert m["kappa"] == pytest.approx(0.8357, abs=1e-4)
    assert [round(p["precision"], 4) for p in m["per_class"]] == [0.8596, 0.9091, 0.9077]
    assert [round(p["recall"], 4) for p in m["per_class"]] == [0.9074, 0.8511, 0.9077]


def test_validation_step_metrics_match_evaluation(trained):
    # The Lightning module's torchmetrics accumulation gives the same numbers as the evaluation pass.
    data, model, _ = trained
    module = SegmentationModule(model.net, model._loss(), [1e-3] * len(model.net.layer_groups()), model.classes)
    module.eval()
    with torch.no_grad():
        for x, y in data.valid_dl:
            module.confusion.update(model._predict_logits(x, torch.device("cpu")).argmax(1), y)
    model.net.train()
    np.testing.assert_array_equal(module.confusion.compute().numpy(), np.array(model.metrics["confusion_matrix"]))


@pytest.fixture(scope="module")
def saved(trained):
    return trained[1].save("run1")


def test_save_load_identical_predictions(trained, saved, tmp_path):
    data, model, _ = trained
    folder = saved
    assert folder == data.working_dir / "models" / "run1"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"run1.emd", "run1.safetensors", "run1.dlpk", "model_metrics.html",
            "ModelCharacteristics/loss_graph.png", "ModelCharacteristics/show_results.png"} <= names
    emd = json.loads((folder / "run1.emd").read_text())
    assert emd["ModelType"] == "ImageClassification" and emd["ImageHeight"] == 64
    assert emd["ExtractBands"] == [0, 1, 2, 3] and emd["ModelParameters"]["backbone"] == "resnet18"
    assert [c["Value"] for c in emd["Classes"]] == [1, 3, 7]
    assert emd["NormalizationStats"]["band_mean_values"] == pytest.approx(list(data.mean))
    assert float(emd["accuracy"]) == pytest.approx(model.accuracy(), abs=1e-4)
    assert set(json.loads(emd["per_class_metrics"])) == {"Water", "Trees", "Buildings"}
    assert emd["LearningRate"].startswith("slice(") and "monitored_valid_loss" in emd
    assert emd["MinCellSize"]["x"] == 1.0 and "UTM zone 18N" in emd["MinCellSize"]["spatialReference"]["wkt"]
    assert "Buildings" in (folder / "model_metrics.html").read_text()

    x = torch.stack([data.valid_ds[i][0] for i in range(len(data.valid_ds))])
    with torch.no_grad():
        ref = model.net.eval()(x)
        model.net.train()
        assert torch.equal(load_package(folder).build_model()(x), ref)  # what classification will use
        for src in (folder / "run1.emd", folder / "run1.dlpk"):
            loaded = UnetClassifier.from_model(src)
            assert torch.equal(loaded.net.eval()(x), ref)
    assert loaded.accuracy() == pytest.approx(model.accuracy(), abs=1e-4)
    assert loaded.mIOU() == pytest.approx(model.mIOU())
    with pytest.raises(LandcoverError, match="needs training data"):
        loaded.fit(1)
    # a path is used as is; the package can start a new model or continue training with data
    other = model.save(tmp_path / "elsewhere" / "m2")
    assert (other / "m2.dlpk").is_file()
    again = UnetClassifier(data, backbone="resnet18", pretrained_path=other / "m2.emd")
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), model.net.state_dict().values(),
                                                 strict=True))
    UnetClassifier.from_model(other, data=data).fit(1, lr=1e-4, checkpoint=False)
    # a package saved before the U-Net's input skip (an earlier landcover) keeps its architecture, whole
    legacy_net = UNet(4, model.net.num_classes, "resnet18", input_skip=False)
    legacy = load_package(other)
    legacy.state_dict = legacy_net.state_dict()
    legacy_folder = save_package(legacy, tmp_path / "legacy")
    for started in (UnetClassifier(data, backbone="resnet18", pretrained_path=legacy_folder),
                    UnetClassifier(data, backbone="resnet18").load(legacy_folder)):
        assert started.net.input_skip is False
        assert all(torch.equal(a, b) for a, b in zip(started.net.state_dict().values(),
                                                     legacy_net.state_dict().values(), strict=True))


def test_tampered_dlpk_and_bad_emd_are_refused(saved, tmp_path):
    evil = tmp_path / "evil.dlpk"
    with zipfile.ZipFile(saved / "run1.dlpk") as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../escape.txt", "x")
    with pytest.raises(LandcoverError, match="points outside the package"):
        UnetClassifier.from_model(evil)
    emd = json.loads((saved / "run1.emd").read_text())
    del emd["ModelFile"]
    (tmp_path / "bad.emd").write_text(json.dumps(emd))
    with pytest.raises(LandcoverError, match="missing key"):
        UnetClassifier.from_model(tmp_path / "bad.emd")


def test_lr_find_and_lr_slices(trained, monkeypatch):
    data, model, _ = trained
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    lr = model.lr_find(allow_plot=False, num_steps=12)
    assert 1e-7 <= lr < 10  # within the range searched (the tiny model's loss may be lowest at its start)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())  # weights restored
    fig = model.lr_figure()
    assert fig.axes[0].get_xscale() == "log"
    rates, text = model._resolve_lr(slice(1e-5, 1e-3), "auto", "32-true")
    n = len(model.net.layer_groups())  # stem, 4 encoder stages, decoder + head
    np.testing.assert_allclose(rates, np.geomspace(1e-5, 1e-3, n))
    assert text == "slice('1.0000e-05', '1.0000e-03', None)"
    assert model._resolve_lr(slice(None, 1e-3), "auto", "32-true")[0][0] == pytest.approx(1e-4)
    assert model._resolve_lr(3e-4, "auto", "32-true")[0] == [3e-4] * n
    # lr=None: the finder's rate for the head, a tenth of it for the first encoder stage
    monkeypatch.setattr(model, "lr_find", lambda **kw: 2e-3)
    # the fixture's encoder started from random weights (tests run offline): the found rate in every layer
    np.testing.assert_allclose(model._resolve_lr(None, "auto", "32-true")[0], [2e-3] * n)
    module = SegmentationModule(model.net, model._loss(), rates, model.classes, one_cycle=False)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(rates)
    # the groups run from the first encoder stage to the head
    assert opt.param_groups[0]["params"][0] is model.net.encoder.conv1.weight
    assert opt.param_groups[-1]["params"][-1] is model.net.head.bias


def test_early_stopping_and_resume(tmp_path, monkeypatch):
    from landcover.train import classifier

    data = prepare_data(write_export(tmp_path / "ex", n_chips=6), batch_size=4, val_split_pct=0.2)
    model = UnetClassifier(data, backbone="resnet18")
    for m in model.net.modules():  # nor the batch-norm statistics, which move the loss by 0.003 an epoch
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    # A rate too small to change anything: valid_loss never improves by 0.001, so training stops after the first
    # epoch plus `patience` epochs (5 by default; 2 here to keep the test short).
    monkeypatch.setattr(classifier, "PATIENCE", 2)
    model.fit(30, lr=1e-12, one_cycle=False, early_stopping=True)
    assert len(model.history_valid) == 3
    last = model.last_checkpoint
    assert last.name == "last.ckpt"
    model.fit(4, lr=1e-12, one_cycle=False, resume=last)
    assert len(model.history_valid) == 4  # only epoch 3 was left to run
    assert model.checkpoint_path.parent == last.parent  # the resumed run writes beside its checkpoint


def test_class_balancing_focal_dice_ignore(tmp_path):
    data = prepare_data(write_export(tmp_path / "ex", n_chips=6), batch_size=2, val_split_pct=0.2)
    model = UnetClassifier(data, backbone="resnet18", class_balancing=True, focal_loss=True,
                           dice_loss_fraction=0.3, ignore_classes=[7])
    loss = model._loss()
    counts = [data.class_pixel_counts[v] for v in (1, 3, 7)]
    assert loss.weight[0] == 0 and loss.weight[3] == 0  # no data and the ignored class
    assert loss.weight[1] / loss.weight[2] == pytest.approx(counts[1] / counts[0])  # inverse frequency
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0
    assert loss(logits, torch.zeros_like(target)).item() == 0.0  # nothing labelled: no loss
    assert model._ignore_indices == (3,)
    model.fit(1, lr=1e-3, monitor="miou")
    assert model._monitored[0] == "miou"


def test_bad_model_input(tmp_path):
    data = prepare_data(write_export(tmp_path / "ex", n_chips=4, values=(1, 2), names=("A", "B")),
                        batch_size=2, val_split_pct=0.25)
    with pytest.raises(LandcoverError, match="unknown backbone 'resnet99'"):
        UnetClassifier(data, backbone="resnet99")
    with pytest.raises(LandcoverError, match="more than two classes"):
        UnetClassifier(data, backbone="resnet18", ignore_classes=[2])
    with pytest.raises(LandcoverError, match="from_model"):
        UnetClassifier(None)
    # pretrained weights whose shapes do not fit: the message names the layer
    from landcover.model import ResNetEncoder

    torch.save(ResNetEncoder("resnet18", 3).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(LandcoverError, match=r"layer layer1\.0\.conv1\.weight has shape"):
        UnetClassifier(data, backbone="resnet50", pretrained_path=tmp_path / "r18.pth")
    model = UnetClassifier(data, backbone="resnet18", pretrained_path=tmp_path / "r18.pth")  # 3 → 4 bands
    with pytest.raises(LandcoverError, match="monitor='dice'"):
        model.fit(1, lr=1e-3, monitor="dice")
    with pytest.raises(LandcoverError, match="checkpoint to resume from not found"):
        model.fit(1, lr=1e-3, resume=tmp_path / "nope.ckpt")
    with pytest.raises(LandcoverError, match="low <= high"):
        model.fit(1, lr=slice(1e-2, 1e-4))


def test_cli_train_and_lr_find(tmp_path, capsys):
    chips = write_export(tmp_path / "chips", n_chips=6)
    out = tmp_path / "models" / "cli_model"
    rc = cli_main(["train", str(chips), "--out", str(out), "--backbone", "resnet18", "--epochs", "1",
                   "--batch-size", "2", "--lr", "1e-4:1e-3", "--val-split", "0.2", "--threads", "2"])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.strip().splitlines()[-1].endswith("cli_model.dlpk); 2 threads (threads=2)")  # the split, last
    assert {"cli_model.emd", "cli_model.dlpk", "model_metrics.html"} <= {p.name for p in out.iterdir()}
    assert (out / "ModelCharacteristics" / "show_batch.png").is_file()
    assert "overall accuracy" in text and "3 Trees" in text
    rc = cli_main(["lr-find", str(chips), "--out", str(tmp_path / "lr.png"), "--backbone", "resnet18",
                   "--batch-size", "2", "--steps", "8"])
    assert rc == 0 and (tmp_path / "lr.png").stat().st_size > 1000
    assert "suggested learning rate" in capsys.readouterr().out
    # bad input: one line on stderr, exit code 2
    bad = chips / "labels" / "000000003.tif"
    with rasterio.open(bad, "r+") as ds:
        ds.write(np.full((1, 64, 64), 9, np.uint8))
    rc = cli_main(["train", str(chips), "--out", str(out), "--backbone", "resnet18", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "label value 9" in err


def test_cli_train_is_reproducible_for_a_seed(tmp_path, capsys):
    """``--seed`` seeds training as well as the split: the same seed gives the same weights, another does not."""
    chips = write_export(tmp_path / "chips", n_chips=6)

    def weights(name: str, seed: str) -> dict:
        out = tmp_path / name
        assert cli_main(["train", str(chips), "--out", str(out), "--backbone", "resnet18", "--epochs", "1",
                         "--batch-size", "2", "--lr", "1e-3", "--no-pretrained", "--seed", seed]) == 0
        return load_package(out).state_dict

    a, b, c = weights("a", "7"), weights("b", "7"), weights("c", "8")
    capsys.readouterr()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from landcover.data import prepare_data
from landcover.train import UnetClassifier
data = prepare_data(sys.argv[1], batch_size=2, val_split_pct=0.25)
model = UnetClassifier(data, backbone="resnet18")
model.fit(1, lr=1e-3, accelerator="cpu", devices=2, strategy="ddp", precision="32-true", checkpoint=False)
folder = model.save(sys.argv[2])
print("rank-done", int(model.is_main_process), flush=True)
"""


def test_ddp_two_processes(tmp_path):
    chips = write_export(tmp_path / "chips", n_chips=8)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(chips), str(tmp_path / "ddp_model")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both ranks finished; only rank 0 wrote the package
    assert proc.stdout.count("rank-done") == 2 and "rank-done 1" in proc.stdout
    assert (tmp_path / "ddp_model" / "ddp_model.dlpk").is_file()


def test_trains_from_landcover_export(tmp_path):
    from landcover.export import export_training_data

    rng = np.random.default_rng(3)
    label = np.ones((128, 128), np.uint8)
    label[20:70, 30:100] = 2
    label[80:120, 10:60] = 5
    image = np.stack([np.select([label == 1, label == 2, label == 5], [40, 140, 220]) + rng.normal(0, 10, label.shape)
                      for _ in range(3)]).clip(0, 255).astype(np.uint8)
    profile = dict(driver="GTiff", width=128, height=128, crs="EPSG:32618", transform=from_origin(500000, 4e6, 1, 1))
    with rasterio.open(tmp_path / "img.tif", "w", count=3, dtype="uint8", **profile) as ds:
        ds.write(image)
    with rasterio.open(tmp_path / "lab.tif", "w", count=1, dtype="uint8", nodata=0, **profile) as ds:
        ds.write(label[None])
    export_training_data(tmp_path / "img.tif", tmp_path / "lab.tif", tmp_path / "chips", tile_size=64, stride=32,
                         progress=False)
    data = prepare_data(tmp_path / "chips", batch_size=2, val_split_pct=0.2)
    assert [c.value for c in data.classes] == [1, 2, 5] and data.crs_wkt and data.cell_size == (1.0, 1.0)
    # normalization from the export's band statistics: those of the chip pixels
    px = np.concatenate([rasterio.open(p).read().reshape(3, -1) for p in (tmp_path / "chips" / "images").glob("*.tif")],
                        axis=1).astype(np.float64)
    np.testing.assert_allclose(data.mean, px.mean(1), rtol=1e-6)
    np.testing.assert_allclose(data.std, px.std(1), rtol=1e-5)
    model = UnetClassifier(data, backbone="resnet18")
    model.fit(1, lr=1e-3, checkpoint=False)
    assert 0 <= model.accuracy() <= 1
