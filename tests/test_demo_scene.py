"""The demo's sample scene (files, grids, classes, spectra, determinism) and its HTML report."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from landcover.classes import CHESAPEAKE_CLASSES, load_classes_json, read_class_table
from landcover.demo import Report, make_scene, render_scene, write_preview, write_report
from landcover.errors import LandcoverError

SIZE = 512
VALUES = {1, 3, 5, 6, 7, 9}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), size=SIZE, seed=0)


@pytest.fixture(scope="module")
def arrays(scene):
    with rasterio.open(scene.imagery) as ds:
        image = ds.read()
    with rasterio.open(scene.truth) as ds:
        truth = ds.read(1)
    return image, truth


def test_imagery_is_a_1m_4band_utm_geotiff(scene):
    with rasterio.open(scene.imagery) as ds:
        assert ds.crs.to_epsg() == 26918
        assert (ds.width, ds.height, ds.count) == (SIZE, SIZE, 4)
        assert ds.dtypes == ("uint8",) * 4
        assert ds.res == (1.0, 1.0)
        assert ds.descriptions == ("Red", "Green", "Blue", "NearInfrared")
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert ds.bounds == pytest.approx(scene.bounds)
        # West of Dover, Delaware.
        (lon,), (lat,) = transform_points(ds.crs, "EPSG:4326", [ds.bounds.left], [ds.bounds.top])
        assert -76.0 < lon < -75.3 and 38.9 < lat < 39.4


def test_labels_are_on_another_grid_with_the_class_table(scene):
    with rasterio.open(scene.labels) as ds:
        assert ds.crs.to_epsg() == 3857
        assert ds.res == (2.0, 2.0)
        assert ds.dtypes == ("uint8",) and ds.nodata == 0
        labels = ds.read(1)
        assert ds.colormap(1)[7][:3] == (255, 0, 0)
    assert set(np.unique(labels)) == VALUES | {0}
    # The grid's corners lie outside the rotated scene: no data there, labels everywhere else.
    assert 0 < (labels == 0).mean() < 0.1
    expected = [c for c in CHESAPEAKE_CLASSES if c.value in VALUES]
    assert read_class_table(scene.labels) == expected
    assert load_classes_json(scene.classes_json) == expected
    assert list(scene.classes) == expected


def test_labels_agree_with_the_1m_truth(scene, arrays):
    _, truth = arrays
    with rasterio.open(scene.labels) as ds:
        labels = ds.read(1)
        rows, cols = np.nonzero(labels)
        pick = np.random.default_rng(0).choice(len(rows), 2000, replace=False)
        xs, ys = rasterio.transform.xy(ds.transform, rows[pick], cols[pick])
    ux, uy = transform_points("EPSG:3857", "EPSG:26918", xs, ys)
    left, top = scene.bounds[0], scene.bounds[3]
    r, c = (top - np.array(uy)).astype(int), (np.array(ux) - left).astype(int)
    inside = (r >= 0) & (r < SIZE) & (c >= 0) & (c < SIZE)
    agree = truth[r[inside], c[inside]] == labels[rows[pick], cols[pick]][inside]
    assert inside.mean() > 0.99
    assert agree.mean() > 0.97  # nearest-neighbour warping moves only class edges


def test_every_class_occurs_in_reasonable_proportions_on_both_sides(scene, arrays):
    _, truth = arrays
    assert set(scene.class_fractions) == VALUES
    assert sum(scene.class_fractions.values()) == pytest.approx(1, abs=1e-3)
    for part in (truth[:, :scene.split_column], truth[:, scene.split_column:]):
        values, counts = np.unique(part, return_counts=True)
        assert set(values) == VALUES
        share = counts / part.size
        assert share.min() > 0.01 and share.max() < 0.6, dict(zip(values, share.round(3), strict=True))


def test_class_spectra_are_plausible_and_separable(arrays):
    image, truth = arrays
    red, nir = image[0].astype(float), image[3].astype(float)
    ratio = {v: nir[truth == v].mean() / red[truth == v].mean() for v in VALUES}
    vegetation = min(ratio[3], ratio[5])
    assert vegetation > 1.4
    assert vegetation > 1.3 * max(ratio[1], ratio[6], ratio[7], ratio[9])
    assert ratio[1] < 0.6  # water absorbs the near infrared
    assert nir[truth == 1].mean() < min(nir[truth == v].mean() for v in VALUES - {1})
    green = image[1].astype(float)
    assert green[truth == 3].mean() < green[truth == 5].mean()  # canopy darker than fields and lawns


def test_canopy_has_crown_texture(arrays):
    image, truth = arrays
    nir = image[3].astype(float)
    step = np.abs(np.diff(nir, axis=1))
    inner = (truth[:, 1:] == truth[:, :-1])

    def roughness(v):
        return step[inner & (truth[:, 1:] == v)].mean()

    assert roughness(3) > 2 * roughness(1)
    assert roughness(3) > 1.5 * roughness(5)


def test_split_extents_are_consistent_in_both_crs(scene):
    left, bottom, right, top = scene.bounds
    split = left + scene.split_column
    assert scene.train_extent == (left, bottom, split, top)
    assert scene.test_extent == (split, bottom, right, top)
    assert (right - split) / (right - left) == pytest.approx(0.25)
    for utm, merc in ((scene.train_extent, scene.train_extent_3857), (scene.test_extent, scene.test_extent_3857)):
        back = transform_bounds("EPSG:3857", "EPSG:26918", *merc, densify_pts=21)
        assert utm[0] <= back[0] and utm[1] <= back[1] and back[2] <= utm[2] and back[3] <= utm[3]
        assert (back[2] - back[0]) > 0.95 * (utm[2] - utm[0]) - 8  # not much smaller either


def test_scene_is_deterministic_for_a_seed():
    a_img, a_lab = render_scene(256, seed=7)
    b_img, b_lab = render_scene(256, seed=7)
    c_img, _ = render_scene(256, seed=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_preview_shows_imagery_and_labels(scene, tmp_path):
    path = write_preview(scene, tmp_path / "preview.png", max_pixels=128)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 2 * height  # three panels side by side


def test_too_small_a_scene_is_refused(tmp_path):
    with pytest.raises(LandcoverError, match="size=64"):
        make_scene(tmp_path, size=64)


# --- report ------------------------------------------------------------------------------------------------

def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.linspace(0, 1, 64).reshape(8, 8))
    return path


def test_report_links_every_figure_table_and_file(tmp_path):
    (tmp_path / "figs").mkdir()
    fig = _png(tmp_path / "figs" / "show batch.png")
    model = tmp_path / "model" / "model.emd"
    model.parent.mkdir()
    model.write_text("{}")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-maps" / "map.html"
    elsewhere.parent.mkdir()
    elsewhere.write_text("<html></html>")
    report = Report("landcover demo <test>", intro="Two steps.", summary={"overall accuracy": 0.91234})
    report.add_step("Export", text="Chips & labels.", figures=[fig], table={"chips": 12, "cell size": 2.0},
                    code="landcover export --cell-size 2", seconds=1.5)
    report.add_step("Evaluate", figures=[("Map", elsewhere.with_suffix(".png"))],
                    tables={"Per class": {"Water": {"precision": 0.9, "recall": 0.8}},
                            "Confusion": [["", "Water"], ["Water", 10]]},
                    files=[model, ("Map page", elsewhere), tmp_path / "absent.tif"])
    page_path = report.write(tmp_path / "report.html")
    page = page_path.read_text()
    assert 'href="figs/show%20batch.png"' in page and 'src="figs/show%20batch.png"' in page
    assert 'href="model/model.emd"' in page
    assert f'href="../{tmp_path.name}-maps/map.html"' in page
    assert "missing figure" in page and "missing: " in page  # absent outputs are shown, not hidden
    assert "landcover demo &lt;test&gt;" in page and "Chips &amp; labels." in page
    assert "0.9123" in page and "<th>precision</th>" in page and "<th>Water</th>" in page
    assert "landcover export --cell-size 2" in page and "1.5 s" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_report_from_sections_can_embed_images(tmp_path):
    fig = _png(tmp_path / "map.png")
    path = write_report(tmp_path, [{"title": "Map", "figures": [fig], "table": [{"class": "Water", "km2": 0.1}]}],
                        embed_images=True)
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert "data:image/png;base64," in page and 'href="map.png"' in page
    assert "<th>class</th><th>km2</th>" in page
