"""Benchmark of ``landcover serve``: tile latency and the overhead of a job over the same classify_pixels call.

One command, side by side in one run, on bench_classify's generated 4-band raster and random ResNet-34 package:

- job overhead: the wall time of a job on the service (submit to finished, as a client sees it, polling every
  0.1 s) against the same ``classify_pixels`` call in this process (interpreter and torch already loaded), the two
  alternating ``--repeat`` times; the overhead is the ratio of their means minus one (target <= 10 % at 10000²);
- tile latency: p50/p95 of 256 x 256 class tiles (PNG in the class colours) of the finished result, at its
  native zoom and one below (zoomed out), requested one at a time and 8 at a time from random places of the layer.

    python bench/bench_serve.py               # 10000 x 10000
    python bench/bench_serve.py --size 2000   # a quick run while developing
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import make_package, make_raster  # noqa: E402

TOKEN = "bench"


def request(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.status, resp.read()


def start_service(home: Path, root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "landcover.cli", "serve", "--port", str(port), "--home",
                                 str(home), "--data-root", str(root), "--token", TOKEN], stdout=f, stderr=f)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the service did not start; see {log}")
        try:
            request(base, "GET", "/api")
            return proc, base
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not answer in 60 s")


def run_job(base: str, body: dict) -> tuple[float, int]:
    """Seconds from submitting the job to seeing it finished, and the job's id."""
    t0 = time.perf_counter()
    job = json.loads(request(base, "POST", "/api/jobs", body)[1])
    while True:
        job = json.loads(request(base, "GET", f"/api/jobs/{job['id']}")[1])
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    if job["state"] != "finished":
        raise SystemExit(f"job {job['id']} {job['state']}: {job.get('error')}")
    return time.perf_counter() - t0, job["id"]


def in_process(raster: Path, model: Path, out: Path, args) -> float:
    from landcover.classify import classify_pixels

    t0 = time.perf_counter()
    classify_pixels(raster, model, out, tile_size=args.tile, padding=args.padding, backend=args.backend,
                    overwrite=True, progress=False)
    return time.perf_counter() - t0


def tile_latency(base: str, job: int, bounds, zooms, n: int, parallel: int) -> dict:
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    rng = random.Random(0)
    tiles = []
    # points of the inner 96 % of the bounds: a tile that only touches their edge is one rio-tiler may count
    # outside the layer (a 404), which is not what is being timed
    w, s, e, n_ = bounds
    dx, dy = 0.02 * (e - w), 0.02 * (n_ - s)
    for _ in range(n):
        z = rng.choice(zooms)
        lon, lat = rng.uniform(w + dx, e - dx), rng.uniform(s + dy, n_ - dy)
        tiles.append(tms.tile(lon, lat, z))

    def one(t) -> float:
        t0 = time.perf_counter()
        status, png = request(base, "GET", f"/api/jobs/{job}/tiles/{t.z}/{t.x}/{t.y}.png")
        assert status == 200 and png[:4] == b"\x89PNG"
        return time.perf_counter() - t0

    with ThreadPoolExecutor(parallel) as pool:
        ms = np.array(list(pool.map(one, tiles))) * 1000
    return {"tiles": n, "parallel": parallel, "zooms": list(zooms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="raster edge in pixels (default 10000)")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--padding", type=int, default=64)
    ap.add_argument("--backend", default="fp32", help="the same for both runs (default fp32: no backend choice)")
    ap.add_argument("--repeat", type=int, default=2, help="job / in-process pairs (default 2; 0: one job for the tile latency only)")
    ap.add_argument("--tiles", type=int, default=200, help="tiles per latency measurement (default 200)")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "landcover-bench")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    raster = make_raster(args.dir / f"scene-{args.size}.tif", args.size)
    model = make_package(args.dir / "resnet34-random", raster)
    home = args.dir / "serve-home"
    shutil.rmtree(home, ignore_errors=True)
    proc, base = start_service(home, args.dir, args.dir / "serve.log")
    report: dict = {"size": args.size, "tile": args.tile, "padding": args.padding, "backend": args.backend,
                    "cpus": os.cpu_count()}
    try:
        request(base, "POST", "/api/models", {"path": str(model), "name": "bench"})
        body = {"model": "bench", "imagery": str(raster), "tile_size": args.tile, "padding": args.padding,
                "backend": args.backend}
        jobs, local = [], []
        for k in range(args.repeat):
            seconds, job = run_job(base, body)
            jobs.append(seconds)
            local.append(in_process(raster, model, args.dir / f"inprocess-{args.size}.tif", args))
            print(f"pair {k + 1}: job {jobs[-1]:.2f} s, in process {local[-1]:.2f} s", file=sys.stderr)
        if not jobs:  # --repeat 0: one job for the tiles, no comparison
            seconds, job = run_job(base, body)
            jobs.append(seconds)
        report["job_s"] = [round(s, 2) for s in jobs]
        report["in_process_s"] = [round(s, 2) for s in local]
        if local:
            report["job_overhead_pct"] = round(100 * (np.mean(jobs) / np.mean(local) - 1), 1)
        tj = json.loads(request(base, "GET", f"/api/jobs/{job}/tilejson.json")[1])
        # the layer's native zoom and the one below it (zoomed out): the service has no tiles past maxzoom
        zooms = (tj["maxzoom"], max(tj["minzoom"], tj["maxzoom"] - 1))
        report["tile_latency"] = [tile_latency(base, job, tj["bounds"], zooms, args.tiles, p) for p in (1, 8)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
