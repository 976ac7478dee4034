"""Benchmark of classifying a COG over HTTP against the same file on disk, side by side in one run.

A 4-band uint8 Cloud Optimized GeoTIFF (``--blocksize`` tiles, overviews) is served by the tests' loopback HTTP server
(tests/http_server.py: a child process with range requests, counting the body bytes it sends) and classified
with ``landcover.classify_pixels`` from ``http://127.0.0.1:<port>/scene.tif`` and from its path, alternately,
``--repeat`` pairs, each run in a fresh process so that neither inherits GDAL's caches. The model is a ResNet-18
U-Net with random weights saved with the project's own API (speed does not depend on the weights). Reported:

- end to end, classifying an extent covering the middle 10 % of the raster's area: seconds of
  ``classify_pixels`` (in the process, without interpreter start), the ratio of remote to local throughput
  (local seconds / remote seconds; target >= 0.8) per pair and of the means, and the bytes the server sent as a
  fraction of the file (target <= 0.20);
- reading alone, the whole raster in classify's tiles (``--tile`` and ``--padding``, every band), local against
  remote, under ``raster.GDAL_ENV`` as classify runs and with :data:`REMOTE_GDAL_ENV` added: the stricter test
  of the remote reads, which the model's time does not hide; and the fraction of the file fetched (1.0 less the
  overviews nobody reads: every tile fetched once);
- ``--whole``: also classify the whole raster, one pair (slow on a small CPU);
- ``--latency-ms``: the reading-alone pass again with the server waiting that long before each answer (a
  network's round trip, which the loopback lacks).

The fetched fraction for an extent depends on the COG's block size and on the context classify reads around
the extent (its tiles are laid on the whole raster's grid, each read with its padding, so that adjacent extents
join without a seam): a 10 % extent of a 4000-pixel raster with 256-pixel blocks and 256-pixel tiles reads about
1.2 times the extent's edge.

    python bench/bench_remote.py                          # 4000 x 4000
    python bench/bench_remote.py --size 3000 --repeat 1   # a quick run while developing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from http_server import FileServer  # noqa: E402 - the tests' loopback server

CLASSES = 6
#: one classify run in a fresh interpreter: prints the seconds of classify_pixels alone
CHILD = """
import json, sys, time
from landcover import classify_pixels
kw = json.loads(sys.argv[1])
t0 = time.perf_counter()
classify_pixels(**kw)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""
#: reading every tile of the raster as classify does, in a fresh interpreter; prints the seconds
READER = """
import json, sys, time
import rasterio
from rasterio.windows import Window
path, env, tile, pad = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
with rasterio.Env(**env), rasterio.open(path) as ds:
    core = tile - 2 * pad
    for r in range(0, ds.height, core):
        for c in range(0, ds.width, core):
            r0, c0 = max(0, r - pad), max(0, c - pad)
            ds.read(window=Window(c0, r0, min(ds.width, c + core + pad) - c0, min(ds.height, r + core + pad) - r0))
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def cpu_name() -> str:
    """The CPU as every landcover bench names it: model, cores and the flags that decide the fast paths."""
    from landcover.classify.choose import cpu_description

    cpu = cpu_description()
    return f"{cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags']) or 'none listed'}"


def make_cog(path: Path, size: int, blocksize: int, seed: int = 0) -> Path:
    """A size x size 4-band uint8 COG: smooth fields plus texture (compresses like imagery)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(400000.0, 4300000.0, 1.0, 1.0), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", nodata=0, BIGTIFF="IF_SAFER")
    coarse = rng.integers(20, 230, (4, size // 64 + 2, size // 64 + 2)).astype(np.uint8)
    raw = path.with_name(path.name + ".raw.tif")
    with rasterio.open(raw, "w", **profile) as ds:
        for r0 in range(0, size, 1024):
            h = min(1024, size - r0)
            rows, cols = (np.arange(r0, r0 + h) // 64)[:, None], (np.arange(size) // 64)[None, :]
            strip = coarse[:, rows, cols].astype(np.int16) + rng.integers(-20, 20, (4, h, size), dtype=np.int16)
            ds.write(np.clip(strip, 1, 255).astype(np.uint8), window=Window(0, r0, size, h))
    tmp = path.with_name(path.name + ".partial")
    rasterio.shutil.copy(str(raw), str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=blocksize,
                         NUM_THREADS="ALL_CPUS")
    raw.unlink()
    os.replace(tmp, path)
    return path


def make_package(folder: Path) -> Path:
    """A ResNet-18 U-Net with random weights for 4-band uint8 imagery, saved as a model package."""
    import torch

    from landcover.classes import CHESAPEAKE_CLASSES
    from landcover.model import UNet
    from landcover.package import ModelPackage, save_package

    if (folder / f"{folder.name}.emd").exists():
        return folder
    torch.manual_seed(0)
    net = UNet(4, CLASSES + 1, "resnet18").eval()
    pkg = ModelPackage(classes=list(CHESAPEAKE_CLASSES[:CLASSES]), backbone="resnet18", extract_bands=[0, 1, 2, 3],
                       mean=[120.0] * 4, std=[60.0] * 4, tile_size=256, input_dtype="uint8",
                       band_names=["b1", "b2", "b3", "b4"],
                       state_dict={k: v.detach() for k, v in net.state_dict().items()})
    return save_package(pkg, folder)


def middle_tenth(raster: Path) -> tuple[float, float, float, float]:
    """Bounds of a square in the middle of the raster covering 10 % of its area, on whole pixels."""
    with rasterio.open(raster) as ds:
        edge = round(ds.width * 0.1 ** 0.5)
        col = row = (ds.width - edge) // 2
        left, top = ds.transform * (col, row)
        right, bottom = ds.transform * (col + edge, row + edge)
    return (left, bottom, right, top)


def classify(server: FileServer, input_raster: str, model: Path, out: Path, args, extent=None) -> dict:
    """One classify_pixels run in a fresh process; seconds and the bytes the server sent meanwhile."""
    kw = {"input_raster": input_raster, "model": str(model), "output": str(out), "overwrite": True,
          "progress": False, "backend": args.backend, "tile_size": args.tile,
          "padding": args.padding}
    if extent:
        kw["extent"] = list(extent)
    server.reset_counts()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"classify of {input_raster} failed:\n{proc.stderr[-3000:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    return {"seconds": seconds, "bytes": server.bytes_sent, "requests": server.requests}


def read_all(server: FileServer, path: str, env: dict, args) -> dict:
    """Every tile of the raster read once in a fresh process; seconds and the bytes the server sent."""
    server.reset_counts()
    proc = subprocess.run([sys.executable, "-c", READER, path, json.dumps(env), str(args.tile), str(args.padding)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"reading {path} failed:\n{proc.stderr[-3000:]}")
    return {"seconds": json.loads(proc.stdout.strip().splitlines()[-1])["seconds"], "bytes": server.bytes_sent,
            "requests": server.requests}


def reading(server: FileServer, url: str, raster: Path, args) -> dict:
    """Reading alone: local, remote under GDAL_ENV, remote with REMOTE_GDAL_ENV added; ``--repeat`` rounds."""
    from landcover.raster import GDAL_ENV
    from landcover.sources.remote import REMOTE_GDAL_ENV, gdal_path

    envs = {"local": (str(raster), GDAL_ENV), "remote": (gdal_path(url), GDAL_ENV),
            "remote_with_REMOTE_GDAL_ENV": (gdal_path(url), {**GDAL_ENV, **REMOTE_GDAL_ENV})}
    runs: dict[str, list] = {name: [] for name in envs}
    for _ in range(args.repeat):
        for name, (path, env) in envs.items():
            runs[name].append(read_all(server, path, env, args))
    local_s = float(np.mean([r["seconds"] for r in runs["local"]]))
    size = raster.stat().st_size
    out = {"local_s": [round(r["seconds"], 2) for r in runs["local"]],
           "GDAL_ENV_has_REMOTE_GDAL_ENV": all(GDAL_ENV.get(k) == v for k, v in REMOTE_GDAL_ENV.items())}
    for name in list(envs)[1:]:
        secs = [r["seconds"] for r in runs[name]]
        out[name] = {"seconds": [round(x, 2) for x in secs], "ratio": round(local_s / float(np.mean(secs)), 3),
                     "fetched_fraction": round(max(r["bytes"] for r in runs[name]) / size, 4),
                     "requests": max(r["requests"] for r in runs[name])}
    if args.latency_ms:
        server.latency_s = args.latency_ms / 1000
        run = read_all(server, gdal_path(url), {**GDAL_ENV, **REMOTE_GDAL_ENV}, args)
        server.latency_s = 0.0
        out[f"remote_with_REMOTE_GDAL_ENV_{args.latency_ms:g}ms_latency"] = {
            "seconds": round(run["seconds"], 2), "ratio": round(local_s / run["seconds"], 3),
            "requests": run["requests"]}
    return out


def pairs(server: FileServer, url: str, raster: Path, model: Path, args, extent=None) -> dict:
    """``--repeat`` alternating local/remote runs; their seconds, ratios and the remote bytes fetched."""
    local, remote = [], []
    for _ in range(args.repeat):
        local.append(classify(server, str(raster), model, args.dir / "out-local.tif", args, extent))
        remote.append(classify(server, url, model, args.dir / "out-remote.tif", args, extent))
    size = raster.stat().st_size
    loc_s, rem_s = np.mean([r["seconds"] for r in local]), np.mean([r["seconds"] for r in remote])
    return {
        "local_s": [round(r["seconds"], 2) for r in local],
        "remote_s": [round(r["seconds"], 2) for r in remote],
        "pair_ratios": [round(a["seconds"] / b["seconds"], 3) for a, b in zip(local, remote, strict=True)],
        "ratio": round(float(loc_s / rem_s), 3),
        "fetched_fraction": round(max(r["bytes"] for r in remote) / size, 4),
        "requests": max(r["requests"] for r in remote),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000, help="raster edge in pixels (default 4000)")
    ap.add_argument("--blocksize", type=int, default=256, help="the COG's block size (default 256)")
    ap.add_argument("--repeat", type=int, default=2, help="local/remote pairs per case (default 2)")
    ap.add_argument("--tile", type=int, default=256, help="classify's tile size (default 256)")
    ap.add_argument("--padding", type=int, default=32, help="classify's padding (default 32)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--whole", action="store_true", help="also classify the whole raster (one pair)")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="also read with this delay before each answer (default: no such run)")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "landcover-bench-remote")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    www = args.dir / "www"
    www.mkdir(exist_ok=True)
    raster = make_cog(www / f"scene-{args.size}-{args.blocksize}.tif", args.size, args.blocksize)
    model = make_package(args.dir / "resnet18-random")
    report: dict = {"cpu": cpu_name(), "size": args.size, "blocksize": args.blocksize, "tile": args.tile,
                    "padding": args.padding,
                    "file_mb": round(raster.stat().st_size / 2**20, 1)}
    extent = middle_tenth(raster)
    with FileServer(www) as server:
        url = server.url(raster.name)
        # warm-up (not timed): the backend choice is cached per model, and the page cache holds the file
        classify(server, str(raster), model, args.dir / "out-local.tif", args, extent=extent)
        t0 = time.perf_counter()
        report["classify_middle_10pct_extent"] = pairs(server, url, raster, model, args, extent=extent)
        report["reading_alone_whole_raster"] = reading(server, url, raster, args)
        if args.whole:
            one = argparse.Namespace(**{**vars(args), "repeat": 1})
            report["classify_whole_raster"] = pairs(server, url, raster, model, one)
        report["bench_s"] = round(time.perf_counter() - t0, 1)
    tenth, read = report["classify_middle_10pct_extent"], report["reading_alone_whole_raster"]
    report["summary"] = {
        "classify_remote_over_local_ratio": tenth["ratio"], "target_ratio": ">= 0.8",
        "fetched_fraction_10pct_extent": tenth["fetched_fraction"], "target_fraction": "<= 0.20",
        "reading_alone_ratio": read["remote"]["ratio"],
        "reading_alone_ratio_with_REMOTE_GDAL_ENV": read["remote_with_REMOTE_GDAL_ENV"]["ratio"],
        "fetched_fraction_whole_raster": read["remote"]["fetched_fraction"],
    }
    if args.whole:
        report["summary"]["classify_whole_raster_ratio"] = report["classify_whole_raster"]["ratio"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
