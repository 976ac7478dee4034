"""Talking to a ``landcover serve`` service from the command line: ``landcover classify --server URL`` submits the
job, follows its progress and downloads the result (standard library only: no server extras needed).

The token comes from ``LANDCOVER_TOKEN``. ``--model`` names a model installed on the service, and ``--imagery`` /
``--mosaic`` paths are the service's (under its data root) or URLs. Stopping the command (Ctrl-C) leaves the job
running on the service.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import LandcoverError

#: seconds between two looks at the job
POLL = 1.0


class Client:
    """A thin JSON client of one service."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30):
        if not url.startswith(("http://", "https://")):
            raise LandcoverError(f"--server {url}: give the service's URL, e.g. http://127.0.0.1:8080")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise LandcoverError(f"{self.url}: {_error_of(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LandcoverError(f"--server {self.url}: no service answered ({reason}); check the address and that "
                                 "`landcover serve` runs there") from None

    def download(self, path: str, dst: Path) -> None:
        """Save a file of the service to ``dst``, complete or not at all."""
        tmp = dst.with_name(f".{dst.name}.download.partial")
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout) as resp, open(tmp, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, dst)
        except urllib.error.HTTPError as exc:
            raise LandcoverError(f"{self.url}: {_error_of(exc)}") from None
        finally:
            tmp.unlink(missing_ok=True)


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error") or f"HTTP {exc.code}"
    except ValueError:
        return f"HTTP {exc.code} {exc.reason}"


def job_request(args) -> dict:
    """The job the command line asks for, as the service's ``POST /api/jobs`` body."""
    body: dict = {"model": args.model, "owner": _owner()}
    if args.mosaic:
        body["mosaic"] = list(args.mosaic)
    elif len(args.imagery) == 1 and args.imagery[0].split("?")[0].lower().endswith(".json"):
        body["stac"] = args.imagery[0]
    else:
        body["imagery"] = args.imagery if len(args.imagery) > 1 else args.imagery[0]
    if args.bands:
        body["bands"] = list(args.bands)
    for key, value in (("padding", args.padding), ("batch_size", args.batch_size), ("tile_size", args.tile_size),
                       ("extent", args.extent), ("extent_crs", args.extent_crs), ("cell_size", args.cell_size),
                       ("backend", args.backend), ("block_size", args.block_size)):
        if value is not None:
            body[key] = value
    body.update(tta=bool(args.tta), predict_background=not args.no_predict_background,
                probabilities=bool(args.probabilities))
    return body


def _owner() -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9._-]", "", os.environ.get("USER") or os.environ.get("USERNAME") or "")[:64]
    return name if name and name[0].isalnum() else "anonymous"


def classify_on_server(args) -> int:
    """``landcover classify --server URL``: submit, follow, download ``--out`` (and ``--probabilities``)."""
    for flag, value in (("--scheduler", args.scheduler), ("--workers", args.workers), ("--resume", args.resume)):
        if value:
            raise LandcoverError(f"{flag}: not with --server (the job runs on the service's cluster and resumes "
                                 "there by itself)")
    outputs = [Path(p) for p in (args.out, args.probabilities) if p]
    for out in outputs:
        if out.exists() and not args.overwrite:
            raise LandcoverError(f"{out}: exists; add --overwrite to replace it")
        if not out.parent.is_dir():
            raise LandcoverError(f"{out}: the folder {out.parent} does not exist")
    client = Client(args.server, os.environ.get("LANDCOVER_TOKEN"))
    job = client.request("POST", "/api/jobs", job_request(args))
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say(f"landcover classify: job {job['id']} submitted to {client.url}")
    try:
        job = follow(client, job["id"], say)
    except KeyboardInterrupt:
        print(f"landcover classify: stopped following; job {job['id']} goes on at {client.url}/api/jobs/{job['id']}",
              file=sys.stderr)
        return 130
    if job["state"] != "finished":
        reason = job.get("error") or job["state"]
        raise LandcoverError(f"{client.url}: job {job['id']} {job['state']}: {reason}")
    client.download(f"/api/jobs/{job['id']}/cog", Path(args.out))
    from ..classes import ClassInfo, write_class_table

    write_class_table(args.out, [ClassInfo(c["value"], c["name"], tuple(c["color"])) for c in job["classes"]],
                      in_file=False)
    if args.probabilities:
        client.download(f"/api/jobs/{job['id']}/probabilities", Path(args.probabilities))
    say(f"landcover classify: job {job['id']} finished -> {args.out}")
    return 0


def follow(client: Client, job_id: int, say) -> dict:
    """Poll the job until it ends, saying its progress when it changes; the ended job."""
    last = None
    while True:
        job = client.request("GET", f"/api/jobs/{job_id}")
        p = job["progress"]
        line = f"job {job_id}: {job['state']}"
        if job["state"] == "running" and p["blocks_total"]:
            line += f", {p['blocks_done']}/{p['blocks_total']} blocks, {p['mp_per_s']:.2f} MP/s"
        if line != last:
            say(line)
            last = line
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(POLL)
