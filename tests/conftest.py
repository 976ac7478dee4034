"""Shared fixtures: rasters written with rasterio in real projected CRSs, and the shared real data."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch with ``n`` threads inside the block. Tests use one: on a shared 2-core machine two OpenMP
    threads spin-wait against other processes and run several times slower than one."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent (fresh clones without it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def write_raster(path, array, crs="EPSG:32617", transform=None, nodata=None, colormap=None, **kw) -> Path:
    """Write a (bands, h, w) or (h, w) array as a GeoTIFF; returns the path."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if transform is None:
        transform = from_origin(500000.0, 4300000.0, 1.0, 1.0)
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=array.dtype, crs=crs, transform=transform, nodata=nodata, **kw)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
        if colormap:
            ds.write_colormap(1, colormap)
    return Path(path)


@pytest.fixture
def make_raster(tmp_path):
    """Factory: ``make_raster(name, array, **profile)`` writes a GeoTIFF under tmp_path."""

    def _make(name, array, **kw):
        return write_raster(tmp_path / name, array, **kw)

    return _make


@pytest.fixture(scope="session", autouse=True)
def no_weight_downloads(tmp_path_factory):
    """No test downloads pretrained weights: every model built without ``pretrained=`` would otherwise fetch
    ImageNet weights. ``LANDCOVER_OFFLINE=1`` makes that default start from random weights at once and quietly
    (no DNS wait, no warning line in the output tests compare), and the cache is a temporary folder, so a
    user's cached weights never leak into a test. tests/test_pretrained.py lifts both for its loopback server.
    Set in ``os.environ``, so the CLI and subprocesses the tests start inherit them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LANDCOVER_OFFLINE", "1")
        mp.setenv("LANDCOVER_CACHE", str(tmp_path_factory.mktemp("landcover-cache")))
        # torch.compile's (bf16-compiled backend) cache goes to /tmp/torchinductor_<user> by default, where it
        # stays after the run (~370 MB): inside the session's temporary tree it goes with it
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("torchinductor")))
        # ... except its precompiled headers (~300 MB), which torch keeps in <temp>/torchinductor_<user> whatever
        # that variable says (torch/_inductor/codecache.py, _HEADER_DIR): removed after the run unless a user's
        # own compiles had made the folder before it
        headers = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
        existed = headers.exists()
        yield
        if not existed:
            shutil.rmtree(headers, ignore_errors=True)
