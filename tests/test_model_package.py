"""The U-Net (torchvision-compatible encoder keys), pretrained loading, and model packages."""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from landcover.classes import ClassInfo
from landcover.errors import LandcoverError
from landcover.model import ResNetEncoder, UNet, has_input_skip, load_pretrained_encoder
from landcover.package import ModelPackage, load_package, save_package

# Parameter names of torchvision's resnet18 (conv1/bn1/layer*/downsample/fc), as published.
TV_RESNET18_KEYS_SAMPLE = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                           "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias"]


def test_encoder_keys_match_torchvision():
    keys = set(ResNetEncoder("resnet18").state_dict())
    assert set(TV_RESNET18_KEYS_SAMPLE) <= keys
    assert "layer3.5.conv2.weight" in ResNetEncoder("resnet34").state_dict()
    assert "layer1.0.conv3.weight" in ResNetEncoder("resnet50").state_dict()


@pytest.mark.parametrize("shape", [(1, 5, 64, 64), (2, 5, 70, 45)])
def test_unet_any_size_and_bands(shape):
    m = UNet(5, 4, "resnet18").eval()
    with torch.no_grad():
        assert m(torch.randn(*shape)).shape == (shape[0], 4, *shape[2:])


def test_pretrained_rgb_checkpoint_adapts_first_conv(tmp_path):
    # A torchvision-format checkpoint (3 bands, with fc) written by the test, as a user would save it.
    src = ResNetEncoder("resnet18", 3)
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(sd, tmp_path / "resnet18.pth")
    enc = ResNetEncoder("resnet18", 4)
    unused = load_pretrained_encoder(enc, tmp_path / "resnet18.pth")
    assert unused == ["fc.weight", "fc.bias"]
    w = enc.conv1.weight.detach()
    assert torch.allclose(w[:, 3], sd["conv1.weight"][:, 0] * 0.75)
    assert torch.equal(enc.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    with pytest.raises(LandcoverError, match=r"layer layer1\.0\.conv1\.weight has shape"):
        load_pretrained_encoder(ResNetEncoder("resnet50", 3), tmp_path / "resnet18.pth")


def _package(tmp_path) -> ModelPackage:
    torch.manual_seed(0)
    model = UNet(4, 3, "resnet18")
    return ModelPackage(
        classes=[ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(5, "Trees", (0, 128, 0))],
        backbone="resnet18", extract_bands=[0, 1, 2, 3], mean=[10, 20, 30, 40], std=[2, 2, 2, 2], tile_size=64,
        band_names=["Red", "Green", "Blue", "NearInfrared"], cell_size=(1.0, 1.0), crs_wkt="EPSG:32618",
        state_dict=model.state_dict(),
    )


def test_save_load_identical_predictions(tmp_path):
    pkg = _package(tmp_path)
    folder = save_package(pkg, tmp_path / "m1")
    # the weights get the same permissions as the package's other files (safetensors' save_file makes 0600)
    assert (folder / "m1.safetensors").stat().st_mode == (folder / "m1.emd").stat().st_mode
    # ... and the ArcGIS Pro raster function with the network code it runs (issue 20)
    assert {p.name for p in folder.iterdir()} == {"m1.emd", "m1.safetensors", "m1.dlpk", "LandcoverClassifier.py",
                                                  "landcover_unet.py", "landcover_plan.py"}
    emd = json.loads((folder / "m1.emd").read_text())
    assert emd["ModelType"] == "ImageClassification" and emd["Classes"][1] == {"Value": 5, "Name": "Trees",
                                                                               "Color": [0, 128, 0]}
    x = torch.randn(1, 4, 64, 64)
    ref = pkg.build_model()(x)
    for p in (folder, folder / "m1.emd", folder / "m1.dlpk"):
        got = load_package(p)
        assert got.classes == pkg.classes and got.cell_size == (1.0, 1.0)
        assert torch.equal(got.build_model()(x), ref)
    assert list(load_package(folder).index_to_value) == [0, 1, 5]
    np.testing.assert_allclose(pkg.normalize(np.full((4, 1, 1), 12.0)).ravel(), [1, -4, -9, -14])


def _zip(path, members: dict[str, bytes], link: str | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_dlpk_refuses_traversal_links_and_corruption(tmp_path):
    folder = save_package(_package(tmp_path), tmp_path / "m")
    emd = (folder / "m.emd").read_bytes()
    weights = (folder / "m.safetensors").read_bytes()
    bad = _zip(tmp_path / "a.dlpk", {"m.emd": emd, "m.safetensors": weights, "../evil.py": b"x"})
    with pytest.raises(LandcoverError, match="outside the package"):
        load_package(bad)
    bad = _zip(tmp_path / "b.dlpk", {"m.emd": emd, "m.safetensors": weights}, link="link")
    with pytest.raises(LandcoverError, match="is a link"):
        load_package(bad)
    bad = _zip(tmp_path / "c.dlpk", {"m.emd": emd, "m.safetensors": weights[:-100]})
    with pytest.raises(LandcoverError, match="corrupt weights"):
        load_package(bad)
    (tmp_path / "d.dlpk").write_bytes(b"not a zip")
    with pytest.raises(LandcoverError, match="not a valid .dlpk"):
        load_package(tmp_path / "d.dlpk")
    doc = json.loads(emd)
    doc["ModelFile"] = "m.pth"
    buf = io.BytesIO()
    torch.save({}, buf)
    with pytest.raises(LandcoverError, match="pickled weights are refused"):
        load_package(_zip(tmp_path / "e.dlpk", {"m.emd": json.dumps(doc).encode(), "m.pth": buf.getvalue()}))
    del doc["NormalizationStats"]
    (folder / "m.emd").write_text(json.dumps(doc))
    with pytest.raises(LandcoverError, match="missing key.*NormalizationStats"):
        load_package(folder / "m.emd")
    # an export's definition given as a model: said so, in the export template's words
    export_emd = {"Framework": "e.g. CNTK", "ModelType": "e.g. ObjectDetection or ImageClassification",
                  "ModelFile": "e.g. ./CNTK/model.model", "ImageHeight": 256, "Classes": []}
    (folder / "m.emd").write_text(json.dumps(export_emd))
    with pytest.raises(LandcoverError, match="exported training chips, not of a trained model"):
        load_package(folder / "m.emd")


def test_packages_saved_before_the_input_skip_still_load(tmp_path):
    """The U-Net's last decoder block reads the bands at full resolution (``input_skip``); packages saved
    without it (earlier landcover versions) are told apart by their weights and rebuilt as they were."""
    new, old = UNet(4, 3, "resnet18"), UNet(4, 3, "resnet18", input_skip=False)
    assert new.input_skip and has_input_skip(new.state_dict())
    assert not old.input_skip and not has_input_skip(old.state_dict())
    assert new.decoder.blocks[-1].conv1[0].in_channels == 16 * 2 + 4  # 32 upsampled channels + the 4 bands
    pkg = _package(tmp_path)
    pkg.state_dict = old.state_dict()
    folder = save_package(pkg, tmp_path / "old")
    x = torch.randn(1, 4, 64, 64)
    got = load_package(folder).build_model()
    assert got.input_skip is False and torch.equal(got(x), old.eval()(x))
    # the ArcGIS Pro raster function's bundled network tells them apart the same way
    spec = importlib.util.spec_from_file_location("bundled_unet", folder / "landcover_unet.py")
    bundled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundled)
    assert not bundled.has_input_skip(old.state_dict()) and bundled.has_input_skip(new.state_dict())
