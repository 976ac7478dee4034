"""A job's process: ``python -m landcover.server.worker`` imports landcover (and torch) at once, then waits on
stdin for one job, runs :func:`~landcover.classify.classify_pixels` on it and exits.

The service keeps one such process started ahead (a *spare*), so a job does not wait ~2 s for the imports.
A job runs in its own process so that cancelling it is killing it; it always runs with ``resume=True``, so a
job whose process was killed (a restart of the service) continues from its finished blocks with identical
pixels. The outcome is ``status.json`` in the job folder: ``{"ok": true}`` or ``{"error": "<one line>"}``.
The process exits as soon as the service that started it is gone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

STATUS = "status.json"
LOG = "worker.log"


def _exit_with_parent(parent: int) -> None:
    """Die with the service: a job left running by a killed service would race its own resumed run."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.2)


def run(job: dict) -> dict:
    """Run one job (what the service sent); the status to write."""
    from ..classify import classify_pixels
    from ..errors import LandcoverError
    from .submit import imagery_spec

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            classify_pixels(imagery_spec(job["imagery"]), job["model"], job["output"], resume=True, progress=True,
                            **job["options"])
        return {"ok": True, "warnings": sorted({str(w.message) for w in caught if issubclass(w.category,
                                                                                             UserWarning)})}
    except LandcoverError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return {"error": f"{where}{exc.strerror or exc}"}
    except Exception as exc:  # a bug or a library failure: still one line for the job's page
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}


def main() -> int:
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import landcover.classify  # noqa: F401  (the point of a spare: the imports happen before the job)

    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the service closed our stdin: not needed
    job = json.loads(line)
    folder = Path(job["folder"])
    log = os.open(folder / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = run(job)
    tmp = folder / f".{STATUS}.partial"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, folder / STATUS)
    return 0 if status.get("ok") else 2


if __name__ == "__main__":  # pragma: no cover - run as a process by the service
    sys.exit(main())
