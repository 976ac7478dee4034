"""``landcover serve``: the HTTP service that installs models, runs classification jobs and publishes map layers
(see :mod:`landcover.server`)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

from ..errors import LandcoverError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the HTTP service: install models, run classification jobs, serve results as map layers",
        description="Start the landcover service: models are installed once, jobs are submitted by anyone holding "
        "the token and run on this machine or a Dask cluster, survive restarts, and their results are served as "
        "XYZ tiles, COG downloads, TileJSON and WMTS (QGIS, ArcGIS Pro) and on a web map at /.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens the service to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="folder whose files clients may name as imagery or packages (repeatable); nothing "
                   "outside it is read")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:8786", help="run job blocks on this Dask scheduler")
    where.add_argument("--workers", type=int, metavar="N",
                       help="run job blocks on a local Dask cluster of N single-threaded processes the service "
                       "owns")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL of the job store (default: SQLite "
                   "landcover.db in --home; e.g. postgresql://user@host/landcover)")
    p.add_argument("--home", default="landcover-service", metavar="DIR",
                   help="service folder: installed models, job results, the default database "
                   "(default ./landcover-service)")
    p.add_argument("--token", help="token that writes (install, submit, cancel, uninstall) must send (default: "
                   "$LANDCOVER_TOKEN, else a random one printed at start)")
    p.add_argument("--max-jobs", type=int, default=1, metavar="N", help="jobs running at once (default 1)")
    p.add_argument("--max-queued", type=int, default=100, metavar="N",
                   help="queued and running jobs at most; more are refused (default 100)")
    p.add_argument("--max-upload-mb", type=int, default=1024, metavar="MB",
                   help="largest model upload (default 1024)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import uvicorn

        from ..server.app import ServeConfig, create_app
    except ImportError as exc:
        raise LandcoverError(f"landcover serve needs {exc.name}: pip install 'landcover[serve]'") from None
    for value, flag in ((args.max_jobs, "--max-jobs"), (args.max_queued, "--max-queued"),
                        (args.max_upload_mb, "--max-upload-mb"), (args.workers or 1, "--workers")):
        if value < 1:
            raise LandcoverError(f"{flag} {value}: must be at least 1")
    if not 0 < args.port < 65536:
        raise LandcoverError(f"--port {args.port}: give a port between 1 and 65535")
    for root in args.data_root:
        if not Path(root).is_dir():
            raise LandcoverError(f"--data-root {root}: no such folder")
    home = Path(args.home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LandcoverError(f"--home {home}: cannot create it ({exc.strerror})") from None
    _check_port(args.host, args.port)
    token = args.token or os.environ.get("LANDCOVER_TOKEN") or secrets.token_urlsafe(24)
    config = ServeConfig(home=home.resolve(), token=token, data_roots=[Path(r) for r in args.data_root],
                         db=args.db, scheduler=args.scheduler, workers=args.workers, max_jobs=args.max_jobs,
                         max_queued=args.max_queued, max_upload_mb=args.max_upload_mb)
    app = create_app(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"landcover serve: http://{shown}:{args.port}/ (service folder {config.home})", file=sys.stderr)
    if not (args.token or os.environ.get("LANDCOVER_TOKEN")):
        print(f"landcover serve: write token: {token} (or start with --token / LANDCOVER_TOKEN)", file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"landcover serve: warning: listening on {args.host}: anyone who reaches this port can read the "
              "jobs and layers; writes need the token", file=sys.stderr)
    sys.stderr.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """One line now rather than uvicorn's traceback-like log when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LandcoverError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); give "
                                 "another --port") from None
