"""Running blocks on a Dask distributed cluster: a scheduler address, or a local cluster of N processes.

Each task classifies one block and writes its files into the work folder, so the folder must be reachable
under the same path by every worker (always true for ``workers=N`` on this machine; a shared file system
for a remote cluster). Each worker runs one block at a time: two single-threaded processes use two cores better
than one process with two threads (the model's own threading leaves gaps that the other process fills). A local
cluster never has more workers than the run's thread budget, and its engines split the budget among them
(:func:`landcover.threads.split_threads`); a remote worker's engine uses the worker's own thread count.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

from ..errors import LandcoverError, arg
from .blocks import Job, run_block

#: seconds to wait for a scheduler to answer
CONNECT_TIMEOUT = 5


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A ``distributed.Client`` on ``scheduler``, or on a loopback LocalCluster of ``workers`` processes."""
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise LandcoverError(
                f"{arg('scheduler', scheduler)}: no Dask scheduler answered within {CONNECT_TIMEOUT} s "
                f"({str(exc).splitlines()[0][:120]}); check the address and that dask-scheduler is running"
            ) from None
        with client:
            yield client
        return
    with environment_kept():  # again at the end: a worker the nanny restarted wrote it again
        cluster = local_cluster(workers)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()


def local_cluster(workers: int):
    """A loopback ``LocalCluster`` of ``workers`` single-threaded processes, without the workers' profiler, that
    leaves this process's environment as it found it (:func:`environment_kept`)."""
    import dask
    from distributed import LocalCluster

    # Workers sample their own stacks for the dashboard every 10 ms by default; that took ~6 % of the model's
    # time here, and a local run has no dashboard to show it on.
    with environment_kept(), dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, silence_logs=logging.ERROR)


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Put back, on leaving the block, what starting Dask workers writes into this process's environment. A
    Nanny sets ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ...) in
    ``os.environ`` before it spawns (or restarts) a worker and never restores it: every later subprocess of this
    process then ran single-threaded (a notebook kernel took 101 s instead of 55 after a ``workers=2`` run in the
    same process)."""
    import dask

    keys = {*dask.config.get("distributed.nanny.pre-spawn-environ", {}), "PYTHONHASHSEED"}
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_blocks(client, job: Job, blocks: list[tuple[int, int]], on_done: Callable[[dict], None]) -> None:
    """Classify ``blocks`` as tasks on the cluster; ``on_done(stats)`` is called as each finishes."""
    from distributed import as_completed

    futures = client.map(run_block, [job] * len(blocks), blocks, pure=False)
    try:
        for fut in as_completed(futures):
            on_done(fut.result())
    finally:
        client.cancel(futures)
