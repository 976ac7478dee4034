"""``landcover serve --db postgresql+psycopg://…``: the job store in a real PostgreSQL server.

The test starts its own PostgreSQL cluster (``initdb`` + ``pg_ctl`` from the machine's PostgreSQL, as the
``postgres`` user when run as root) on a free loopback port in a temporary folder, runs a service on it, installs a
package, runs a job to the end, restarts the service and finds the model and the job again. It skips where no
PostgreSQL server or no psycopg driver is installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("psycopg")
pytest.importorskip("fastapi")

from conftest import torch_threads  # noqa: E402
from test_serve import NAIP, TOKEN, Service, call, free_port, random_package  # noqa: E402

pytestmark = pytest.mark.realdata

#: one small block: the job is about running it through PostgreSQL, not about the blocks
JOB = {"cell_size": 30.0, "padding": 8, "block_size": 256}


def _pg_bin(name: str) -> str | None:
    return shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return [runuser, "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server installed (initdb, pg_ctl)")
    # not under pytest's folder: that is private to this user (0700), and the server may run as another one
    folder = Path(tempfile.mkdtemp(prefix="landcover-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-U", "landcover", "--auth=trust",
                                          "--no-sync"]), **run)
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-l", str(folder / "log.txt"), "-w", "-o",
                                          f"-c listen_addresses=127.0.0.1 -p {port} -c "
                                          f"unix_socket_directories={folder} -c fsync=off", "start"]), **run)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {(getattr(exc, 'stderr', '') or str(exc)).strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://landcover@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_jobs_in_postgresql_survive_a_restart(postgres_url, shared_data, tmp_path, monkeypatch):
    from landcover.classify import classify_pixels

    naip = shared_data / NAIP
    if not naip.is_file():
        pytest.skip(f"{naip} is not present")
    root = tmp_path / "root"
    root.mkdir()
    pkg = random_package(root / "tiny", naip)
    monkeypatch.setenv("LANDCOVER_CACHE", str(tmp_path / "cache"))
    with torch_threads(1):
        reference = classify_pixels(naip, pkg, tmp_path / "reference.tif", progress=False, **JOB)
    service = Service(tmp_path / "home", [root, naip.parent], tmp_path / "serve.log",
                      extra=("--db", postgres_url, "--workers", "1")).start()
    try:
        status, model = call(service.base, "POST", "/api/models", {"path": "tiny"})
        assert status == 201, model
        assert call(service.base, "POST", "/api/models", {"path": "tiny"})[0] == 409  # a duplicate name
        status, job = call(service.base, "POST", "/api/jobs", {"model": "tiny", "imagery": str(naip), **JOB})
        assert status == 201, job
        done = service.wait(job["id"])
        assert done["state"] == "finished", done
        service.stop()
        assert not (tmp_path / "home" / "landcover.db").exists()  # the store is the server, not a file
        service.start()
        assert [m["name"] for m in service.get("/api/models")["models"]] == ["tiny"]
        again = service.get(f"/api/jobs/{job['id']}")
        assert again["state"] == "finished" and again["progress"] == done["progress"]
        status, cog = call(service.base, "GET", f"/api/jobs/{job['id']}/cog", token=TOKEN)
        assert status == 200
        (tmp_path / "served.tif").write_bytes(cog)
        with rasterio.open(tmp_path / "served.tif") as got, rasterio.open(reference) as ref:
            assert np.array_equal(got.read(1), ref.read(1))
    finally:
        service.stop()
