"""Pretrained weights by default and by name: download from a loopback server, checksum, cache, offline
fallback, --no-pretrained, and the first convolution matched to the bands by name.

Nothing leaves the machine: ``LANDCOVER_WEIGHTS_URL`` points the published URLs at a server on 127.0.0.1 that
serves checkpoints generated here (our own ResNet encoder's state dict, saved with torch.save); the registry's
pinned checksums are patched to those files' SHA-256, so the real download, checksum and cache code runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch

from http_server import http_server  # noqa: F401 - the fixture
from landcover.cli import main as cli_main
from landcover.data import prepare_data
from landcover.errors import LandcoverError, cli_spelling
from landcover.model import ResNetEncoder, download, weights
from landcover.model.weights import PretrainedWeightsWarning, choose_landsat, start_encoder
from landcover.train import UnetClassifier
from tiles_fixture import write_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN = ["--backbone", "resnet18", "--batch-size", "2", "--val-split", "0.25", "--lr", "1e-3", "--epochs", "1"]
IMAGENET18 = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Downloads allowed (the session forbids them), into a cache of this test's own."""
    monkeypatch.delenv("LANDCOVER_OFFLINE", raising=False)
    monkeypatch.setenv("LANDCOVER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


@pytest.fixture
def online(cache, monkeypatch, http_server):  # noqa: F811 - the fixture imported above
    """The published weights served from 127.0.0.1 (``/mirror/<published file name>``)."""
    monkeypatch.setenv("LANDCOVER_WEIGHTS_URL", http_server.base_url + "/mirror/")
    return http_server


@pytest.fixture
def chips(tmp_path) -> Path:
    """8 chips of 32 px, bands named Red, Green, Blue, NearInfrared (as an ArcGIS export names them)."""
    return write_export(tmp_path / "chips", n_chips=8, size=32, bands=4)


def _data(chips: Path):
    return prepare_data(chips, batch_size=2, val_split_pct=0.25)


def publish(server, monkeypatch, name: str, backbone: str, channels: int, seed: int = 0) -> dict:
    """Serve a generated ``backbone`` checkpoint with ``channels`` input bands as weights ``name``'s file, and
    pin the registry to its SHA-256; returns its state dict."""
    torch.manual_seed(seed)
    sd = dict(ResNetEncoder(backbone, channels).state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(10, 512 if backbone != "resnet50" else 2048), torch.zeros(10)
    entry = weights.WEIGHTS[name]
    url = entry.files[backbone][0]
    path = server.root / "mirror" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(weights.WEIGHTS, name, dataclasses.replace(entry, files={**entry.files,
                                                                                 backbone: (url, digest)}))
    return sd


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emd(folder: Path) -> dict:
    return json.loads((folder / f"{folder.name}.emd").read_text())


def _refuse_files(path):
    raise AssertionError(f"named weights must not be loaded as a file: {path}")


def test_production_checksums_are_the_published_ones():
    # The pins are the hash prefixes in the published file names (torchvision, torchgeo: first 8 hex of SHA-256).
    for entry in weights.WEIGHTS.values():
        for url, sha in entry.files.values():
            assert url.startswith("https://") and url.endswith(f"-{sha}.pth") and len(sha) == 8


def test_default_imagenet_downloads_once_checked_and_recorded(online, monkeypatch, chips, cache, tmp_path, capsys):
    sd = publish(online, monkeypatch, "imagenet", "resnet18", 3)
    data = _data(chips)
    model = UnetClassifier(data, backbone="resnet18")  # pretrained by default
    assert [r["path"] for r in online.log] == ["mirror/resnet18-f37072fd.pth"]
    assert "downloading imagenet resnet18 weights" in capsys.readouterr().err  # the progress bar
    assert [p.name for p in cache.glob("*.pth")] == ["resnet18-f37072fd.pth"] and not list(cache.glob("*.part"))
    enc, w = model.net.encoder.state_dict(), sd["conv1.weight"]
    assert torch.equal(enc["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    # Red, Green, Blue take ImageNet's own kernels; NearInfrared the cycled kernel scaled by 3/4 (as before)
    for i in range(3):
        assert torch.equal(enc["conv1.weight"][:, i], w[:, i])
    assert torch.allclose(enc["conv1.weight"][:, 3], w[:, 0] * 3 / 4)

    online.reset_counts()
    again = UnetClassifier(data, backbone="resnet18")
    assert online.requests == 0  # the cache answers
    assert torch.equal(again.net.encoder.conv1.weight, model.net.encoder.conv1.weight)

    record = _emd(model.save(tmp_path / "pkg", compute_metrics=False))["PretrainedWeights"]
    assert record["Name"] == "imagenet" and record["URL"] == IMAGENET18 and record["Backbone"] == "resnet18"
    assert record["Bands"] == [["Red", "red"], ["Green", "green"], ["Blue", "blue"], ["NearInfrared", None]]


def test_corrupt_download_and_corrupt_cache_are_refused(online, monkeypatch, chips, cache):
    publish(online, monkeypatch, "imagenet", "resnet18", 3)
    served = online.root / "mirror" / "resnet18-f37072fd.pth"
    good = served.read_bytes()
    served.write_bytes(good[:-8] + b"\0" * 8)  # other bytes than the pinned checksum's
    data = _data(chips)
    with pytest.raises(LandcoverError, match=r"resnet18-f37072fd\.pth: corrupt download .* retry") as err:
        UnetClassifier(data, backbone="resnet18")
    assert "\n" not in str(err.value)
    assert not list(cache.glob("*.pth")) and not list(cache.glob("*.part"))  # nothing kept

    served.write_bytes(good)
    UnetClassifier(data, backbone="resnet18")
    cached = cache / "resnet18-f37072fd.pth"
    cached.write_bytes(b"\0" + cached.read_bytes()[1:])  # damaged on disk later
    with pytest.raises(LandcoverError, match=f"cached weights are corrupt.*delete {cached} and retry"):
        UnetClassifier(data, backbone="resnet18")


def test_offline_cli_warns_in_one_line_and_trains(cache, monkeypatch, chips, tmp_path, capsys):
    monkeypatch.setenv("LANDCOVER_WEIGHTS_URL", f"http://127.0.0.1:{_closed_port()}/")  # connection refused
    out = tmp_path / "model"
    assert cli_main(["train", str(chips), "--out", str(out), *TRAIN]) == 0
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("landcover ")]
    assert len(ours) == 1, ours
    line = ours[0]
    assert line.startswith("landcover train: warning: could not download the imagenet resnet18 weights (")
    assert "training starts from random weights" in line and "--pretrained FILE" in line
    assert "--no-pretrained" in line
    record = _emd(out)["PretrainedWeights"]
    assert record["Name"] == "none" and record["Unavailable"] == "imagenet"


def test_timeout_warns_and_offline_mode_is_quiet(online, monkeypatch, chips, recwarn):
    publish(online, monkeypatch, "imagenet", "resnet18", 3)
    data = _data(chips)
    online.silent = True  # a server that never answers
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    with pytest.warns(PretrainedWeightsWarning, match=r"no answer within 0\.3 s\): training starts from random "
                                                      r"weights; .*pretrained_path='FILE'.*pretrained=False"):
        UnetClassifier(data, backbone="resnet18")
    recwarn.clear()
    monkeypatch.setenv("LANDCOVER_OFFLINE", "1")  # offline by choice: no request, no warning
    model = UnetClassifier(data, backbone="resnet18")
    assert not [w for w in recwarn if issubclass(w.category, PretrainedWeightsWarning)]
    assert model._extra["PretrainedWeights"]["Unavailable"] == "imagenet"
    # weights asked for by name are not optional: one line saying how to give them
    with pytest.raises(LandcoverError, match=r"could not download the ssl4eo-s2 weights \(LANDCOVER_OFFLINE.*"
                                             r"pretrained_path='FILE'.*pretrained=False"):
        UnetClassifier(data, backbone="resnet18", pretrained="ssl4eo-s2")


def test_no_pretrained_makes_no_request(online, monkeypatch, chips, tmp_path, capsys):
    publish(online, monkeypatch, "imagenet", "resnet18", 3)
    out = tmp_path / "model"
    assert cli_main(["train", str(chips), "--out", str(out), "--no-pretrained", *TRAIN]) == 0
    assert online.requests == 0
    assert _emd(out)["PretrainedWeights"] == {"Name": "none"}
    assert UnetClassifier(_data(chips), backbone="resnet18", pretrained=False)._extra["PretrainedWeights"] == \
        {"Name": "none"} and online.requests == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", str(chips), "--out", str(out), "--no-pretrained", "--pretrained", "x.pth", *TRAIN])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "not allowed with argument" in err
    with pytest.raises(LandcoverError, match=r"pretrained_path='x.pth' and pretrained=False: give one of them"):
        UnetClassifier(_data(chips), backbone="resnet18", pretrained_path="x.pth", pretrained=False)


def test_sentinel2_weights_matched_to_bands_by_name(online, monkeypatch):
    sd = publish(online, monkeypatch, "ssl4eo-s2", "resnet18", 13)
    encoder = ResNetEncoder("resnet18", 4)
    bands = ["B04", "nir", "Thermal", "b02"]
    record = start_encoder(encoder, bands, None, "ssl4eo-s2", _refuse_files)
    w, got = sd["conv1.weight"], encoder.conv1.weight.detach()
    assert torch.equal(got[:, 0], w[:, 3])  # B04: red
    assert torch.equal(got[:, 1], w[:, 7])  # nir: B08
    assert torch.equal(got[:, 3], w[:, 1])  # b02: blue
    assert torch.allclose(got[:, 2], w[:, 2] * 13 / 4)  # no thermal band in Sentinel-2: adapted as before
    assert torch.equal(encoder.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    assert record["Name"] == "ssl4eo-s2" and record["Bands"] == [["B04", "B04"], ["nir", "B08"], ["Thermal", None],
                                                                 ["b02", "B02"]]
    assert "10000" in record["Normalization"]


def test_landsat_weights_chosen_and_matched_by_name(online, monkeypatch, chips, tmp_path):
    # six Landsat 7 surface-reflectance bands by their common names: the ETM+ SR weights, each kernel its own
    bands = ["blue", "green", "red", "nir", "swir1", "swir2"]
    assert choose_landsat(bands).name == "ssl4eo-landsat-etm-sr"
    assert choose_landsat(["coastal", *bands]).name == "ssl4eo-landsat-oli-sr"
    assert choose_landsat(["SR_B4", "SR_B3", "SR_B2"]).name == "ssl4eo-landsat-oli-sr"
    sd = publish(online, monkeypatch, "ssl4eo-landsat-etm-sr", "resnet18", 6)
    encoder = ResNetEncoder("resnet18", 6)
    record = start_encoder(encoder, bands[::-1], None, "ssl4eo-landsat", _refuse_files)
    assert record["Name"] == "ssl4eo-landsat-etm-sr"
    assert torch.equal(encoder.conv1.weight.detach(), sd["conv1.weight"].flip(1))  # reversed bands, by name
    # the model's data (Red, Green, Blue, NearInfrared) through the arcgis.learn spelling, package recorded
    model = UnetClassifier(_data(chips), backbone="resnet18", pretrained_path="ssl4eo-landsat-etm-sr")
    w = sd["conv1.weight"]
    got = model.net.encoder.conv1.weight.detach()
    for i, j in enumerate((2, 1, 0, 3)):
        assert torch.equal(got[:, i], w[:, j])
    folder = model.save(tmp_path / "pkg", compute_metrics=False)
    assert _emd(folder)["PretrainedWeights"]["Bands"][3] == ["NearInfrared", "SR_B4"]
    with pytest.raises(LandcoverError, match=r"--pretrained ssl4eo-landsat: these weights exist for resnet18 or "
                                             r"resnet50, not resnet34; give --backbone resnet18"), cli_spelling():
        UnetClassifier(_data(chips), pretrained="ssl4eo-landsat")  # as the CLI names it


def test_file_given_as_before_is_recorded(tmp_path, chips, cache):
    path = tmp_path / "resnet18.pth"
    sd = dict(ResNetEncoder("resnet18", 3).state_dict())
    torch.save(sd, path)
    model = UnetClassifier(_data(chips), backbone="resnet18", pretrained_path=path)
    assert model._extra["PretrainedWeights"] == {"Source": str(path)}
    # a file is adapted as before: no band names known, RGB kernels cycled over the four bands (scaled 3/4)
    assert torch.allclose(model.net.encoder.conv1.weight[:, 3], sd["conv1.weight"][:, 0] * 3 / 4)
    assert torch.allclose(model.net.encoder.conv1.weight[:, 0], sd["conv1.weight"][:, 0] * 3 / 4)
