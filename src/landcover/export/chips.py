"""Writing chip pairs: ``images/<9 digits>.<ext>`` and ``labels/<9 digits>.<ext>``, on a small thread pool.

TIFF chips are plain GeoTIFFs (uncompressed, stripped: chips are small and read whole, so tiling and
compression only cost time) carrying CRS, transform and nodata. PNG and JPEG hold no georeferencing, so each
chip gets an Esri world file (``.pgw`` / ``.jgw``) and GDAL's ``.aux.xml`` with the CRS. Label chips are lossless:
with JPEG image chips they are written as PNG.
"""

from __future__ import annotations

import errno
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

#: --format → (GDAL driver, image extension, label extension)
FORMATS = {"tif": ("GTiff", ".tif", ".tif"), "png": ("PNG", ".png", ".png"), "jpg": ("JPEG", ".jpg", ".png")}
FORMAT_ALIASES = {"tif": "tif", "tiff": "tif", "gtiff": "tif", "png": "png", "jpg": "jpg", "jpeg": "jpg"}
#: Esri's names for the chip formats (recorded in the export .emd).
ESRI_FORMAT_NAMES = {"tif": "TIFF", "png": "PNG", "jpg": "JPEG"}
WORLD_FILE_EXT = {".png": ".pgw", ".jpg": ".jgw"}
JPEG_QUALITY = 95


def chip_name(index: int) -> str:
    return f"{index:09d}"


def chip_paths(out: Path, index: int, fmt: str) -> tuple[Path, Path]:
    _, img_ext, lab_ext = FORMATS[fmt]
    return out / "images" / f"{chip_name(index)}{img_ext}", out / "labels" / f"{chip_name(index)}{lab_ext}"


def chip_files(path: Path) -> list[Path]:
    """A chip and the sidecars it may have (GDAL's .aux.xml, a world file)."""
    files = [path, Path(str(path) + ".aux.xml")]
    if path.suffix in WORLD_FILE_EXT:
        files.append(path.with_suffix(WORLD_FILE_EXT[path.suffix]))
    return files


def world_file_text(transform: Affine) -> str:
    """An Esri world file: pixel sizes and rotations, then the centre of the upper-left pixel."""
    t = transform
    x = t.c + t.a / 2 + t.b / 2
    y = t.f + t.d / 2 + t.e / 2
    return "\n".join(repr(float(v)) for v in (t.a, t.d, t.b, t.e, x, y)) + "\n"


class ChipWriter:
    """Writes chip pairs on ``workers`` threads (GDAL releases the GIL while encoding and writing), or in the
    calling thread with ``workers=0``.

    At most a few chips per worker are queued, so memory stays flat. :attr:`written` lists the indices of
    completed pairs, which :meth:`remove_written` deletes when an export fails.
    """

    def __init__(self, out: Path, fmt: str, crs: CRS, dtype: str, count: int, nodata: float | None,
                 workers: int):
        self.out, self.fmt, self.crs, self.dtype, self.count, self.nodata = out, fmt, crs, dtype, count, nodata
        self.driver = FORMATS[fmt][0]
        self.written: list[int] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="landcover-chips") if workers > 0 else None
        self._pending: deque[tuple[int, Future]] = deque()
        self._limit = 4 * max(1, workers)
        self._wkt = crs.to_wkt() if crs else None  # one conversion instead of one per chip
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)

    def submit(self, index: int, image: np.ndarray, label: np.ndarray, transform: Affine) -> None:
        """Queue a pair; ``image`` is (bands, h, w), ``label`` (h, w) uint8. Raises a failed earlier write."""
        if self._pool is None:
            self.written.append(index)  # listed first, so a failed write's partial files are removed too
            self._write_pair(index, image, label, transform)
            return
        while len(self._pending) >= self._limit:
            self._finish_one()
        self._pending.append((index, self._pool.submit(self._write_pair, index, image, label, transform)))

    def _finish_one(self) -> None:
        index, fut = self._pending.popleft()
        self.written.append(index)
        fut.result()

    def flush(self) -> None:
        """Wait for every queued pair."""
        while self._pending:
            self._finish_one()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop writing: let running writes end, drop queued ones, then delete every pair this run wrote."""
        for index, fut in self._pending:
            if fut.cancel():
                continue
            self.written.append(index)
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - the export is failing anyway; its files are removed below
                pass
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.remove_written()

    def remove_written(self) -> None:
        for index in self.written:
            for p in chip_paths(self.out, index, self.fmt):
                for f in chip_files(p):
                    f.unlink(missing_ok=True)
        self.written.clear()

    def _write_pair(self, index: int, image: np.ndarray, label: np.ndarray, transform: Affine) -> None:
        img_path, lab_path = chip_paths(self.out, index, self.fmt)
        h, w = label.shape
        opts = {}
        if self.driver == "GTiff" and self.count == 4 and self.dtype == "uint8":
            # GDAL would write 4 bytes per pixel as RGBA; the fourth band is data (e.g. near-infrared).
            opts["photometric"] = "MINISBLACK"
        if self.driver == "JPEG":
            opts["quality"] = JPEG_QUALITY
        self._write(img_path, image, h, w, self.count, self.dtype, self.nodata, transform, opts)
        self._write(lab_path, label[None], h, w, 1, "uint8", 0, transform, {})

    def _write(self, path: Path, data: np.ndarray, h: int, w: int, count: int, dtype: str, nodata, transform,
               opts: dict) -> None:
        driver = "GTiff" if path.suffix == ".tif" else ("PNG" if path.suffix == ".png" else "JPEG")
        with rasterio.open(path, "w", driver=driver, width=w, height=h, count=count, dtype=dtype, crs=self._wkt,
                           transform=transform, nodata=nodata, **opts) as ds:
            ds.write(data)
        if driver == "GTiff":
            # GDAL does not raise when libtiff's writes fail (a full disk, a file-size limit): the chip is then
            # shorter than its uncompressed pixels, and the export must stop instead of reporting success.
            size = path.stat().st_size
            if size < h * w * count * np.dtype(dtype).itemsize:
                # an OSError: the CLI names the cause from GDAL's messages (full disk, file-size limit)
                raise OSError(errno.EIO, f"chip written incomplete ({size} bytes): the disk may be full", str(path))
        if path.suffix in WORLD_FILE_EXT:
            path.with_suffix(WORLD_FILE_EXT[path.suffix]).write_text(world_file_text(transform))
