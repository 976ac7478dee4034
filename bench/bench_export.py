"""Export throughput against a plain rasterio loop over the same chips, side by side in one run.

    python bench/bench_export.py              # 8000 x 8000, 4-band uint8, tile 256, stride 256, TIFF, all tiles
    python bench/bench_export.py --size 4000  # a quicker run

Generates the imagery (a smooth random field, deflate-compressed and tiled like real imagery) and a label
raster on the same grid in a temporary folder, then times (a) ``export_training_data`` and (b) a loop that
reads each chip window from the imagery and the labels and writes both chips as GeoTIFF with rasterio. Prints
MP/s of imagery for each (best of --repeat runs, alternating) and the ratio (a)/(b). Machines are shared and
noisy: compare the ratio, repeat runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.export import export_training_data
from landcover.raster import GDAL_ENV, iter_windows


def make_inputs(folder: Path, size: int, bands: int = 4) -> tuple[Path, Path]:
    """A size x size imagery raster (bands x uint8) and a uint8 label raster with 6 classes, block by block."""
    rng = np.random.default_rng(42)
    img, lab = folder / "imagery.tif", folder / "labels.tif"
    common = dict(driver="GTiff", width=size, height=size, crs="EPSG:32618",
                  transform=from_origin(500000.0, 4500000.0, 1.0, 1.0), tiled=True, blockxsize=256,
                  blockysize=256, compress="deflate")
    # PHOTOMETRIC=MINISBLACK: four bands of multispectral imagery (GDAL would otherwise make band 4 an alpha band).
    with rasterio.open(img, "w", count=bands, dtype="uint8", photometric="MINISBLACK", **common) as di, \
            rasterio.open(lab, "w", count=1, dtype="uint8", nodata=0, **common) as dl:
        step = 1024
        for r in range(0, size, step):
            h = min(step, size - r)
            # Low-frequency structure plus noise, so compression behaves as on imagery.
            yy, xx = np.mgrid[r:r + h, 0:size].astype(np.float32)
            base = 96 + 64 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
            noise = rng.normal(0, 12, (bands, h, size)).astype(np.float32)
            di.write(np.clip(base[None] + noise, 0, 255).astype(np.uint8), window=Window(0, r, size, h))
            classes = (1 + ((xx // 300 + yy // 400) % 6)).astype(np.uint8)
            dl.write(classes, 1, window=Window(0, r, size, h))
    return img, lab


def plain_loop(img: Path, lab: Path, out: Path, tile: int, stride: int) -> int:
    """The baseline: one window read per chip from each raster, one GeoTIFF write per chip."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    n = 0
    with rasterio.Env(**GDAL_ENV), rasterio.open(img) as di, rasterio.open(lab) as dl:
        for i, win in enumerate(iter_windows(di.width, di.height, tile, stride)):
            transform = di.window_transform(win)
            chip = di.read(window=win)
            label = dl.read(1, window=win)
            profile = dict(driver="GTiff", width=tile, height=tile, crs=di.crs, transform=transform)
            with rasterio.open(out / "images" / f"{i:09d}.tif", "w", count=di.count, dtype=chip.dtype,
                               **profile) as d:
                d.write(chip)
            with rasterio.open(out / "labels" / f"{i:09d}.tif", "w", count=1, dtype="uint8", nodata=0,
                               **profile) as d:
                d.write(label, 1)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8000, help="raster width and height (default 8000)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="run each this many times, alternating (default 2)")
    ap.add_argument("--workers", type=int, default=None, help="export writer threads (default: up to 4)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="landcover-bench-"))
    try:
        t = time.perf_counter()
        img, lab = make_inputs(tmp, args.size)
        print(f"inputs: {args.size}x{args.size} 4-band uint8 + labels, made in {time.perf_counter() - t:.1f} s")
        mp = args.size * args.size / 1e6
        results: dict[str, list[float]] = {"export_training_data": [], "plain rasterio loop": []}
        cpu: dict[str, list[float]] = {name: [] for name in results}
        chips = {}
        for rep in range(args.repeat):
            # Alternate which runs first, so neither always meets a cold cache or a busier machine.
            order = ["export_training_data", "plain rasterio loop"]
            for name in order if rep % 2 == 0 else order[::-1]:
                out = tmp / f"out{rep}"
                t, c = time.perf_counter(), time.process_time()
                if name == "export_training_data":
                    chips[name] = export_training_data(img, lab, out, tile_size=args.tile, stride=args.stride,
                                                       all_tiles=True, progress=False, workers=args.workers).chips
                else:
                    chips[name] = plain_loop(img, lab, out, args.tile, args.stride)
                results[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                shutil.rmtree(out)
        assert chips["export_training_data"] == chips["plain rasterio loop"], chips
        n = chips["plain rasterio loop"]
        print(f"{n} chips of {args.tile}x{args.tile}, stride {args.stride}, TIFF, {mp:.0f} MP of imagery")
        best = {}
        for name, times in results.items():
            best[name] = mp / min(times)
            runs = ", ".join(f"{mp / t:.1f}" for t in times)
            print(f"  {name:<22} {best[name]:6.1f} MP/s (best of {len(times)}: {runs}); "
                  f"CPU {min(cpu[name]):.2f} s")
        ratio = best["export_training_data"] / best["plain rasterio loop"]
        print(f"  ratio export / loop:   {ratio:.2f}  (targets: >= 0.80 and >= 50 MP/s); CPU time ratio loop / "
              f"export {min(cpu['plain rasterio loop']) / min(cpu['export_training_data']):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
