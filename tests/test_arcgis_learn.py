"""arcgis.learn UnetClassifier packages in landcover: fastai v1's DynamicUnet rebuilt key for key, arcgis.learn's
.emd conventions (classes, RGB and multispectral input scaling), classification, fine-tuning, bad input.

The reference network is fastai 1.0.61's own DynamicUnet source (tests/reference/fastai_v1_unet.py) on our
torchvision-named ResNet, built exactly as arcgis.learn's ``unet_learner(..., bottle=True, last_cross=True)``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from conftest import write_raster
from landcover import classify_pixels
from landcover.errors import LandcoverError
from landcover.interop.arcgis_learn import model_class_values
from landcover.model.dynamic_unet import DynamicUnet
from landcover.package import load_package
from reference.fastai_v1_unet import fastai_unet

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # fastai sizes its upsampling with a weight-normed layer (deprecated in torch, only in the reference)
              pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")]

#: arcgis.learn's RGB input: x / 255, then these (torchvision's ImageNet statistics)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: classes as an arcgis.learn .emd lists them: not contiguous and not sorted, so the model's index i is the
#: i-th class of the list (index 1 -> 5, 2 -> 2, 3 -> 7)
CLASSES = [{"Value": 5, "Name": "Trees", "Color": [38, 115, 0]},
           {"Value": 2, "Name": "Water", "Color": [0, 197, 255]},
           {"Value": 7, "Name": "Buildings", "Color": [255, 0, 0]}]


def reference(backbone="resnet18", n_classes=4, size=(64, 64), bands=3, seed=0):
    """fastai's DynamicUnet with random weights and batch-norm statistics (so that BN is not an identity)."""
    torch.manual_seed(seed)
    model = fastai_unet(backbone, n_classes, size, bands)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def ref18():
    """The resnet18 reference with three classes, built once (fastai's construction runs dummy passes)."""
    return reference()


# --- the network ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backbone", "bands", "size"), [
    ("resnet18", 3, (64, 64)), ("resnet34", 3, (64, 64)), ("resnet18", 4, (64, 64)), ("resnet18", 3, (63, 63))])
def test_same_keys_shapes_and_logits_as_fastai(backbone, bands, size):
    ref = reference(backbone, 5, size, bands)
    theirs = ref.state_dict()
    ours = DynamicUnet.from_state_dict(theirs, backbone, "test")
    mine = ours.state_dict()
    assert list(mine) == list(theirs)  # same keys, same order: the checkpoint loads one to one, strict
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    assert "layers.0.4.0.conv1.weight" in mine and "layers.0.0.weight" in mine  # torchvision names in the body
    x = torch.randn(2, bands, *size)
    with torch.no_grad():
        diff = (ref(x) - ours(x)).abs().max().item()
    assert diff <= 1e-4
    assert ours.resize_slot == (size[0] % 2 == 1)  # fastai adds its resize layer for odd chip sizes


def test_resnet50_keys_and_shapes_match_fastai():
    with torch.device("meta"):  # the resnet50 decoder has 300M parameters: compare layouts without memory
        theirs = fastai_unet("resnet50", 3, (64, 64)).state_dict()
        ours = DynamicUnet(3, 3, "resnet50").state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


def test_layer_groups_split_as_fastai():
    net = DynamicUnet(3, 3, "resnet18")
    groups = net.layer_groups()
    assert len(groups) == 3
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
    assert groups[1][0] is net.layers[0][6][0].conv1.weight  # fastai's _resnet_split: at layer3


def test_arcgis_learn_definitions_recognised():
    from landcover.interop.arcgis_learn import is_arcgis_learn

    assert is_arcgis_learn({"Framework": "arcgis.learn.models._inferencing"})
    assert is_arcgis_learn({"Framework": "PyTorch", "ModelConfiguration": "_unet"})
    assert is_arcgis_learn({"ArcGISLearnVersion": "1.8.4"})
    assert not is_arcgis_learn({"Framework": "PyTorch", "ModelConfiguration": "landcover.UnetClassifier"})


def test_class_index_convention():
    assert model_class_values(CLASSES) == [5, 2, 7]  # remapped in .emd order
    contiguous = [{"Value": 2}, {"Value": 1}, {"Value": 3}]
    assert model_class_values(contiguous) == [1, 2, 3]  # label values used as indices


# --- packages in arcgis.learn's layout ----------------------------------------------------------------------

def rgb_emd(name: str, backbone: str = "resnet18") -> dict:
    """A UnetClassifier .emd as arcgis.learn 2.0.1 writes it (layout of a real one, 30e.emd, plus 2.0.1's keys)."""
    return {
        "Framework": "arcgis.learn.models._inferencing",
        "ModelConfiguration": "_unet",
        "ModelType": "ImageClassification",
        "InferenceFunction": "ArcGISImageClassifier.py",
        "ExtractBands": [0, 1, 2],
        "ignore_mapped_class": [],
        "SupportsVariableTileSize": True,
        "Classes": CLASSES,
        "ModelFormat": "NCHW",
        "MinCellSize": {"x": 1.0, "y": 1.0, "spatialReference": {"wkid": 32617}},
        "MaxCellSize": {"x": 1.0, "y": 1.0, "spatialReference": {"wkid": 32617}},
        "ArcGISLearnVersion": "2.0.1",
        "ModelFile": f"{name}.pth",
        "ImageHeight": 64,
        "ImageWidth": 64,
        "ImageSpaceUsed": "MAP_SPACE",
        "LearningRate": "slice('1.0000e-04', '1.0000e-03', None)",
        "ModelName": "UnetClassifier",
        "backend": "pytorch",
        "ModelParameters": {"backbone": backbone, "backend": "pytorch"},
        "accuracy": "9.5355e-01",
        "resize_to": None,
        "IsMultispectral": False,
        "per_class_metrics": json.dumps({"NoData": {"precision": 0.0, "recall": 0.0, "f1": 0.0}}),
    }


def ms_emd(name: str, stats: dict) -> dict:
    """The multispectral form: 5-band imagery, 4 bands used, NormalizationStats per original band."""
    emd = rgb_emd(name)
    emd.update({"ExtractBands": [0, 1, 3, 4], "IsMultispectral": True, "Bands": ["b", "g", "r", "nir", "swir"],
                "ImageryType": "ms", "NormalizationStats": stats, "DoNormalize": True})
    return emd


def write_package(folder: Path, emd: dict, weights) -> Path:
    """``folder/<name>.emd``, ``.pth``, the raster function file and the ``.dlpk`` zip of them, as arcgis.learn
    saves a model; ``weights`` is what goes into ``torch.save`` (or raw bytes). Returns the .dlpk."""
    folder.mkdir(parents=True)
    name = folder.name
    (folder / f"{name}.emd").write_text(json.dumps(emd, indent=4))
    pth = folder / f"{name}.pth"
    if isinstance(weights, bytes):
        pth.write_bytes(weights)
    else:
        torch.save(weights, pth)
    # Stands in for Esri's raster function: landcover must never import or run package code.
    (folder / "ArcGISImageClassifier.py").write_text("raise SystemExit('package code was run')\n")
    dlpk = folder / f"{name}.dlpk"
    with zipfile.ZipFile(dlpk, "w") as zf:
        for f in sorted(folder.iterdir()):
            if f != dlpk:
                zf.write(f, f.name)
    return dlpk


def expected_map(model, x: np.ndarray) -> np.ndarray:
    """What arcgis.learn's raster function gives for normalized input (bands, h, w): argmax over the classes
    (background off: no class of value 0), index -> value in the .emd's order."""
    with torch.no_grad():
        logits = model(torch.from_numpy(x[None].astype(np.float32)))[0]
    idx = logits[1:].argmax(0).numpy() + 1
    return np.array([0, *model_class_values(CLASSES)], np.uint8)[idx]


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def rgb_package(tmp_path, ref18):
    ref = ref18
    return ref, write_package(tmp_path / "unet_rgb", rgb_emd("unet_rgb"), ref.state_dict())


def test_rgb_package_classifies_as_fastai(rgb_package, tmp_path):
    ref, dlpk = rgb_package
    img = np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    raster = write_raster(tmp_path / "rgb.tif", img)
    x = (img / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    want = expected_map(ref, x)
    assert len(np.unique(want)) == 3  # the check sees every class mapping
    for model in (dlpk, dlpk.parent / "unet_rgb.emd", dlpk.parent):  # the .dlpk, the .emd and the folder
        out = classify_pixels(raster, model, tmp_path / f"out_{Path(model).suffix[1:] or 'dir'}.tif", padding=0,
                              backend="fp32", progress=False)
        assert np.array_equal(read(out), want)
    with rasterio.open(out) as ds:
        assert ds.colormap(1)[5][:3] == (38, 115, 0) and ds.colormap(1)[7][:3] == (255, 0, 0)
    pkg = load_package(dlpk)
    assert [c.value for c in pkg.classes] == [2, 5, 7] and pkg.extract_bands == [0, 1, 2]
    assert pkg.input_dtype == "uint8" and pkg.tile_size == 64 and pkg.backbone == "resnet18"
    assert np.abs(pkg.normalize(img) - x).max() < 1e-4
    assert not {"InferenceFunction", "ArcGISLearnVersion"} & set(pkg.extra)  # not carried into landcover packages


def test_multispectral_package_through_the_cli(tmp_path, capsys):
    from landcover.cli import main

    rng = np.random.default_rng(2)
    img = (rng.integers(0, 4000, (5, 64, 64)) + np.arange(5)[:, None, None] * 500).astype(np.uint16)
    flat = img.reshape(5, -1).astype(np.float64)
    mn, mx, mean, std = flat.min(1), flat.max(1), flat.mean(1), flat.std(1)
    s_mean = (mean - mn) / (mx - mn)
    s_std = std * s_mean / mean
    stats = {"band_min_values": mn.tolist(), "band_max_values": mx.tolist(), "band_mean_values": mean.tolist(),
             "band_std_values": std.tolist(), "scaled_min_values": [0.0] * 5, "scaled_max_values": [1.0] * 5,
             "scaled_mean_values": s_mean.tolist(), "scaled_std_values": s_std.tolist()}
    ref = reference(bands=4, seed=3)
    dlpk = write_package(tmp_path / "unet_ms", ms_emd("unet_ms", stats), ref.state_dict())
    raster = write_raster(tmp_path / "ms.tif", img)
    pick = [0, 1, 3, 4]
    x = (img[pick] - mn[pick, None, None]) / ((mx - mn)[pick, None, None] + 1e-5)
    x = (x - s_mean[pick, None, None]) / s_std[pick, None, None]
    want = expected_map(ref, x)
    out = tmp_path / "ms_out.tif"
    code = main(["classify", "--quiet", "--model", str(dlpk), "--imagery", str(raster), "--out", str(out),
                 "--padding", "0", "--backend", "fp32"])
    assert code == 0, capsys.readouterr().err
    assert np.array_equal(read(out), want)
    pkg = load_package(dlpk)
    assert pkg.input_dtype == "" and pkg.band_names == ["b", "g", "nir", "swir"]
    assert np.abs(pkg.normalize(img[pick]) - x).max() < 1e-4


def test_checkpoint_with_optimizer_state_gives_its_model(tmp_path, ref18):
    ref = ref18
    # fastai's would cover every parameter; two keep the file small, the format is the same
    opt = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in list(ref.parameters())[:2]])
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()  # an optimizer state with tensors, as fastai's learn.save(with_opt=True) stores it
    dlpk = write_package(tmp_path / "with_opt", rgb_emd("with_opt"), {"model": ref.state_dict(),
                                                                     "opt": opt.state_dict()})
    pkg = load_package(dlpk)
    model = pkg.build_model()
    assert isinstance(model, DynamicUnet)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # index i of ours is the i-th class sorted by value: 2, 5, 7 = reference rows 2, 1, 3
        assert (model(x) - ref(x)[:, [0, 2, 1, 3]]).abs().max().item() <= 1e-4


def test_fine_tune_and_save_as_landcover_package(rgb_package, tmp_path):
    from landcover import UnetClassifier, prepare_data
    from tiles_fixture import write_export

    ref, dlpk = rgb_package
    chips = write_export(tmp_path / "chips", n_chips=6, size=64, bands=3, values=(2, 5, 7),
                         names=("Water", "Trees", "Buildings"))
    data = prepare_data(chips, batch_size=2, chip_size=64, val_split_pct=0.34, num_workers=0)
    model = UnetClassifier.from_model(dlpk, data)
    assert isinstance(model.net, DynamicUnet)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.fit(1, lr=slice(1e-5, 1e-4), checkpoint=False)
    after = model.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "running" not in k)
    folder = model.save(tmp_path / "tuned", compute_metrics=False)
    saved = json.loads((folder / "tuned.emd").read_text())
    assert saved["ModelArchitecture"] == "fastai.DynamicUnet" and saved["Framework"] == "PyTorch"
    again = load_package(folder)
    net = again.build_model()
    assert isinstance(net, DynamicUnet) and list(net.state_dict()) == list(ref.state_dict())
    assert again.mean == pytest.approx([255 * m for m in IMAGENET_MEAN])
    reloaded = UnetClassifier.from_model(folder)
    assert isinstance(reloaded.net, DynamicUnet)
    # arcgis.learn's load() into a model built on the data: the package's network replaces the U-Net
    fresh = UnetClassifier(data, backbone="resnet18", pretrained=False)
    assert isinstance(fresh.load(dlpk).net, DynamicUnet)


# --- bad input -----------------------------------------------------------------------------------------------

def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_unsupported_framework_named(tmp_path, capsys):
    from landcover.cli import main

    emd = {"Framework": "TensorFlow", "ModelConfiguration": "DeepLab", "ModelFile": "frozen.pb",
           "ModelType": "ImageClassification", "ImageHeight": 256, "ImageWidth": 256, "ExtractBands": [0, 1, 2],
           "BatchSize": 1, "Classes": [{"Value": 0, "Name": "Evergreen Forest", "Color": [0, 51, 0]}]}
    folder = tmp_path / "deeplab"
    folder.mkdir()
    (folder / "deeplab.emd").write_text(json.dumps(emd))
    (folder / "frozen.pb").write_bytes(b"\0")
    with pytest.raises(LandcoverError) as exc:
        load_package(folder / "deeplab.emd")
    assert "TensorFlow" in one_line(exc)
    raster = write_raster(tmp_path / "r.tif", np.zeros((3, 32, 32), np.uint8))
    code = main(["classify", "--quiet", "--model", str(folder), "--imagery", str(raster), "--out",
                 str(tmp_path / "o.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "TensorFlow" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize(("name", "config"), [("MaskRCNN", "_maskrcnn_inferencing"), ("DeepLab", "_deeplab")])
def test_other_arcgis_learn_model_kinds_named(tmp_path, ref18, name, config):
    emd = rgb_emd("other")
    emd.update({"ModelName": name, "ModelConfiguration": config})
    dlpk = write_package(tmp_path / "other", emd, ref18.state_dict())
    with pytest.raises(LandcoverError) as exc:
        load_package(dlpk)
    assert f"arcgis.learn {name} model" in one_line(exc)


class TouchesAFile:
    """Unpickling this would create ``path`` (it must never be unpickled)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_pickled_weights_refused_without_running_them(tmp_path, ref18, form):
    import pickle

    marker = tmp_path / "touched"
    ref = ref18
    if form == "torch.save":
        weights = {"model": ref.state_dict(), "opt": {"hook": TouchesAFile(marker)}}
    else:
        weights = pickle.dumps({"model": ref.state_dict(), "hook": TouchesAFile(marker)})
    dlpk = write_package(tmp_path / "evil", rgb_emd("evil"), weights)
    for model in (dlpk, dlpk.parent / "evil.emd"):
        with pytest.raises(LandcoverError) as exc:
            load_package(model)
        text = one_line(exc)
        assert "pickled Python object" in text and "weights_only" not in text
    assert not marker.exists()


def test_weights_of_another_model_refused(tmp_path, ref18):
    emd = rgb_emd("two")
    emd["Classes"] = CLASSES[:2]  # the weights predict three classes
    dlpk = write_package(tmp_path / "two", emd, ref18.state_dict())
    with pytest.raises(LandcoverError) as exc:
        load_package(dlpk)
    assert "lists 2 classes" in one_line(exc)
