"""A landcover model runs in QGIS: the ONNX model for the Deepness plugin, run as Deepness runs it.

Deepness (PUTvision/qgis-plugin-deepness) reads the model's metadata, cuts the layer into tiles of
``tiles_size`` overlapping by ``tiles_overlap`` percent, divides the pixels by 255, standardizes them with
``standardization_mean``/``std``, runs the model, zeroes probabilities below ``seg_thresh``, takes the argmax,
and keeps each tile's core (half the overlap dropped on every inner side; tiles past the layer's edge read
zeros). That map must agree with classify_pixels'.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio

from landcover.classify import classify_pixels
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.interop.qgis import METADATA_KEYS, export_deepness_onnx
from landcover.package import load_package
from landcover.train import UnetClassifier
from test_arcgis_pro import CHESAPEAKE, NAIP, _read, check_not_trivial, fitted_package

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the metadata keys Deepness's documentation (docs/source/creators/creators_add_metadata_to_model.rst) names
DEEPNESS_KEYS = {"model_type", "class_names", "resolution", "tiles_size", "tiles_overlap", "standardization_mean",
                 "standardization_std", "seg_thresh", "seg_small_segment"}


def deepness_map(onnx_path, image: np.ndarray) -> np.ndarray:
    """Class indices (h, w) of ``image`` (bands, h, w) as Deepness computes them with the model's metadata.

    As Deepness's map processor does for an entire layer (processing/extent_utils.py,
    calculate_extended_processing_extent; tile_params.py): the processing extent grows at its east and north
    sides (``xMaximum``, ``yMaximum``) until it is ``N * stride + tile`` pixels, the pixels there read as 0
    (past the layer), tiles start at the extended extent's north-west corner, each tile writes its core (half the
    overlap dropped on every side but the extent's own edges), and the result is cut back to the layer.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    tile = int(meta["tiles_size"])
    assert session.get_inputs()[0].shape[1:] == [image.shape[0], tile, tile]
    overlap = round(tile * meta["tiles_overlap"] / 100)
    stride, half = tile - overlap, overlap // 2
    mean = np.asarray(meta["standardization_mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(meta["standardization_std"], np.float32).reshape(-1, 1, 1)
    _, h, w = image.shape

    def missing(n: int) -> int:
        return tile - n if n <= tile else (stride - (n - tile) % stride) % stride

    north, east = missing(h), missing(w)
    padded = np.zeros((image.shape[0], h + north, w + east), np.float32)
    padded[:, north:, :w] = image
    rows = (padded.shape[1] - tile) // stride + 1
    cols = (padded.shape[2] - tile) // stride + 1
    out = np.zeros(padded.shape[1:], np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = r * stride, c * stride
            tile_img = (padded[:, y: y + tile, x: x + tile] / 255.0 - mean) / std
            probs = session.run(None, {session.get_inputs()[0].name: tile_img[None].astype(np.float32)})[0][0]
            probs[probs < meta["seg_thresh"]] = 0
            classes = probs.argmax(axis=0)
            y0, x0 = (half if r else 0), (half if c else 0)
            y1 = tile - half if r < rows - 1 else tile
            x1 = tile - half if c < cols - 1 else tile
            out[y + y0: y + y1, x + x0: x + x1] = classes[y0:y1, x0:x1]
    return out[north:, :w]


@pytest.fixture(scope="module")
def naip_package(shared_data, tmp_path_factory):
    path = shared_data / NAIP
    with rasterio.open(path) as ds:
        img, cell, crs = ds.read(), ds.res, ds.crs.to_wkt()
    with rasterio.open(str(path).replace("naip-new", "lc")) as ds:
        labels = ds.read(1)
    # 120 steps: after 60, on a Zen 5 (the fitted weights differ by CPU), the two tilings agreed on 97.3 % of the
    # pixels, the differences spread over the whole raster rather than at its edges: the near-ties of a barely
    # fitted model, which the tilings split differently; after 120 steps 99.2 %
    return path, img, fitted_package(img, labels, CHESAPEAKE, tmp_path_factory.mktemp("naip") / "naip",
                                     cell=cell, crs_wkt=crs, steps=120)


def test_deepness_onnx_agrees_with_classify_pixels(naip_package, tmp_path):
    path, img, package = naip_package
    onnx_path = UnetClassifier.from_model(package).export_onnx(tmp_path / "model.onnx", tile_size=128)
    reference = _read(classify_pixels(path, package, tmp_path / "ref.tif", tile_size=128, backend="fp32",
                                      progress=False))
    check_not_trivial(reference)
    indices = deepness_map(onnx_path, img.astype(np.float32))
    same = load_package(package).index_to_value[indices] == reference
    # Deepness's edge tiles reach past the layer (east and north), classify_pixels' stop at its edge; the graph
    # masks the fill at every layer, so the model sees the edge as it sees a tile's border in both.
    assert same.mean() >= 0.99, same.mean()
    rim = 32
    assert same[rim:-rim, rim:-rim].mean() >= 0.99, same[rim:-rim, rim:-rim].mean()


def test_deepness_metadata_and_cli(naip_package, tmp_path, capsys):
    _, _, package = naip_package
    out = tmp_path / "cli.onnx"
    assert main(["export-onnx", str(package), "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert list(meta) == list(METADATA_KEYS) and set(meta) <= DEEPNESS_KEYS
    values = {k: json.loads(v) for k, v in meta.items()}
    assert values["model_type"] == "Segmentor"
    assert values["class_names"] == {"0": "NoData", **{str(i + 1): c.name for i, c in enumerate(CHESAPEAKE)}}
    assert values["tiles_size"] == 64 and values["tiles_overlap"] == 50  # padding 16 on each side of 64
    assert values["resolution"] == pytest.approx(2359.2308, abs=1e-3)  # 23.59 m cells, in cm
    assert values["standardization_mean"] == [0.0] * 4 and values["standardization_std"] == [1.0] * 4
    assert values["seg_thresh"] == 0.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"input": np.random.default_rng(0).random((2, 4, 64, 64), np.float32)})[0]
    assert probs.shape == (2, 7, 64, 64)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs[:, 0] == 0).all()  # background never wins
    # an existing output is kept unless --overwrite; a bad padding is one line
    assert main(["export-onnx", str(package), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(LandcoverError, match="padding=40"):
        export_deepness_onnx(load_package(package), tmp_path / "bad.onnx", padding=40)
    assert not (tmp_path / "bad.onnx").exists()
