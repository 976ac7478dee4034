"""arcgis.learn's prepare_data / show_batch / export keywords for pixel classification (arcgis-learn.md §1-2):
extract_bands, rgb_bands, norm_pct, stratify, dataset_type; show_batch's rgb_bands, data_loader, imsize;
export_training_data's metadata_format."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import landcover.data.prepare as prepare_mod
from landcover.cli import main
from landcover.data import prepare_data
from landcover.data.show import to_rgb
from landcover.data.split import stratified_split
from landcover.errors import LandcoverError
from landcover.export import export_training_data
from tiles_fixture import write_export

NAMES = ["Red", "Green", "Blue", "NearInfrared"]


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def naip(tmp_path_factory):
    """A 4-band (R, G, B, NIR) export with band statistics."""
    return write_export(tmp_path_factory.mktemp("naip") / "ex", n_chips=10, bands=4, seed=3)


@pytest.fixture(scope="module")
def naip_nostats(tmp_path_factory):
    """The same without band statistics in the metadata (statistics come from the chips)."""
    return write_export(tmp_path_factory.mktemp("nostats") / "ex", n_chips=20, bands=4, band_stats=False, seed=4)


# --- extract_bands -------------------------------------------------------------------------------------------------

def test_extract_bands_selects_names_statistics_and_batch_channels(naip):
    full = prepare_data(naip, batch_size=2, val_split_pct=0.2, transforms=False)
    assert full.extract_bands == [0, 1, 2, 3] and full.band_names == NAMES
    assert "extract_bands" not in repr(full)

    data = prepare_data(naip, batch_size=2, val_split_pct=0.2, transforms=False, extract_bands=[3, 0, 1])
    assert data.extract_bands == [3, 0, 1]
    assert data.band_names == ["NearInfrared", "Red", "Green"] and data.chip_band_names == NAMES
    assert len(data.mean) == len(data.std) == 3
    # the export's statistics of the chosen bands, computed here from every chip's pixels
    px = np.concatenate([read(p).reshape(4, -1) for p in sorted((naip / "images").glob("*.tif"))], axis=1)
    np.testing.assert_allclose(data.mean, px.mean(axis=1)[[3, 0, 1]], rtol=1e-9)
    np.testing.assert_allclose(data.std, px.std(axis=1)[[3, 0, 1]], rtol=1e-6)
    assert "3 of 4 bands ['NearInfrared', 'Red', 'Green'] (extract_bands=[3, 0, 1])" in repr(data)

    x, _ = next(iter(data.valid_dl))
    assert x.shape == (2, 3, 64, 64)
    chip = read(data.valid_ds.pairs[0][0]).astype(np.float32)[[3, 0, 1]]
    np.testing.assert_allclose(x[0].numpy(), (chip - data.mean[:, None, None]) / data.std[:, None, None],
                               rtol=1e-5, atol=1e-5)
    xt, _ = next(iter(data.train_dl))
    assert xt.shape == (2, 3, 64, 64)


def test_extract_bands_statistics_from_chips(naip_nostats):
    data = prepare_data(naip_nostats, batch_size=2, extract_bands=[2, 3])
    px = np.concatenate([read(img).reshape(4, -1).astype(np.float64) for img, _ in data.train_ds.pairs], axis=1)
    np.testing.assert_allclose(data.mean, px.mean(axis=1)[[2, 3]], rtol=1e-9)
    np.testing.assert_allclose(data.std, px.std(axis=1)[[2, 3]], rtol=1e-6)
    assert data.band_names == ["Blue", "NearInfrared"] and data.valid_ds[0][0].shape == (2, 64, 64)


@pytest.mark.parametrize("bands, reason", [
    ([4], "band 4 is out of range"),
    ([-1, 0], "band -1 is out of range"),
    ([0, 2, 0], "band 0 is given twice"),
    ([], "the list is empty"),
    ([1.5], "is not a band index"),
    ("red", "give a list of 0-based band indices"),
])
def test_extract_bands_refused_in_one_line(naip, bands, reason):
    with pytest.raises(LandcoverError) as err:
        prepare_data(naip, batch_size=2, extract_bands=bands)
    text = one_line(err)
    assert reason in text and "the chips have 4 bands" in text


# --- rgb_bands -----------------------------------------------------------------------------------------------------

def test_rgb_bands_index_the_extracted_bands(naip):
    assert prepare_data(naip, batch_size=2).rgb_bands == [0, 1, 2]  # named Red, Green, Blue
    # NIR, R, G: no blue band, so the first three (a false-colour view)
    assert prepare_data(naip, batch_size=2, extract_bands=[3, 0, 1]).rgb_bands == [0, 1, 2]
    assert prepare_data(naip, batch_size=2, extract_bands=[3, 2, 1, 0]).rgb_bands == [3, 2, 1]
    assert prepare_data(naip, batch_size=2, extract_bands=[3, 0, 1], rgb_bands=[1, 2, 0]).rgb_bands == [1, 2, 0]
    for bad, reason in (([3, 0, 1], "band 3 is out of range"), ([0, 1], "2 indices, not 3")):
        with pytest.raises(LandcoverError) as err:
            prepare_data(naip, batch_size=2, extract_bands=[3, 0, 1], rgb_bands=bad)
        assert reason in one_line(err) and "after extract_bands" in str(err.value)


# --- show_batch ----------------------------------------------------------------------------------------------------

def shown_images(fig) -> list[np.ndarray]:
    """The chip image (not the label overlay) of every panel."""
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def matches(image: np.ndarray, candidates: list[np.ndarray]) -> bool:
    return any(c.shape == image.shape and np.allclose(image, c, atol=1e-3) for c in candidates)


def test_show_batch_validation_chips_and_rgb_bands(naip):
    data = prepare_data(naip, batch_size=2, val_split_pct=0.2, extract_bands=[3, 0, 1])
    chips = [read(img)[[3, 0, 1]].astype(np.float32) for img, _ in data.valid_ds.pairs]
    train_chips = [read(img)[[3, 0, 1]].astype(np.float32) for img, _ in data.train_ds.pairs]

    fig = data.show_batch(rows=1, ncols=3, data_loader="validation")
    images = shown_images(fig)
    assert len(images) == 2  # the 2 validation chips, whole and unaugmented
    expected = [to_rgb(c, [0, 1, 2]) for c in chips]
    assert all(matches(im, expected) for im in images)
    assert not any(matches(im, [to_rgb(c, [0, 1, 2]) for c in train_chips]) for im in images)

    # rgb_bands for this call: blue channel = extracted band 0 (NIR), green = 1 (red), red = 2 (green)
    swapped = shown_images(data.show_batch(rows=1, ncols=3, data_loader="VALIDATION", rgb_bands=[2, 1, 0]))
    assert all(matches(im, [to_rgb(c, [2, 1, 0]) for c in chips]) for im in swapped)
    assert not any(matches(im, expected) for im in swapped)
    assert data.rgb_bands == [0, 1, 2]  # the data's own choice is unchanged


def test_show_batch_training_and_imsize(naip):
    data = prepare_data(naip, batch_size=2, val_split_pct=0.2, transforms=False)
    chips = [to_rgb(read(img).astype(np.float32), [0, 1, 2]) for img, _ in data.train_ds.pairs]
    fig = data.show_batch(rows=2, ncols=2)
    assert all(matches(im, chips) for im in shown_images(fig))  # training chips (no augmentation here)
    assert tuple(fig.get_size_inches()) == pytest.approx((2 * 3.0, 2 * 3.0 + 0.8))  # default: 3 in a panel
    fig = data.show_batch(rows=2, ncols=2, imsize=5)
    assert tuple(fig.get_size_inches()) == pytest.approx((2 * 5.0, 2 * 5.0 + 0.8))


@pytest.mark.parametrize("kwargs, reason", [
    ({"data_loader": "test"}, "data_loader='test': give 'training' or 'validation'"),
    ({"imsize": 0}, "imsize=0"),
    ({"imsize": float("nan")}, "imsize=nan"),
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"rows": 0}, "rows=0"),
    ({"ncols": 2.5}, "ncols=2.5"),
    ({"rgb_bands": [0, 1, 4]}, "band 4 is out of range"),
    ({"rgb_bands": [0, 1]}, "2 indices, not 3"),
])
def test_show_batch_bad_values_in_one_line(naip, kwargs, reason):
    data = prepare_data(naip, batch_size=2)
    with pytest.raises(LandcoverError) as err:
        data.show_batch(**kwargs)
    assert reason in one_line(err)


# --- norm_pct ------------------------------------------------------------------------------------------------------

@pytest.fixture
def count_stat_reads(monkeypatch):
    """Records the image chips read to compute normalization statistics."""
    reads: list = []
    real = prepare_mod.read_chip

    def counting(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "read_chip", counting)
    return reads


@pytest.fixture(scope="module")
def many_chips(tmp_path_factory):
    """340 small chips without band statistics: 306 training chips, above arcgis.learn's 300."""
    return write_export(tmp_path_factory.mktemp("many") / "ex", n_chips=340, size=16, band_stats=False, seed=5)


def test_norm_pct_chooses_the_chips_read_for_statistics(many_chips, count_stat_reads):
    data = prepare_data(many_chips, batch_size=2)
    assert len(count_stat_reads) == 256 and len(data.train_ds) == 306  # default: at most 256
    count_stat_reads.clear()
    data = prepare_data(many_chips, batch_size=2, norm_pct=0.3, extract_bands=[1])
    assert len(count_stat_reads) == 92  # round(0.3 * 306)
    # the statistics are those of exactly the chips read, of the extracted band
    px = np.concatenate([read(p)[1].ravel().astype(np.float64) for p in count_stat_reads])
    np.testing.assert_allclose(data.mean, [px.mean()], rtol=1e-9)
    np.testing.assert_allclose(data.std, [px.std()], rtol=1e-6)
    count_stat_reads.clear()
    prepare_data(many_chips, batch_size=2, norm_pct=1)
    assert len(count_stat_reads) == 306


def test_norm_pct_below_300_chips_reads_all(naip_nostats, naip, count_stat_reads, monkeypatch):
    prepare_data(naip_nostats, batch_size=2, norm_pct=0.1)
    assert len(count_stat_reads) == 18  # fewer than 300 training chips: all of them, as arcgis.learn
    count_stat_reads.clear()
    monkeypatch.setattr(prepare_mod, "NORM_PCT_ALL_BELOW", 10)
    prepare_data(naip_nostats, batch_size=2, norm_pct=0.01)
    assert len(count_stat_reads) == 1  # at least one chip
    count_stat_reads.clear()
    prepare_data(naip, batch_size=2, norm_pct=0.5)
    assert count_stat_reads == []  # the export's statistics are used: no chip is read for them


@pytest.mark.parametrize("pct", [0, -0.2, 1.5, float("nan"), "0.3", True])
def test_norm_pct_out_of_range_in_one_line(naip, pct):
    with pytest.raises(LandcoverError) as err:
        prepare_data(naip, batch_size=2, norm_pct=pct)
    assert f"norm_pct={pct!r}" in one_line(err) and "at most 1" in str(err.value)


# --- stratify ------------------------------------------------------------------------------------------------------

RARE_CHIPS = (3, 11, 17)


@pytest.fixture(scope="module")
def rare_class(tmp_path_factory):
    """20 chips of background (1) and fields (2); wetland (5) is in only 3 of them."""
    folder = write_export(tmp_path_factory.mktemp("rare") / "ex", n_chips=20, values=(1, 2, 5),
                          names=("Background", "Field", "Wetland"), seed=6)
    for i in range(20):
        label = np.ones((1, 64, 64), np.uint8)
        label[:, 10:30, 10:40] = 2
        if i in RARE_CHIPS:
            label[:, 40:60, 40:60] = 5
        with rasterio.open(folder / "labels" / f"{i:09d}.tif", "r+") as ds:
            ds.write(label)
    return folder


def rare_in(pairs) -> int:
    return sum(int(img.stem) in RARE_CHIPS for img, _ in pairs)


def test_stratify_puts_a_rare_class_in_validation(rare_class):
    random_misses = 0
    for seed in range(6):
        data = prepare_data(rare_class, batch_size=2, seed=seed, stratify=True)
        assert len(data.valid_ds) == 2 and len(data.train_ds) == 18
        assert rare_in(data.valid_ds.pairs) >= 1 and rare_in(data.train_ds.pairs) >= 1
        assert not set(data.valid_ds.pairs) & set(data.train_ds.pairs)
        random_misses += rare_in(prepare_data(rare_class, batch_size=2, seed=seed).valid_ds.pairs) == 0
    assert random_misses > 0  # the default random split leaves it out of validation for some seeds


def test_stratify_is_reproducible(rare_class):
    splits = [prepare_data(rare_class, batch_size=2, seed=s, stratify=True).valid_ds.pairs for s in (1, 1, 2, 3)]
    assert splits[0] == splits[1]
    assert len({tuple(s) for s in splits[1:]}) > 1


def test_stratified_split_shares_and_singletons():
    sets = [frozenset({1})] * 20 + [frozenset({1, 2})] * 10
    for seed in range(4):
        valid = stratified_split(sets, 6, seed)
        # each stratum gives its share: 4 of the 20 {1} chips, 2 of the 10 {1, 2} chips
        assert len(valid) == 6 and sum(i >= 20 for i in valid) == 2
    # Shares alone put two {1} chips in validation; classes 4 (2 chips) and 6 (3 chips) are then moved in by
    # swaps, each keeping a training chip; class 9 (a single chip, 15) stays in training.
    sets = ([frozenset({1})] * 15 + [frozenset({1, 9}), frozenset({1, 4}), frozenset({1, 4, 6})]
            + [frozenset({1, 6})] * 2)
    with_4, with_6 = {16, 17}, {17, 18, 19}
    for seed in range(8):
        valid = stratified_split(sets, 2, seed)
        assert len(valid) == 2 and 15 not in valid
        assert valid & with_4 and with_4 - valid and valid & with_6 and with_6 - valid


def test_stratified_split_keeps_the_asked_size():
    """Chips that each hold a class no other chip has cannot be swapped (a singleton stays in training); the
    split must still give validation its chips (it used to come back empty, or one short)."""
    assert len(stratified_split([frozenset({1}), frozenset({2})], 1, 0)) == 1
    rng = np.random.default_rng(0)
    for seed in range(30):
        sets = [frozenset(rng.choice(8, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(12)]
        n_valid = int(rng.integers(1, 12))
        valid = stratified_split(sets, n_valid, seed)
        assert len(valid) == n_valid and valid <= set(range(12))
    assert len(stratified_split([frozenset({v}) for v in range(100)], 99, 0)) == 99


def test_stratify_must_be_a_bool(naip):
    with pytest.raises(LandcoverError) as err:
        prepare_data(naip, batch_size=2, stratify="yes")
    assert "stratify='yes'" in one_line(err)


# --- dataset_type / metadata_format --------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset_type", [None, "Classified_Tiles", "classified_tiles", "Classified Tiles"])
def test_dataset_type_classified_tiles_accepted(naip, dataset_type):
    assert prepare_data(naip, batch_size=2, dataset_type=dataset_type).c == 4


@pytest.mark.parametrize("dataset_type", ["PASCAL_VOC_rectangles", "RCNN_Masks", "Labeled_Tiles", 3])
def test_dataset_type_other_refused(naip, dataset_type):
    with pytest.raises(LandcoverError) as err:
        prepare_data(naip, batch_size=2, dataset_type=dataset_type)
    assert "trains pixel classifiers on Classified_Tiles only" in one_line(err)


@pytest.fixture
def small_scene(make_raster):
    rng = np.random.default_rng(0)
    imagery = make_raster("img.tif", rng.integers(0, 255, (4, 64, 64)).astype("uint8"))
    label = np.ones((64, 64), np.uint8)
    label[20:50, 10:40] = 2
    labels = make_raster("lab.tif", label)
    return imagery, labels


@pytest.mark.parametrize("fmt", ["Classified_Tiles", "CLASSIFIED_TILES", None])
def test_metadata_format_classified_tiles(small_scene, tmp_path, fmt):
    out = tmp_path / "chips"
    summary = export_training_data(*small_scene, out, tile_size=32, stride=32, progress=False, metadata_format=fmt)
    assert summary.chips == 4 and (out / "esri_accumulated_stats.json").is_file()


@pytest.mark.parametrize("fmt, reason", [
    ("PASCAL_VOC_rectangles", "PASCAL_VOC_rectangles is an ArcGIS format landcover does not write"),
    ("rcnn_masks", "RCNN_Masks is an ArcGIS format landcover does not write"),
    ("GeoJSON", "not a metadata format"),
])
def test_metadata_format_other_refused(small_scene, tmp_path, fmt, reason):
    out = tmp_path / "chips"
    with pytest.raises(LandcoverError) as err:
        export_training_data(*small_scene, out, tile_size=32, progress=False, metadata_format=fmt)
    assert reason in one_line(err) and "exports Classified_Tiles only" in str(err.value)
    assert not out.exists()


def test_cli_metadata_format(small_scene, tmp_path, capsys):
    imagery, labels = small_scene
    base = ["export", "--quiet", "--imagery", str(imagery), "--labels", str(labels), "--tile-size", "32"]
    assert main([*base, "--out", str(tmp_path / "a"), "--metadata-format", "Classified_Tiles"]) == 0
    assert (tmp_path / "a" / "map.txt").is_file()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--metadata-format", "KITTI_rectangles"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exports Classified_Tiles only" in err
