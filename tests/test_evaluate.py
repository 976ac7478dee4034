"""Accuracy assessment: metrics against an independent numpy computation, aligned references (rasters on other
grids, polygons in another CRS), the Olofsson et al. (2014) estimators and sampling, reports, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

import landcover
import landcover.areas
from conftest import write_raster
from landcover.classes import ClassInfo, write_class_table
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.evaluate import confusion_metrics, evaluate, olofsson_estimates
from landcover.evaluate.sampling import BottomKSampler, allocate

ORIGIN = (500000.0, 4300000.0)
CLASSES = [ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(2, "Forest", (0, 128, 0)),
           ClassInfo(3, "Field", (200, 200, 0)), ClassInfo(4, "Built", (255, 0, 0))]


@pytest.fixture
def small_strips(monkeypatch):
    """Force many strips so the streaming code paths (and strip seams) are exercised on tiny rasters."""
    monkeypatch.setattr(landcover.areas, "STRIP_PIXELS", 700)


def _pair(tmp_path, seed=0, shape=(90, 70)):
    """A prediction (nodata 0) and a reference (nodata 255) with 20 % errors and no data on both sides."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 5, shape).astype(np.uint8)
    ref[ref == 4] = rng.choice([1, 2, 3, 4], size=int((ref == 4).sum()), p=[0.5, 0.2, 0.1, 0.2])  # unbalanced
    pred = ref.copy()
    wrong = rng.random(shape) < 0.2
    pred[wrong] = rng.integers(1, 5, int(wrong.sum()))
    pred[:5, :] = 0
    ref[:, :4] = 255
    p = write_raster(tmp_path / "pred.tif", pred, nodata=0, transform=from_origin(*ORIGIN, 2.0, 2.0))
    r = write_raster(tmp_path / "ref.tif", ref, nodata=255, transform=from_origin(*ORIGIN, 2.0, 2.0))
    write_class_table(p, CLASSES)
    return p, r, pred, ref


def _numpy_metrics(pred, ref, pred_nodata=0, ref_nodata=255):
    """The expected metrics, computed pixel by pixel with plain boolean masks (no shared code)."""
    valid = (pred != pred_nodata) & (ref != ref_nodata) & (ref != 0)
    p, r = pred[valid].astype(int), ref[valid].astype(int)
    values = sorted(set(p) | set(r))
    mat = np.array([[np.sum((p == a) & (r == b)) for b in values] for a in values])
    out = {"values": values, "matrix": mat, "oa": np.mean(p == r)}
    pe = sum(np.mean(p == c) * np.mean(r == c) for c in values)
    out["kappa"] = (out["oa"] - pe) / (1 - pe)
    per = {}
    for c in values:
        tp = np.sum((p == c) & (r == c))
        fp = np.sum((p == c) & (r != c))
        fn = np.sum((p != c) & (r == c))
        prec, rec = tp / (tp + fp), tp / (tp + fn)
        per[c] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec), "iou": tp / (tp + fp + fn)}
    out["per_class"] = per
    out["miou"] = np.mean([per[c]["iou"] for c in values])
    return out


def test_metrics_equal_independent_numpy(tmp_path, small_strips):
    p, r, pred, ref = _pair(tmp_path)
    with pytest.warns(UserWarning, match="labelled reference pixels"):  # the map's no-data rows
        report = evaluate(p, r)
    exp = _numpy_metrics(pred, ref)
    assert [c.value for c in report.classes] == exp["values"]
    assert [c.name for c in report.classes] == ["Water", "Forest", "Field", "Built"]
    np.testing.assert_array_equal(report.matrix, exp["matrix"])
    assert report.pixels_compared == exp["matrix"].sum()
    assert report.overall_accuracy == pytest.approx(exp["oa"])
    assert report.kappa == pytest.approx(exp["kappa"])
    assert report.mean_iou == pytest.approx(exp["miou"])
    for c in report.per_class:
        e = exp["per_class"][c["value"]]
        assert c["users_accuracy"] == pytest.approx(e["precision"]) and c["precision"] == c["users_accuracy"]
        assert c["producers_accuracy"] == pytest.approx(e["recall"]) and c["recall"] == c["producers_accuracy"]
        assert c["f1"] == pytest.approx(e["f1"])
        assert c["iou"] == pytest.approx(e["iou"])
    # prediction pixels with a class where the reference has none
    assert report.prediction_pixels_without_reference == int(((pred != 0) & (ref == 255)).sum())
    # ... and labelled reference pixels where the map has none: counted, not in the matrix
    assert report.reference_pixels_without_prediction == int(((pred == 0) & (ref != 255)).sum()) > 0


def test_arcgis_help_example_matrix():
    """ArcGIS Compute Confusion Matrix help: classes 49/4/4, 2/40/2, 3/3/59 (rows = classified)."""
    m = confusion_metrics(np.array([[49, 4, 4], [2, 40, 2], [3, 3, 59]]))
    np.testing.assert_allclose(m["users_accuracy"], [0.8596, 0.9091, 0.9077], atol=5e-4)
    np.testing.assert_allclose(m["producers_accuracy"], [0.9074, 0.8511, 0.9077], atol=5e-4)
    assert m["overall_accuracy"] == pytest.approx(0.8916, abs=5e-4)
    assert m["kappa"] == pytest.approx(0.8357, abs=5e-4)


def test_reference_on_coarser_grid_is_resampled_nearest(tmp_path, small_strips):
    rng = np.random.default_rng(3)
    coarse = rng.integers(1, 4, (20, 15)).astype(np.uint8)
    fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)  # what nearest resampling must give
    pred = fine.copy()
    pred[::7, ::5] = np.where(pred[::7, ::5] == 1, 2, 1)
    # The prediction covers only part of the reference, offset by whole coarse pixels.
    p = write_raster(tmp_path / "p.tif", pred[4:, 6:], nodata=0, transform=from_origin(ORIGIN[0] + 6, ORIGIN[1] - 4, 1, 1))
    r = write_raster(tmp_path / "r.tif", coarse, transform=from_origin(*ORIGIN, 2, 2))
    report = evaluate(p, r)
    exp = _numpy_metrics(pred[4:, 6:], fine[4:, 6:])
    np.testing.assert_array_equal(report.matrix, exp["matrix"])


@pytest.mark.parametrize("rows, cols", [(slice(10, 60), slice(20, 50)), (slice(0, 90), slice(30, 70))])
def test_reference_on_the_maps_grid_covering_part_of_it(tmp_path, small_strips, rows, cols):
    """A reference cut from the map's grid (a window inside it, or the map shifted east) counts only where it
    lies: the map's pixels outside it are not compared (they once were, with the reference stretched over
    the whole map)."""
    p, _, pred, ref = _pair(tmp_path)
    part = ref[rows, cols]
    r = write_raster(tmp_path / "part.tif", part, nodata=255,
                     transform=from_origin(ORIGIN[0] + 2 * cols.start, ORIGIN[1] - 2 * rows.start, 2.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate(p, r)
    exp = _numpy_metrics(pred[rows, cols], part)
    np.testing.assert_array_equal(report.matrix, exp["matrix"])
    assert report.pixels_compared == exp["matrix"].sum()


def test_polygon_reference_in_another_crs(tmp_path, small_strips):
    import pyogrio.raw
    import shapely
    from pyproj import Transformer

    h, w = 40, 50
    truth = np.zeros((h, w), np.uint8)
    boxes = [(2, 3, 20, 30, 1), (22, 5, 48, 18, 2), (25, 20, 45, 38, 3)]  # col0, row0, col1, row1, class
    for c0, r0, c1, r1, v in boxes:
        truth[r0:r1, c0:c1] = v
    pred = np.where(truth == 0, 3, truth).astype(np.uint8)
    pred[10:12, 5:15] = 2
    t = from_origin(*ORIGIN, 1, 1)
    p = write_raster(tmp_path / "p.tif", pred, transform=t)
    write_class_table(p, CLASSES)
    to_ll = Transformer.from_crs("EPSG:32617", "EPSG:4326", always_xy=True)
    geoms = [shapely.transform(shapely.box(*(t @ (c0, r1)), *(t @ (c1, r0))),
                               lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
             for c0, r0, c1, r1, _ in boxes]
    geoms = [shapely.segmentize(g, 1e-6) for g in geoms]
    values = np.array([b[4] for b in boxes], dtype=np.int32)
    names = np.array([CLASSES[v - 1].name.upper() for v in values], dtype=object)
    gpkg = tmp_path / "ref.gpkg"
    pyogrio.raw.write(str(gpkg), shapely.to_wkb(np.array(geoms, dtype=object)), [values, names],
                      ["ClassValue", "label"], driver="GPKG", geometry_type="Polygon", crs="EPSG:4326")
    exp = _numpy_metrics(pred, truth, pred_nodata=0, ref_nodata=0)
    for field in (None, "label"):  # auto-detected integer field, then class names via the class table
        report = evaluate(p, gpkg, class_field=field)
        assert report.reference_kind == "polygons"
        assert report.class_field == ("ClassValue" if field is None else "label")
        np.testing.assert_array_equal(report.matrix, exp["matrix"])
    with pytest.raises(LandcoverError, match="field 'nope' not found"):
        evaluate(p, gpkg, class_field="nope")


def test_missing_reference_class_is_reported_not_fatal(tmp_path):
    ref = np.ones((10, 10), np.uint8)
    ref[:, 5:] = 2
    ref[0, 0] = 5
    pred = np.ones((10, 10), np.uint8)
    p = write_raster(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", ref)
    with pytest.warns(UserWarning, match="missing from the prediction: 2, 5"):
        report = evaluate(p, r, out=tmp_path / "rep.json")
    assert report.missing_from_prediction == [2, 5]
    doc = json.loads((tmp_path / "rep.json").read_text())
    assert doc["reference_classes_missing_from_prediction"] == [2, 5]
    per = {c["value"]: c for c in doc["per_class"]}
    assert per[2]["producers_accuracy"] == 0 and per[2]["users_accuracy"] is None  # never predicted: undefined
    # -1 in an int16 label raster usually means "not labelled": the warning says how to leave it out
    signed = ref.astype(np.int16)
    signed[1, :3] = -1
    r16 = write_raster(tmp_path / "r16.tif", signed)
    with pytest.warns(UserWarning, match=r"missing from the prediction: -1, 2, 5 \(.*; if -1 means not labelled, "
                                         r"give ignore_values=\[-1\]\)"):
        evaluate(p, r16)
    assert evaluate(p, r16, ignore_values=[-1, 2, 5]).overall_accuracy == 1.0


def test_olofsson_paper_example():
    """Olofsson et al. (2014), section 5: deforestation, forest gain, stable forest, stable non-forest."""
    counts = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
    strata = [200_000, 150_000, 3_200_000, 6_450_000]
    est = olofsson_estimates(counts, strata, pixel_area=0.09)
    assert round(est.area[0]) == 21_158 and round(est.area_ci95[0]) == 6_158
    assert round(est.area[1]) == 11_686 and round(est.area_ci95[1]) == 3_756
    assert round(est.overall_accuracy, 3) == 0.947
    np.testing.assert_array_equal(np.round(est.users_accuracy, 2), [0.88, 0.73, 0.93, 0.96])
    np.testing.assert_array_equal(np.round(est.producers_accuracy, 2), [0.75, 0.85, 0.93, 0.96])
    assert est.area.sum() == pytest.approx(10_000_000 * 0.09)
    np.testing.assert_allclose(est.map_area, np.array(strata) * 0.09)
    # eq. (6) by hand for the deforestation user's accuracy: 1.96 sqrt(0.88 * 0.12 / 74)
    assert est.users_ci95[0] == pytest.approx(1.96 * np.sqrt(0.88 * 0.12 / 74))


def test_allocation_strategies():
    strata = {1: 1_000, 2: 50, 3: 100_000}
    st = allocate("stratified", 300, strata)
    assert sum(st.values()) == 300 and st[1] == 50 and st[2] == 50 and st[3] == 200  # floor 50 for rare classes
    eq = allocate("equalized", 300, {1: 1_000, 2: 50, 3: 100_000})
    assert eq == {1: 125, 2: 50, 3: 125}  # class 2 only has 50 pixels; the rest is shared
    assert allocate("random", 300, strata) == {0: 300}
    prop = allocate("stratified", 10_000, {1: 10_000, 2: 90_000})
    assert prop == {1: 1_000, 2: 9_000}
    with pytest.raises(LandcoverError, match="larger than the 101,050 pixels"):
        allocate("stratified", 200_000, strata)


def test_bottom_k_sampler_keeps_a_random_subset_per_stratum():
    rng = np.random.default_rng(0)
    mapped = rng.integers(1, 4, 5000)
    sampler = BottomKSampler(40, seed=1)
    for start in range(0, 5000, 600):  # streamed in chunks
        sl = slice(start, start + 600)
        sampler.offer(np.arange(5000)[sl], mapped[sl], mapped[sl] * 10)
    units = sampler.draw({1: 10, 2: 40, 3: 0})
    assert sorted(np.unique(units["map"], return_counts=True)[1]) == [10, 40]
    assert (mapped[units["pixel"]] == units["map"]).all() and (units["ref"] == units["map"] * 10).all()
    assert len(set(units["pixel"].tolist())) == 50


@pytest.mark.filterwarnings("ignore:.*labelled reference pixels")
@pytest.mark.filterwarnings("ignore:.*the reference labels")
def test_census_sample_reproduces_the_census(tmp_path, small_strips):
    """A 'sample' of every labelled pixel gives the census of the labelled pixels within each map class,
    weighted by each map class's area over the whole map (the reference leaves the map's first columns
    unlabelled): accuracies and areas as computed here with plain numpy."""
    p, r, pred, ref = _pair(tmp_path, seed=5, shape=(40, 30))
    total = int(((pred != 0) & (ref != 255)).sum())
    report = evaluate(p, r, sample=total, strategy="stratified", seed=2)
    est = report.sample["estimates"]
    pixel_ha = 4.0 / 1e4
    exp = _numpy_metrics(pred, ref)
    n = exp["matrix"].astype(float)  # rows = map class, columns = reference class, labelled pixels only
    whole = np.array([(pred == v).sum() for v in exp["values"]], float)  # map classes over the whole map
    assert (whole > n.sum(axis=1)).any()  # the whole map is larger than what the reference labels
    p_hk = (whole / whole.sum())[:, None] * n / n.sum(axis=1, keepdims=True)
    np.testing.assert_allclose([c["map_area"] for c in est["classes"]], whole * pixel_ha)
    np.testing.assert_allclose([c["area"] for c in est["classes"]], p_hk.sum(axis=0) * whole.sum() * pixel_ha)
    np.testing.assert_allclose([c["users_accuracy"] for c in est["classes"]],
                               [exp["per_class"][v]["precision"] for v in exp["values"]])
    np.testing.assert_allclose([c["producers_accuracy"] for c in est["classes"]],
                               np.diag(p_hk) / p_hk.sum(axis=0))
    assert est["overall_accuracy"] == pytest.approx(np.trace(p_hk))
    np.testing.assert_array_equal(report.sample["counts"], exp["matrix"])


def test_sparse_reference_sample_weighs_strata_by_the_whole_map(tmp_path):
    """Reference points on a few pixels: the strata (map areas) are the whole map's, with a warning."""
    from landcover.areas import class_areas

    p, _, pred, ref = _pair(tmp_path, seed=8)
    sparse = np.full(ref.shape, 255, np.uint8)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(5, 90, 300), rng.integers(4, 70, 300)
    sparse[rows, cols] = ref[rows, cols]
    r = write_raster(tmp_path / "points.tif", sparse, nodata=255, transform=from_origin(*ORIGIN, 2.0, 2.0))
    with pytest.warns(UserWarning, match=r"the reference labels \d+\.\d % of the map"):
        report = evaluate(p, r, sample=150, seed=0)
    est = report.sample["estimates"]["classes"]
    whole = {row.value: row.hectares for row in class_areas(p).rows}
    assert [c["map_area"] for c in est] == pytest.approx([whole[c["value"]] for c in est])
    assert sum(c["area"] for c in est) == pytest.approx(sum(whole.values()))


@pytest.mark.filterwarnings("ignore:.*labelled reference pixels")
@pytest.mark.filterwarnings("ignore:.*the reference labels")
def test_sample_units_are_on_their_strata_and_reproducible(tmp_path, small_strips):
    p, r, pred, ref = _pair(tmp_path, seed=7)
    a = evaluate(p, r, sample=120, strategy="equalized", seed=11)
    b = evaluate(p, r, sample=120, strategy="equalized", seed=11)
    c = evaluate(p, r, sample=120, strategy="equalized", seed=12)
    units = np.array(a.sample["units"])
    assert units.shape == (120, 4)
    assert a.sample["units"] == b.sample["units"] and a.sample["units"] != c.sample["units"]
    np.testing.assert_array_equal(pred[units[:, 0], units[:, 1]], units[:, 2])
    np.testing.assert_array_equal(ref[units[:, 0], units[:, 1]], units[:, 3])
    assert sorted(np.unique(units[:, 2], return_counts=True)[1]) == [30, 30, 30, 30]
    rnd = evaluate(p, r, sample=100, strategy="random", seed=1)
    assert np.array(rnd.sample["units"]).shape == (100, 4) and rnd.sample["area_unit"] == "ha"
    est = rnd.sample["estimates"]["classes"]
    assert sum(c["area"] for c in est) == pytest.approx(sum(c["map_area"] for c in est))


def test_bad_input_is_one_line(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.ones((10, 10), np.uint8))
    far = write_raster(tmp_path / "far.tif", np.ones((10, 10), np.uint8), transform=from_origin(600000, 4300000, 1, 1))
    empty = write_raster(tmp_path / "empty.tif", np.zeros((10, 10), np.uint8), nodata=0)
    with pytest.raises(LandcoverError, match="does not overlap"):
        evaluate(a, far)
    with pytest.raises(LandcoverError, match="no pixel has a class in both"):
        evaluate(a, empty)
    with pytest.raises(LandcoverError, match="larger than the 100 pixels"):
        evaluate(a, a, sample=101)
    half = np.ones((10, 10), np.uint8)
    half[5:] = 0
    h = write_raster(tmp_path / "half.tif", half)
    with pytest.raises(LandcoverError, match="larger than the 50 pixels that have data"):
        evaluate(a, h, sample=60)
    with pytest.raises(LandcoverError, match="not found"):
        evaluate(tmp_path / "missing.tif", a)
    with pytest.raises(LandcoverError, match="only polygon references have fields"):
        evaluate(a, a, class_field="value")


def test_messages_name_arguments_as_the_user_gave_them(tmp_path, capsys):
    """``sample=60`` from Python, ``--sample 60`` from the CLI; ``class_field``/``--class-field`` likewise."""
    a = write_raster(tmp_path / "a.tif", np.ones((10, 10), np.uint8))
    half = np.ones((10, 10), np.uint8)
    half[5:] = 0
    h = write_raster(tmp_path / "half.tif", half)
    with pytest.raises(LandcoverError, match=r"^sample=60: larger than the 50 pixels that have data"):
        evaluate(a, h, sample=60)
    assert main(["evaluate", "--prediction", str(a), "--reference", str(h), "--sample", "60"]) == 2
    err = capsys.readouterr().err
    assert "error: --sample 60: larger than the 50 pixels that have data" in err and "sample=" not in err
    with pytest.raises(LandcoverError, match=r"^class_field='value': only polygon references have fields"):
        evaluate(a, a, class_field="value")
    assert main(["evaluate", "--prediction", str(a), "--reference", str(a), "--class-field", "value"]) == 2
    assert "error: --class-field value: only polygon references have fields" in capsys.readouterr().err


def test_cli_writes_json_table_and_heatmap(tmp_path, capsys):
    p, r, pred, ref = _pair(tmp_path, seed=2, shape=(30, 30))
    out = tmp_path / "rep" / "report.json"
    code = main(["evaluate", "--prediction", str(p), "--reference", str(r), "--out", str(out),
                 "--sample", "60", "--strategy", "stratified", "--seed", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows = map/prediction, columns = reference" in printed and "overall accuracy" in printed
    assert "Olofsson" in printed and "Forest" in printed
    doc = json.loads(out.read_text())
    assert doc["convention"].startswith("confusion_matrix[i][j] = pixels of map (prediction) class i")
    assert doc["overall_accuracy"] == pytest.approx(_numpy_metrics(pred, ref)["oa"])
    assert doc["sample"]["size"] == 60 and len(doc["sample"]["units"]) == 60
    png = out.with_name("report_confusion.png")
    with Image.open(png) as im:
        assert im.width > 100 and im.height > 100
    assert landcover.evaluate is evaluate and landcover.evaluate is evaluate  # stays the function


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    a = write_raster(tmp_path / "a.tif", np.ones((10, 10), np.uint8))
    far = write_raster(tmp_path / "far.tif", np.ones((10, 10), np.uint8), transform=from_origin(100, 100, 1, 1))
    code = main(["evaluate", "--prediction", str(a), "--reference", str(far)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not overlap" in err


def test_geographic_prediction_sample_areas_are_geodesic(tmp_path):
    from landcover.areas import class_areas

    rng = np.random.default_rng(4)
    ref = rng.integers(1, 3, (60, 40)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.1, 3 - ref, ref).astype(np.uint8)
    t = from_origin(10.0, 60.3, 0.01, 0.01)  # rows from 60.3 °N down to 59.7 °N: pixel areas vary by row
    p = write_raster(tmp_path / "p.tif", pred, crs="EPSG:4326", transform=t)
    r = write_raster(tmp_path / "r.tif", ref, crs="EPSG:4326", transform=t)
    report = evaluate(p, r, sample=200, seed=0)
    est = report.sample["estimates"]["classes"]
    assert report.sample["area_unit"] == "ha"
    geodesic = {row.value: row.hectares for row in class_areas(p).rows}
    assert [c["map_area"] for c in est] == pytest.approx([geodesic[1], geodesic[2]], rel=1e-9)
    assert sum(c["area"] for c in est) == pytest.approx(sum(geodesic.values()), rel=1e-9)


def _holed_pair(tmp_path, pred_nodata=0, hole=(slice(0, 6), slice(None))):
    """A perfect prediction with a hole of map no data (``pred_nodata``) over labelled reference pixels."""
    ref = np.tile(np.repeat(np.arange(1, 5, dtype=np.uint8), 5), (20, 1))  # 20 x 20, classes 1..4
    ref[:, 18:] = 0  # unlabelled reference pixels: never counted
    pred = ref.copy()
    pred[ref == 0] = 2
    pred[hole] = pred_nodata
    p = write_raster(tmp_path / "pred.tif", pred, nodata=pred_nodata)
    r = write_raster(tmp_path / "ref.tif", ref, nodata=0)
    return p, r, pred, ref


def test_reference_pixels_without_prediction_are_counted_and_warned(tmp_path, small_strips, capsys):
    p, r, pred, ref = _holed_pair(tmp_path)
    expected = int(((ref != 0) & (pred == 0)).sum())
    labelled = int((ref != 0).sum())
    assert expected == 6 * 18
    with pytest.warns(UserWarning, match=r"108 of 360 labelled reference pixels \(30\.0 %\) have no class in the "
                      r"prediction"):
        report = evaluate(p, r, out=tmp_path / "rep.json")
    assert report.reference_pixels_without_prediction == expected
    assert report.reference_pixels_without_prediction_share == pytest.approx(expected / labelled)
    assert report.pixels_compared == labelled - expected  # the matrix stays over pixels with a class in both
    assert report.overall_accuracy == 1.0
    doc = json.loads((tmp_path / "rep.json").read_text())
    assert doc["reference_pixels_without_prediction"] == expected
    assert doc["reference_pixels_without_prediction_share"] == pytest.approx(expected / labelled)
    assert any("labelled reference pixels" in w for w in doc["warnings"])
    assert main(["evaluate", "--prediction", str(p), "--reference", str(r)]) == 0
    out, err = capsys.readouterr()
    assert "reference pixels without prediction 108 (30.0 % of 360 labelled" in out
    assert "landcover evaluate: warning: 108 of 360 labelled reference pixels" in err


def test_map_nodata_other_than_zero_is_honoured_for_the_count(tmp_path):
    p, r, pred, ref = _holed_pair(tmp_path, pred_nodata=255, hole=(slice(0, 1), slice(0, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 of 360 (0.6 %): counted, but below the warning threshold
        report = evaluate(p, r)
    assert report.reference_pixels_without_prediction == 2
    assert report.pixels_compared == 358 and report.overall_accuracy == 1.0 and 255 not in report.matrix.shape
    assert [c.value for c in report.classes] == [1, 2, 3, 4]


def test_cli_prints_only_landcover_warnings_as_its_own(tmp_path, capsys, monkeypatch):
    """Dependencies' (pending) deprecation warnings are not printed as 'landcover evaluate: warning: ...'."""
    import sys

    evaluate_module = sys.modules["landcover.evaluate"]
    real = evaluate_module.evaluate

    def noisy(*args, **kwargs):
        warnings.warn_explicit("Use `@` matmul instead of `*` mul operator", PendingDeprecationWarning,
                               "affine/__init__.py", 623, module="affine")
        warnings.warn_explicit("something old", DeprecationWarning, "rasterio/windows.py", 1, module="rasterio")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", noisy)
    ref = np.ones((10, 10), np.uint8)
    ref[0, 0] = 5
    p = write_raster(tmp_path / "p.tif", np.ones((10, 10), np.uint8))
    r = write_raster(tmp_path / "r.tif", ref)
    with pytest.warns(DeprecationWarning, match="something old"):  # left to Python's (here pytest's) handling
        assert main(["evaluate", "--prediction", str(p), "--reference", str(r)]) == 0
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("landcover evaluate: warning:")]
    assert ours == ["landcover evaluate: warning: reference classes missing from the prediction: 5 (their "
                    "producer's accuracy and IoU are 0)"]
    assert "matmul" not in err and "something old" not in err


@pytest.mark.filterwarnings("ignore:.*labelled reference pixels")
def test_float_reference_must_hold_integral_class_values(tmp_path, small_strips, capsys):
    p, r, pred, ref = _pair(tmp_path, seed=3, shape=(30, 40))
    t = from_origin(*ORIGIN, 2.0, 2.0)
    as_float = np.where(ref == 255, 0, ref).astype(np.float32)
    bad = write_raster(tmp_path / "ref_float.tif", np.where(as_float > 0, as_float + 0.4, 0).astype(np.float32),
                       nodata=0.0, transform=t)
    with pytest.raises(LandcoverError, match=r"ref_float.tif: reference value 1.4 is not an integer"):
        evaluate(p, bad)
    assert main(["evaluate", "--prediction", str(p), "--reference", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an integer" in err
    # Whole numbers in a float raster are classes; its nodata (here -9999, and NaN) is honoured.
    good = np.where(ref == 255, np.float32(-9999), ref.astype(np.float32))
    good[7, 10] = np.nan
    g = write_raster(tmp_path / "ref_float_ok.tif", good, nodata=-9999.0, transform=t)
    report = evaluate(p, g)
    valid_ref = np.where(np.isnan(good), 255, ref)
    exp = _numpy_metrics(pred, valid_ref)
    np.testing.assert_array_equal(report.matrix, exp["matrix"])
    assert [c.value for c in report.classes] == exp["values"]


def test_float_prediction_must_hold_integral_class_values(tmp_path):
    ref = np.ones((6, 6), np.uint8)
    p = write_raster(tmp_path / "p.tif", np.full((6, 6), 2.5, np.float32), nodata=0.0)
    r = write_raster(tmp_path / "r.tif", ref)
    with pytest.raises(LandcoverError, match=r"p.tif: class value 2.5 is not an integer"):
        evaluate(p, r)
    rgb = write_raster(tmp_path / "rgb.tif", np.ones((3, 6, 6), np.uint8))
    with pytest.raises(LandcoverError, match="one band, this one has 3"):
        evaluate(rgb, r)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_polygons_without_crs_are_refused(tmp_path, capsys):
    import pyogrio.raw
    import shapely

    p = write_raster(tmp_path / "p.tif", np.ones((10, 10), np.uint8))
    box = shapely.box(ORIGIN[0] + 1, ORIGIN[1] - 8, ORIGIN[0] + 8, ORIGIN[1] - 1)
    gpkg = tmp_path / "nocrs.gpkg"
    pyogrio.raw.write(str(gpkg), shapely.to_wkb(np.array([box], dtype=object)), [np.array([1], np.int32)],
                      ["classvalue"], driver="GPKG", geometry_type="Polygon", crs=None)
    with pytest.raises(LandcoverError, match="nocrs.gpkg: the layer has no CRS; define one"):
        evaluate(p, gpkg)
    assert main(["evaluate", "--prediction", str(p), "--reference", str(gpkg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ogr2ogr" in err


def test_polygon_float_field_must_hold_integers(tmp_path):
    import pyogrio.raw
    import shapely

    p = write_raster(tmp_path / "p.tif", np.ones((10, 10), np.uint8))
    box = shapely.box(ORIGIN[0] + 1, ORIGIN[1] - 8, ORIGIN[0] + 8, ORIGIN[1] - 1)
    gpkg = tmp_path / "f.gpkg"
    pyogrio.raw.write(str(gpkg), shapely.to_wkb(np.array([box, box], dtype=object)),
                      [np.array([1.0, 1.4])], ["classvalue"], driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32617")
    with pytest.raises(LandcoverError, match="field 'classvalue' value 1.4 is not an integer"):
        evaluate(p, gpkg)


@pytest.mark.parametrize(("strategy", "hint"), [
    ("stratified", "use a sample of at least 4 (2 units for each of the 2 map classes)"),
    ("equalized", "use a sample of at least 4 (2 units for each of the 2 map classes)"),
    ("random", "use a larger sample or the stratified or equalized strategy (which give every map class at least 2 "
     "units from sample=4)")])
def test_thin_stratum_hint_depends_on_the_strategy(tmp_path, strategy, hint):
    pred = np.ones((20, 20), np.uint8)
    pred[0, :3] = 2  # a rare map class: 3 pixels
    p = write_raster(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", np.ones((20, 20), np.uint8))
    with pytest.warns(UserWarning, match="fewer than 2 sample units") as rec:
        report = evaluate(p, r, sample=2, strategy=strategy, seed=0)
    note = next(str(w.message) for w in rec if "sample units" in str(w.message))
    assert note.endswith(hint) and note in report.warnings
    if strategy != "random":
        assert "strategy" not in note  # the strategy in use already gives every class its share


def test_references_that_cannot_be_compared_are_refused_or_warned(tmp_path):
    """A multi-band image given as the reference, codes that match none of the map's (values x 10), and class
    tables that name the same value differently."""
    p, r, pred, ref = _pair(tmp_path)
    image = write_raster(tmp_path / "image.tif", np.stack([ref, ref, ref]), nodata=255,
                         transform=from_origin(*ORIGIN, 2.0, 2.0))
    with pytest.raises(LandcoverError, match="has 3 bands; give a one-band raster"):
        evaluate(p, image)
    tens = write_raster(tmp_path / "tens.tif", np.where(ref == 255, 0, ref * 10).astype(np.uint8), nodata=0,
                        transform=from_origin(*ORIGIN, 2.0, 2.0))
    with pytest.raises(LandcoverError, match=r"none of the reference's class values \(10, 20, 30, 40\) is a class"):
        evaluate(p, tens)
    write_class_table(r, [ClassInfo(1, "water", (0, 0, 255)), ClassInfo(2, "Buildings", (9, 9, 9))])
    with pytest.warns(UserWarning, match="name some class values differently \\(2: Forest / Buildings\\)"):
        evaluate(p, r)


def test_ignored_reference_values_are_unlabelled(tmp_path, capsys):
    """A reference's 'ignore' code (255 in NRCan's land cover) is left out like its no data."""
    p, _, pred, ref = _pair(tmp_path)
    coded = ref.copy()
    coded[ref == 255] = 0
    coded[40:60, 20:50] = 255  # 'ignore' patches, not the raster's nodata
    r = write_raster(tmp_path / "coded.tif", coded, nodata=0, transform=from_origin(*ORIGIN, 2.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate(p, r, ignore_values=[255])
        counted = evaluate(p, r)
    exp = _numpy_metrics(pred, np.where(coded == 255, 0, coded), ref_nodata=0)
    np.testing.assert_array_equal(report.matrix, exp["matrix"])
    assert report.ignored_reference_values == [255] and 255 in [c.value for c in counted.classes]
    assert main(["evaluate", "--prediction", str(p), "--reference", str(r), "--ignore-values", "255"]) == 0
    assert "255" not in capsys.readouterr().out.split("overall accuracy")[0].split()


def test_class_0_polygons_unlabel_what_lies_under_them(tmp_path):
    import pyogrio.raw
    import shapely

    t = from_origin(*ORIGIN, 1, 1)
    pred = np.full((20, 20), 1, np.uint8)
    pred[:, 10:] = 2
    p = write_raster(tmp_path / "p.tif", pred, transform=t)
    boxes = [(0, 0, 20, 20, 1), (5, 5, 15, 15, 0)]  # col0, row0, col1, row1, class; the 0 box is drawn last
    geoms = [shapely.box(*(t @ (c0, r1)), *(t @ (c1, r0))) for c0, r0, c1, r1, _ in boxes]
    gpkg = tmp_path / "ref.gpkg"
    pyogrio.raw.write(str(gpkg), shapely.to_wkb(np.array(geoms, dtype=object)),
                      [np.array([b[4] for b in boxes], dtype=np.int32)], ["classvalue"], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:32617")
    truth = np.ones((20, 20), np.uint8)
    truth[5:15, 5:15] = 0
    report = evaluate(p, gpkg)
    np.testing.assert_array_equal(report.matrix, _numpy_metrics(pred, truth, ref_nodata=0)["matrix"])
    assert report.pixels_compared == 400 - 100
