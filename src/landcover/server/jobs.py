"""Running the queued jobs: one process per job, a fair queue, progress, cancelling, and resuming after a restart.

One thread (the *runner*) owns the job processes. Every half second, or at once when woken, it reaps finished
processes (``status.json`` says how each ended), reads each running job's progress from its work folder
(blocks done / total, from ``classify_pixels``' own ``<output>.blocks/``), and starts queued jobs while fewer than
``max_jobs`` run. It picks fairly: a job that was running when the service stopped first, then the owner with the
fewest running jobs, then the one who started a job least recently, then the oldest submission.

A job's blocks run in its process, or on the Dask cluster the service owns (``--workers N``) or connects to
(``--scheduler``). A service that is stopped or killed loses nothing: its running jobs are queued again at the next
start and continue from their finished blocks (``resume=True``), with identical pixels.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .store import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, JobRow, Store, now
from .worker import LOG, STATUS

log = logging.getLogger("landcover.serve")

#: the classified COG and the probabilities COG in a job's folder
CLASSES_FILE, PROBABILITIES_FILE = "classes.tif", "probabilities.tif"
#: what a failed or cancelled job keeps (for its page): its log and its status
KEPT = (LOG, STATUS)


@dataclass
class Running:
    """A job's process and what the runner knows of its progress."""

    job_id: int
    proc: subprocess.Popen
    folder: Path
    started: float = field(default_factory=time.monotonic)
    total: int = 0
    done_at_start: int | None = None
    grid_mp: float = 0.0


def job_folder(home: Path, job_id: int) -> Path:
    return home / "jobs" / str(job_id)


def _libc_prctl():
    try:
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


#: looked up before any fork: the child must not load libraries between fork and exec
_PRCTL = _libc_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the runner thread that started it is gone (the service was killed)."""
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Runner:
    """The job runner of one service (see the module docstring)."""

    def __init__(self, store: Store, home: Path, max_jobs: int = 1, scheduler: str | None = None,
                 workers: int | None = None, poll: float = 0.5):
        self.store, self.home, self.max_jobs, self.poll = store, home, max(1, int(max_jobs)), poll
        self.scheduler, self.workers = scheduler, workers
        self._cluster = None
        self._running: dict[int, Running] = {}
        self._cancelled: set[int] = set()
        self._last_start: dict[str, float] = {}
        self._spare: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover jobs a stopped service left running, start the owned Dask cluster, start the runner."""
        if self.workers:
            from ..classify.cluster import local_cluster

            self._cluster = local_cluster(self.workers)
            self.scheduler = self._cluster.scheduler_address
        for row in self.store.jobs(states=(RUNNING,), limit=100000):
            # killed or stopped mid-job: queued again, first in line, to resume from its finished blocks
            self.store.update_job(row.id, only_if=(RUNNING,), state=QUEUED)
        for row in self.store.jobs(states=(CANCELLED, FAILED), limit=100000):
            _clear(job_folder(self.home, row.id))  # a cleanup the kill interrupted
        self._thread = threading.Thread(target=self._loop, name="landcover-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the runner and kill the job processes; their jobs stay ``running`` and resume at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            procs = [r.proc for r in self._running.values()] + ([self._spare] if self._spare else [])
            self._running.clear()
            self._spare = None
        for proc in procs:
            _kill(proc)
        if self._cluster is not None:
            self._cluster.close()

    def wake(self) -> None:
        self._wake.set()

    # --- requests from the API ------------------------------------------------------------------------------

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False when it had already ended. A running job's process is killed
        and its folder emptied when it has exited."""
        if self.store.update_job(job_id, only_if=(QUEUED,), state=CANCELLED, finished_at=now()):
            _clear(job_folder(self.home, job_id))
            return True
        with self._lock:
            if not self.store.update_job(job_id, only_if=(RUNNING,), state=CANCELLED, finished_at=now()):
                return False
            self._cancelled.add(job_id)
            running = self._running.get(job_id)
            if running is not None:  # else it is being launched: _launch kills it
                running.proc.kill()
        self._wake.set()
        return True

    def running_ids(self) -> list[int]:
        with self._lock:
            return list(self._running)

    # --- the loop -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._progress()
                self._start_queued()
                self._keep_spare()
            except Exception:  # the runner must outlive a database hiccup; the next turn tries again
                log.exception("landcover serve: job runner")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            ended = [r for r in self._running.values() if r.proc.poll() is not None]
            for r in ended:
                del self._running[r.job_id]
        for r in ended:
            if r.job_id in self._cancelled:
                self._cancelled.discard(r.job_id)
                _clear(r.folder)
                continue
            if self._stop.is_set():
                continue
            status = _read_status(r.folder)
            if status.get("ok"):
                if not r.grid_mp:  # a job faster than one look: its size from the result
                    r.grid_mp = _megapixels(r.folder / CLASSES_FILE)
                self.store.update_job(r.job_id, only_if=(RUNNING,), state=FINISHED, finished_at=now(),
                                      blocks_done=r.total or 1, blocks_total=r.total or 1,
                                      mp_per_s=r.grid_mp / max(time.monotonic() - r.started, 1e-6),
                                      error="; ".join(status.get("warnings", [])) or None)
            else:
                reason = status.get("error") or (f"the job's process ended unexpectedly (exit code "
                                                 f"{r.proc.returncode}); see GET /api/jobs/{r.job_id}/log")
                self.store.update_job(r.job_id, only_if=(RUNNING,), state=FAILED, finished_at=now(), error=reason)
                _clear(r.folder)

    def _progress(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for r in running:
            work = r.folder / f"{CLASSES_FILE}.blocks"
            if not r.total:
                r.total, r.grid_mp = _plan_size(work)
            if not r.total or not work.is_dir():
                continue
            with contextlib.suppress(OSError):
                done = sum(1 for _ in work.glob("*.done"))
                if r.done_at_start is None:
                    r.done_at_start = done
                elapsed = max(time.monotonic() - r.started, 1e-6)
                rate = (done - r.done_at_start) / r.total * r.grid_mp / elapsed
                self.store.update_job(r.job_id, only_if=(RUNNING,), blocks_done=done, blocks_total=r.total,
                                      mp_per_s=rate)

    def _start_queued(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self._running) >= self.max_jobs:
                    return
                owners = Counter(self.store.job(i).owner for i in self._running)
            queued = self.store.jobs(states=(QUEUED,), limit=100000)
            if not queued:
                return
            row = min(queued, key=lambda j: (j.attempts == 0, owners[j.owner],
                                             self._last_start.get(j.owner, 0.0), j.id))
            self._launch(row)

    def _launch(self, row: JobRow) -> None:
        folder = job_folder(self.home, row.id)
        folder.mkdir(parents=True, exist_ok=True)
        if not self.store.update_job(row.id, only_if=(QUEUED,), state=RUNNING, attempts=row.attempts + 1,
                                     started_at=row.started_at or now(), error=None):
            return  # cancelled meanwhile
        (folder / STATUS).unlink(missing_ok=True)
        req = row.request
        options = {k: v for k, v in req["options"].items() if v is not None}
        if self.scheduler:
            options["scheduler"] = self.scheduler
        if req.get("probabilities"):
            options["probabilities"] = str(folder / PROBABILITIES_FILE)
        model = self.store.model(row.model)
        job = {"folder": str(folder), "imagery": req["imagery"], "model": model.path if model else row.model,
               "output": str(folder / CLASSES_FILE), "options": options}
        proc = self._take_worker()
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.close()
        except OSError:  # the spare died: the reaper fails the job with its exit code
            pass
        self._last_start[row.owner] = time.monotonic()
        with self._lock:
            self._running[row.id] = Running(row.id, proc, folder)
            if row.id in self._cancelled:
                proc.kill()

    def _take_worker(self) -> subprocess.Popen:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            return spare
        return self._spawn()

    def _keep_spare(self) -> None:
        with self._lock:
            if self._spare is not None and self._spare.poll() is None:
                return
        spare = self._spawn()
        with self._lock:
            self._spare = spare

    def _spawn(self) -> subprocess.Popen:
        errors = open(self.home / "workers.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "landcover.server.worker", str(os.getpid())], stdin=subprocess.PIPE,
                stdout=errors, stderr=errors, start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None)
        finally:
            errors.close()


def _plan_size(work: Path) -> tuple[int, float]:
    """(blocks, megapixels) of the run in ``work``, from its manifest; (0, 0) before it is written."""
    from ..classify.plan import TilePlan

    try:
        m = json.loads((work / "manifest.json").read_text())
        g = m["grid"]
        plan = TilePlan.build(g["height"], g["width"], m["tile"], m["padding"], m["block_size"],
                              tuple(m["window"]) if m.get("window") else None)
        return len(plan.blocks), g["width"] * g["height"] / 1e6
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0.0


def _megapixels(path: Path) -> float:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.width * ds.height / 1e6
    except (OSError, rasterio.errors.RasterioError):
        return 0.0


def _read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def _clear(folder: Path) -> None:
    """Remove what a failed or cancelled job wrote, except its log and status."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in KEPT:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
