"""prepare_data: ArcGIS-style Classified Tiles folders, normalization, label mapping, splits, merges, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from landcover.data import prepare_data
from landcover.data.transforms import Augment, dihedral, random_crop
from landcover.errors import LandcoverError
from tiles_fixture import WKT_UTM18, write_export


def _pixels(folder, nodata=None):
    """All image pixels of an export as (bands, n), without nodata pixels — computed independently."""
    chunks = []
    for p in sorted((folder / "images").glob("*.tif")):
        with rasterio.open(p) as ds:
            a = ds.read().reshape(ds.count, -1).astype(np.float64)
        if nodata is not None:
            a = a[:, ~np.all(a == nodata, axis=0)]
        chunks.append(a)
    return np.concatenate(chunks, axis=1)


def test_arcgis_export_loads(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=10, values=(1, 3, 7))
    data = prepare_data(folder, batch_size=4, val_split_pct=0.2)
    assert [c.value for c in data.classes] == [1, 3, 7]
    assert [c.name for c in data.classes] == ["Water", "Trees", "Buildings"]
    assert data.c == 4 and data.chip_size == 64 and data.input_dtype == "uint8"
    assert data.band_names == ["Red", "Green", "Blue", "NearInfrared"]
    assert data.cell_size == (1.0, 1.0) and data.crs_wkt == WKT_UTM18
    # z-score statistics come from BandStatsState: mean = M1, std = sqrt(M2 / Num)
    px = _pixels(folder)
    np.testing.assert_allclose(data.mean, px.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(data.std, px.std(axis=1), rtol=1e-6)
    assert (len(data.train_ds.chips), len(data.valid_ds)) == (8, 2)
    # map.txt's backslashes resolve, the .tfw world files are not taken for chips
    assert all(img.suffix == ".tif" and img.is_file() for img, _ in data.train_ds.pairs)
    # class pixel counts come from scanning every label chip
    labels = np.concatenate([rasterio.open(p).read(1).ravel() for p in sorted((folder / "labels").glob("*.tif"))])
    assert data.class_pixel_counts == {v: int((labels == v).sum()) for v in (1, 3, 7)}

    x, y = next(iter(data.valid_dl))
    assert x.dtype == torch.float32 and x.shape == (2, 4, 64, 64) and y.dtype == torch.int64
    # class values 1, 3, 7 map to contiguous indices 1, 2, 3
    img_path, lab_path = data.valid_ds.pairs[0]
    with rasterio.open(lab_path) as ds:
        raw = ds.read(1)
    expected = np.select([raw == 1, raw == 3, raw == 7], [1, 2, 3], 0)
    np.testing.assert_array_equal(y[0].numpy(), expected)
    with rasterio.open(img_path) as ds:
        pix = ds.read().astype(np.float32)
    np.testing.assert_allclose(x[0].numpy(), (pix - data.mean[:, None, None]) / data.std[:, None, None],
                               rtol=1e-5, atol=1e-5)


def test_split_is_seeded(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=20)
    a = prepare_data(folder, batch_size=2, seed=1)
    b = prepare_data(folder, batch_size=2, seed=1)
    c = prepare_data(folder, batch_size=2, seed=2)
    assert a.valid_ds.pairs == b.valid_ds.pairs != c.valid_ds.pairs
    assert not set(a.valid_ds.pairs) & set(a.train_ds.pairs)


def test_stats_from_chips_and_nodata(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=6, band_stats=False, nodata=0, nodata_corner=10)
    data = prepare_data(folder, batch_size=2, val_split_pct=0.2)
    assert data.nodata == 0
    # computed from the training chips, nodata pixels excluded
    train_px = np.concatenate([
        (lambda a: a[:, ~np.all(a == 0, axis=0)])(rasterio.open(img).read().reshape(4, -1).astype(np.float64))
        for img, _ in data.train_ds.pairs], axis=1)
    np.testing.assert_allclose(data.mean, train_px.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(data.std, train_px.std(axis=1), rtol=1e-6)
    x, y = data.valid_ds[0]
    # nodata pixels read as the band mean (0 after normalizing) and are not labelled
    assert torch.all(x[:, :10, :10] == 0) and torch.all(y[:10, :10] == 0)
    assert torch.all(y[10:, 10:] > 0)


def test_png_chips_without_map_txt(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=5, bands=3, chip_format="png", colors=True)
    (folder / "map.txt").unlink()
    data = prepare_data(folder, batch_size=2, val_split_pct=0.2)
    assert len(data.train_ds) + len(data.valid_ds) == 5
    assert data.classes[0].color == (0, 0, 255)  # colours from the .emd when present
    assert data.cell_size == (1.0, 1.0)
    assert data.valid_ds[0][0].shape == (3, 64, 64)


def test_chip_size_crops_training_chips(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=6)
    data = prepare_data(folder, batch_size=2, chip_size=48)
    assert data.chip_size == 48
    assert next(iter(data.train_dl))[0].shape == (2, 4, 48, 48)
    assert data.valid_ds[0][0].shape == (4, 64, 64)  # validation reads whole chips
    assert prepare_data(folder, batch_size=2, chip_size=500).chip_size == 64  # clamped to the export


def test_class_mapping_renames(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=4)
    data = prepare_data(folder, batch_size=2, val_split_pct=0.25, class_mapping={"3": "Forest"})
    assert [c.name for c in data.classes] == ["Water", "Forest", "Buildings"]
    with pytest.raises(LandcoverError, match="class 9 is not in the training data"):
        prepare_data(folder, batch_size=2, val_split_pct=0.25, class_mapping={9: "x"})


def test_folders_merge_when_they_agree(tmp_path):
    a = write_export(tmp_path / "a", n_chips=4, seed=1)
    b = write_export(tmp_path / "b", n_chips=6, seed=2)
    data = prepare_data([a, b], batch_size=2)
    assert len(data.train_ds) + len(data.valid_ds) == 10
    px = np.concatenate([_pixels(a), _pixels(b)], axis=1)  # pooled BandStatsState = stats of all pixels
    np.testing.assert_allclose(data.mean, px.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(data.std, px.std(axis=1), rtol=1e-6)


def test_folders_that_disagree_are_refused(tmp_path):
    a = write_export(tmp_path / "a", n_chips=4)
    b = write_export(tmp_path / "b", n_chips=4, bands=3)
    with pytest.raises(LandcoverError, match="3 bands, but .* has 4"):
        prepare_data([a, b], batch_size=2)
    c = write_export(tmp_path / "c", n_chips=4, names=("Water", "Grass", "Buildings"))
    with pytest.raises(LandcoverError, match="class 3 is 'Grass' here but 'Trees'"):
        prepare_data([a, c], batch_size=2)
    d = write_export(tmp_path / "d", n_chips=4, size=32)
    with pytest.raises(LandcoverError, match="32x32 pixels, but .* is 64x64"):
        prepare_data([a, d], batch_size=2)


def test_label_value_outside_classes_names_value_and_chip(tmp_path):
    folder = write_export(tmp_path / "ex", n_chips=4)
    bad = folder / "labels" / "000000002.tif"
    with rasterio.open(bad, "r+") as ds:
        lab = ds.read(1)
        lab[5, 5] = 12
        ds.write(lab, 1)
    with pytest.raises(LandcoverError, match=r"000000002\.tif: label value 12 is not one of the classes"):
        prepare_data(folder, batch_size=2)


@pytest.mark.parametrize("problem, message", [
    ("no_images", "no images/ folder"),
    ("no_metadata", "metadata is missing"),
    ("pascal", "exported as PASCAL_VOC_rectangles"),
    ("single_class", "single class"),
    ("batch", "larger than the 3 training chips"),
    ("mixed_sizes", "all chips must have the same size"),
])
def test_bad_folders(tmp_path, problem, message):
    folder = write_export(tmp_path / "ex", n_chips=4, values=(1, 2) if problem == "single_class" else (1, 3, 7),
                          names=("A", "B") if problem == "single_class" else ("Water", "Trees", "Buildings"))
    batch = 2
    if problem == "no_images":
        (folder / "images").rename(folder / "imgs")
    elif problem == "no_metadata":
        (folder / "esri_accumulated_stats.json").unlink()
        (folder / "esri_model_definition.emd").unlink()
    elif problem == "pascal":
        stats = json.loads((folder / "esri_accumulated_stats.json").read_text())
        stats["MetaDataMode"] = "PASCAL_VOC_rectangles"
        (folder / "esri_accumulated_stats.json").write_text(json.dumps(stats))
    elif problem == "single_class":
        for p in (folder / "labels").glob("*.tif"):
            with rasterio.open(p, "r+") as ds:
                ds.write(np.ones((1, 64, 64), np.uint8))
    elif problem == "batch":
        batch = 8
    elif problem == "mixed_sizes":
        with rasterio.open(folder / "images" / "000000001.tif", "w", driver="GTiff", width=32, height=32,
                           count=4, dtype="uint8") as ds:
            ds.write(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(LandcoverError, match=message) as err:
        prepare_data(folder, batch_size=batch)
    assert "\n" not in str(err.value)


def test_dihedral_transforms_keep_image_and_label_aligned():
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    label = torch.arange(25).reshape(5, 5)
    seen = set()
    for k in range(8):
        img, lab = dihedral(image, label, k)
        assert torch.equal(img[0], lab.float())  # band 0 equals the label: alignment kept
        seen.add(tuple(lab.flatten().tolist()))
    assert len(seen) == 8
    torch.manual_seed(0)
    for _ in range(5):
        img, lab = Augment(brightness=0, contrast=1)(image, label)
        assert torch.equal(img[0], lab.float())
    img, lab = random_crop(image, label, 3)
    assert img.shape == (2, 3, 3) and torch.equal(img[0], lab.float())


def test_show_batch(tmp_path):
    data = prepare_data(write_export(tmp_path / "ex", n_chips=6), batch_size=2)
    fig = data.show_batch(rows=2)
    assert len([ax for ax in fig.axes if ax.images]) == 5  # 5 training chips for a 2 x 3 grid
    assert {t.get_text() for t in fig.legends[0].get_texts()} <= {"1 Water", "3 Trees", "7 Buildings"}
    fig.savefig(tmp_path / "batch.png")
    assert (tmp_path / "batch.png").stat().st_size > 1000
