"""Label rasters and evaluate's references of any numeric dtype, as GIS users hold them (issue 19, item 3).

Float labels with whole values, int16/int32/uint16 codes, any nodata value (negative, NaN, none), on the imagery
grid or in another CRS, go through ``landcover export`` and ``landcover evaluate`` end to end and give exactly the
chips and matrix a uint8 raster gives; non-whole values and codes chips cannot hold are one line, exit 2, nothing
left at the output path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import array_bounds, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from conftest import write_raster
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.export.labels import label_values

SIZE = 64
TRANSFORM = from_origin(500000.0, 4300000.0, 1.0, 1.0)
NODATA_ROWS = 10  # the labels' first rows hold their nodata value


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Imagery, its class values, and a uint8 prediction equal to them (so every valid pixel agrees)."""
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(19)
    classes = rng.integers(1, 4, (SIZE, SIZE))
    imagery = write_raster(d / "img.tif", rng.integers(1, 255, (3, SIZE, SIZE)).astype(np.uint8),
                           transform=TRANSFORM)
    prediction = write_raster(d / "pred.tif", classes.astype(np.uint8), nodata=0, transform=TRANSFORM)
    return {"dir": d, "classes": classes, "imagery": imagery, "prediction": prediction}


def _labels(path, classes, dtype, nodata, crs="EPSG:32617"):
    """``classes`` as ``dtype`` with ``nodata`` in the first rows, on the imagery grid or reprojected to ``crs``."""
    data = classes.astype(dtype)
    fill = 0 if nodata is None else nodata
    data[:NODATA_ROWS] = fill
    if crs == "EPSG:32617":
        return write_raster(path, data, transform=TRANSFORM, nodata=nodata)
    tr, w, h = calculate_default_transform("EPSG:32617", crs, SIZE, SIZE, *array_bounds(SIZE, SIZE, TRANSFORM))
    out = np.full((h, w), fill, dtype=dtype)
    reproject(data, out, src_transform=TRANSFORM, src_crs="EPSG:32617", dst_transform=tr, dst_crs=crs,
              src_nodata=fill, dst_nodata=fill, resampling=Resampling.nearest)
    return write_raster(path, out, crs=crs, transform=tr, nodata=nodata)


def _chip_labels(out) -> np.ndarray:
    """The export's label chips (tile = whole raster, so one chip) as one array."""
    chips = sorted((out / "labels").glob("*.tif"))
    assert len(chips) == 1
    with rasterio.open(chips[0]) as ds:
        return ds.read(1)


def _export(scene, labels, out) -> int:
    return main(["export", "--imagery", str(scene["imagery"]), "--labels", str(labels), "--out", str(out),
                 "--tile-size", str(SIZE), "--quiet"])


GOOD = [("float32", -99999.0), ("float32", float("nan")), ("float64", None), ("int16", -32768),
        ("int32", -99999), ("uint16", 65535), ("int16", None)]


@pytest.mark.parametrize("crs", ["EPSG:32617", "EPSG:3857"])
@pytest.mark.parametrize(("dtype", "nodata"), GOOD)
def test_any_numeric_labels_export_and_evaluate_like_uint8(scene, tmp_path, capsys, dtype, nodata, crs):
    labels = _labels(tmp_path / "labels.tif", scene["classes"], dtype, nodata, crs)
    assert _export(scene, labels, tmp_path / "chips") == 0
    expected = scene["classes"].astype(np.uint8)
    expected[:NODATA_ROWS] = 0
    np.testing.assert_array_equal(_chip_labels(tmp_path / "chips"), expected)

    report = tmp_path / "report.json"
    assert main(["evaluate", "--prediction", str(scene["prediction"]), "--reference", str(labels),
                 "--out", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["overall_accuracy"] == 1.0
    assert got["pixels_compared"] == (SIZE - NODATA_ROWS) * SIZE  # the nodata rows are left out, not a class
    assert "error" not in capsys.readouterr().err


def _bad(scene, tmp_path, dtype, nodata, value):
    data = scene["classes"].astype(dtype)
    data[:NODATA_ROWS] = nodata
    data[SIZE - 3, SIZE - 3] = value  # late in the raster: found after other pixels were read
    return write_raster(tmp_path / f"bad_{dtype}.tif", data, transform=TRANSFORM, nodata=nodata)


@pytest.mark.parametrize(("dtype", "nodata", "value", "needle"), [
    ("float32", -99999.0, 1.5, "label value 1.5 is not an integer"),
    ("float64", float("nan"), 2.25, "label value 2.25 is not an integer"),
    ("int16", -32768, 300, "label value 300 is outside 0..255"),
    ("int32", -99999, -5, "label value -5 is outside 0..255"),
    ("float32", -99999.0, 256, "label value 256 is outside 0..255"),
])
def test_labels_chips_cannot_hold_are_one_line_and_leave_nothing(scene, tmp_path, capsys, dtype, nodata, value,
                                                                   needle):
    labels = _bad(scene, tmp_path, dtype, nodata, value)
    out = tmp_path / "chips"
    assert _export(scene, labels, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"landcover export: error: {labels}: {needle}")
    assert "reclassify" in err and "nodata" in err  # the fix
    assert not out.exists() or not any(out.rglob("*.tif"))


@pytest.mark.parametrize(("dtype", "nodata", "value"), [("float32", -99999.0, 1.5), ("float64", float("nan"), 0.5)])
def test_evaluate_refuses_non_whole_reference_in_one_line(scene, tmp_path, capsys, dtype, nodata, value):
    reference = _bad(scene, tmp_path, dtype, nodata, value)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--prediction", str(scene["prediction"]), "--reference", str(reference),
                 "--out", str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"landcover evaluate: error: {reference}: reference value {value:g} is not an integer")
    assert "reclassify" in err
    assert not report.exists() and not list(tmp_path.glob("report*"))


def test_evaluate_keeps_reference_codes_the_map_lacks_with_a_warning(scene, tmp_path, capsys):
    """A reference is compared with a map, not written to chips: an int16 code the map lacks (here -1, often
    'not labelled') is counted and named in a warning with the fix, as for any other reference."""
    reference = _bad(scene, tmp_path, "int16", -32768, -1)
    assert main(["evaluate", "--prediction", str(scene["prediction"]), "--reference", str(reference)]) == 0
    err = capsys.readouterr().err
    assert "missing from the prediction: -1" in err and "--ignore-values -1" in err


def test_label_values_shares_evaluates_whole_number_check():
    """Export's labels and evaluate's reference refuse the same values with the same words."""
    data = np.array([[0, 1.0, 2.0], [np.nan, -99999.0, 3.0]], dtype="float32")
    np.testing.assert_array_equal(label_values(data, -99999.0, "l.tif"), [[0, 1, 2], [0, 0, 3]])
    with pytest.raises(LandcoverError, match=r"^l.tif: label value 2.5 is not an integer; .*reclassify"):
        label_values(np.array([[2.5]], dtype="float32"), None, "l.tif")
    # whole values that would wrap around in uint8 (256 -> 0, -1 -> 255) are refused, never cast
    for v in (256, -1):
        with pytest.raises(LandcoverError, match=f"label value {v} is outside 0..255"):
            label_values(np.array([[v]], dtype="int32"), -99999, "l.tif")
