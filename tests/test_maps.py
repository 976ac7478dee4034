"""Maps: the PNG (size, legend, scale bar, decimated reads) and the offline HTML page driven in headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from conftest import write_raster
from landcover import render_map
from landcover.classes import ClassInfo, write_class_table
from landcover.cli import main
from landcover.errors import LandcoverError
from landcover.maps.layers import read_classes, read_imagery

T = from_origin(500000.0, 4300000.0, 1.0, 1.0)
CLASSES = [ClassInfo(1, "Water", (0, 0, 255)), ClassInfo(2, "Forest", (0, 128, 0)), ClassInfo(3, "Road", (255, 0, 0)),
           ClassInfo(9, "Never present", (1, 2, 3))]


@pytest.fixture
def scene(tmp_path):
    """60 x 40 m: Water left, Forest right, a Road block; grey-gradient RGB imagery at 0.5 m with nodata."""
    c = np.ones((40, 60), np.uint8)
    c[:, 30:] = 2
    c[10:20, 40:50] = 3
    c[35:, :5] = 0
    classified = write_raster(tmp_path / "classes.tif", c, nodata=0, transform=T)
    write_class_table(classified, CLASSES)
    yy, xx = np.mgrid[0:80, 0:120]
    img = np.stack([xx * 2, yy * 3, np.full_like(xx, 128)]).astype(np.uint8)
    img[:, :4, :4] = 0
    imagery = write_raster(tmp_path / "img.tif", img, nodata=0, transform=from_origin(500000.0, 4300000.0, 0.5, 0.5))
    return classified, imagery, c


def test_png_size_legend_and_scale_bar(tmp_path, scene):
    classified, imagery, _ = scene
    out = tmp_path / "out" / "map.png"
    result = render_map(classified, imagery=imagery, bands=[3, 1, 2], out=out, title="Test map", size=(640, 420))
    with Image.open(out) as im:
        assert im.size == (640, 420)
        rgb = np.asarray(im.convert("RGB"))
    # Legend texts come from the drawn matplotlib legend: the classes present, named from the class table.
    assert result.legend == ["Water", "Forest", "Road"]
    assert result.details["scale_bar"] == "10 m" and result.title == "Test map"
    # The classes are drawn: a pure-ish blue area (Water over grey imagery) exists in the picture.
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 110) & (rgb[..., 1] < 160)
    assert blue.sum() > 1000


def test_png_without_imagery_and_generated_names(tmp_path):
    a = np.array([[5, 5, 6], [6, 6, 0]] * 20, np.uint8)
    path = write_raster(tmp_path / "plain.tif", a, nodata=0)
    result = render_map(path, out=tmp_path / "plain.png", size=(300, 200))
    assert result.legend == ["5", "6"]
    with Image.open(tmp_path / "plain.png") as im:
        assert im.size == (300, 200)


def test_layers_are_read_decimated(tmp_path):
    big = np.ones((1500, 1000), np.uint8)
    big[:, 500:] = 2
    path = write_raster(tmp_path / "big.tif", big, nodata=0)
    layer = read_classes(str(path), 200)
    assert (layer.grid.height, layer.grid.width) == (200, 133) and layer.index.shape == (200, 133)
    assert layer.grid.bounds == pytest.approx((500000.0, 4298500.0, 501000.0, 4300000.0))
    img = write_raster(tmp_path / "img.tif", np.full((3, 3000, 2000), 7, np.uint8))
    imagery = read_imagery(img, None, layer.grid, 200)
    assert imagery.rgb.shape == (200, 133, 3) and imagery.valid.all()


def test_bad_map_input(tmp_path, scene):
    classified, imagery, _ = scene
    with pytest.raises(LandcoverError, match="out of range"):
        render_map(classified, imagery=imagery, bands=[4, 1, 2], out=tmp_path / "m.png")
    with pytest.raises(LandcoverError, match=r"\.png or \.html or \.htm"):
        render_map(classified, out=tmp_path / "m.jpg")
    assert main(["map", "--classified", str(classified), "--imagery", str(imagery), "--bands", "1", "2",
                 "--out", str(tmp_path / "m.png")]) == 2
    elsewhere = write_raster(tmp_path / "far.tif", np.full((3, 20, 20), 9, np.uint8),
                             transform=from_origin(600000.0, 4300000.0, 0.5, 0.5))
    with pytest.raises(LandcoverError, match="no pixels over the classified raster"):
        render_map(classified, imagery=elsewhere, out=tmp_path / "far.png")
    assert main(["map", "--classified", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.png")]) == 2


def test_messages_name_arguments_as_the_user_gave_them(tmp_path, scene, capsys):
    """``bands=[4, 1, 2]`` from Python, ``--bands 4 1 2`` from the CLI; ``opacity``/``--opacity`` likewise."""
    classified, imagery, _ = scene
    with pytest.raises(LandcoverError, match=re.escape("img.tif: bands=[4, 1, 2]: band 4 out of range")):
        render_map(classified, imagery=imagery, bands=[4, 1, 2], out=tmp_path / "m.png")
    assert main(["map", "--classified", str(classified), "--imagery", str(imagery), "--bands", "4", "1", "2",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "img.tif: --bands 4 1 2: band 4 out of range" in capsys.readouterr().err
    with pytest.raises(LandcoverError, match=r"^opacity=1\.5: must be between 0 and 1"):
        render_map(classified, out=tmp_path / "m.png", opacity=1.5)
    assert main(["map", "--classified", str(classified), "--opacity", "1.5", "--out", str(tmp_path / "m.png")]) == 2
    assert "error: --opacity 1.5: must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
    assert not list(tmp_path.glob("*.png"))


def test_html_is_self_contained(tmp_path, scene):
    classified, imagery, _ = scene
    out = tmp_path / "map.html"
    assert main(["map", "--classified", str(classified), "--imagery", str(imagery), "--out", str(out),
                 "--title", "Offline <map>"]) == 0
    page = out.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing fetched from anywhere
    assert "<script src" not in page and "<link" not in page
    assert "Offline &lt;map&gt;" in page and "data:image/" in page
    for name in ("Water", "Forest", "Road"):
        assert f'<span class="lc-name">{name}</span>' in page
    assert "Never present" not in page


CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1000,700"]


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("chromium and chromium-driver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_html_in_headless_chromium(tmp_path, scene, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    classified, imagery, c = scene
    out = tmp_path / "map.html"
    render_map(classified, imagery=imagery, out=out, title="Chromium test", opacity=0.5)
    browser.get(out.as_uri())
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    canvas = browser.find_element(By.ID, "lc-canvas")
    assert canvas.size["width"] > 300 and canvas.size["height"] > 200

    def screen(col, row):
        return browser.execute_script("return window.landcoverMap.toScreen(arguments[0], arguments[1]);", col, row)

    def pixel(col, row):
        p = screen(col, row)
        return browser.execute_script(
            "var c = document.getElementById('lc-canvas');"
            "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data);",
            int(p["x"]), int(p["y"]))

    forest = (45, 30)  # col, row: Forest
    assert c[forest[1], forest[0]] == 2
    both = pixel(*forest)
    browser.find_element(By.ID, "lc-toggle-classes").click()
    imagery_only = pixel(*forest)
    assert imagery_only != both
    browser.find_element(By.ID, "lc-toggle-classes").click()
    assert pixel(*forest) == both
    browser.find_element(By.ID, "lc-toggle-imagery").click()
    classes_only = pixel(*forest)
    assert classes_only != both
    browser.find_element(By.ID, "lc-toggle-imagery").click()
    # Opacity slider to 100 %: the Forest colour exactly, whatever the imagery underneath.
    browser.find_element(By.ID, "lc-opacity").send_keys(Keys.END)
    assert browser.find_element(By.ID, "lc-opacity-value").text == "100%"
    assert pixel(*forest)[:3] == [0, 128, 0]

    # The class under the cursor, for a Road cell and a Water cell.
    size = canvas.size
    for (col, row), name in (((44, 14), "Road"), ((10, 5), "Water"), ((2, 38), "no data")):
        p = screen(col, row)
        ActionChains(browser).move_to_element_with_offset(canvas, int(p["x"] - size["width"] / 2),
                                                          int(p["y"] - size["height"] / 2)).perform()
        assert browser.find_element(By.ID, "lc-readout").text.startswith(name)

    # Zoom and pan change the view.
    scale = browser.execute_script("return window.landcoverMap.state.scale;")
    browser.find_element(By.ID, "lc-zoom-in").click()
    assert browser.execute_script("return window.landcoverMap.state.scale;") == pytest.approx(scale * 1.5)
    tx = browser.execute_script("return window.landcoverMap.state.tx;")
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(60, 0).release().perform()
    assert browser.execute_script("return window.landcoverMap.state.tx;") == pytest.approx(tx + 60, abs=1)

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#lc-legend .lc-name")]
    assert legend == ["Water", "Forest", "Road"]


@pytest.mark.realdata
def test_real_naip_colour_infrared_map(tmp_path, shared_data):
    tile = shared_data / "chesapeake-naip-1m" / "tile_downsampled"
    out = tmp_path / "naip.png"
    result = render_map(tile / "m_3907833_nw_17_1_lc.tif", imagery=tile / "m_3907833_nw_17_1_naip-new.tif",
                        bands=[4, 1, 2], out=out, size=(500, 400))
    with Image.open(out) as im:
        assert im.size == (500, 400)
    assert result.legend == ["1", "2", "3", "4", "5", "6"]


def test_pixel_aspect_for_non_square_and_geographic_pixels():
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from landcover.maps.static import pixel_aspect
    from landcover.raster import Grid

    assert pixel_aspect(Grid(CRS.from_epsg(26917), Affine(23.6, 0, 0, 0, -29.5, 0), 10, 10)) == pytest.approx(1.25)
    geo = Grid(CRS.from_epsg(4326), Affine(0.01, 0, 10, 0, -0.01, 60.05), 10, 10)  # centred on 60° N
    assert pixel_aspect(geo) == pytest.approx(2.0, rel=1e-3)


def test_imagery_in_another_crs_is_warped_onto_the_map(tmp_path, scene):
    from rasterio.warp import transform_bounds

    classified, _, _ = scene
    layer = read_classes(str(classified), 100)
    left, bottom, right, top = transform_bounds("EPSG:32617", "EPSG:3857", *layer.grid.bounds)
    pad = 20.0
    w, h = 200, 160
    xx = np.tile(np.linspace(0, 250, w), (h, 1))
    img = np.stack([xx, xx, xx]).astype(np.uint8)
    t = from_origin(left - pad, top + pad, (right - left + 2 * pad) / w, (top - bottom + 2 * pad) / h)
    path = write_raster(tmp_path / "merc.tif", img, crs="EPSG:3857", transform=t)
    imagery = read_imagery(path, None, layer.grid, 100)
    assert imagery.valid.all()
    red = imagery.rgb[..., 0]
    assert (np.diff(red.mean(axis=0)) >= 0).all() and red[:, -1].mean() > red[:, 0].mean() + 0.5
