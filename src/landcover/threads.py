"""How many compute threads landcover's processes run: never more, across them, than the cores it may use.

Two OpenMP programs on the same cores slow each other far more than twofold (a model forward measured 5×
slower with 2 threads than with 1 while another process trained: spinning threads wait on a busy core). So
landcover splits one budget of threads among its own compute processes: Dask workers × engine threads when
classifying, the training process's torch threads + DataLoader worker processes when training. The budget is
the cores this process may run on, unless ``LANDCOVER_THREADS`` (or a ``threads`` argument) says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import LandcoverError, arg

#: environment variable that sets the thread budget for every landcover command
ENV = "LANDCOVER_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or ``taskset``'s share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """``processes`` compute processes of ``threads`` threads each; ``budget`` threads in all were allowed, as
    ``source`` said (``"cores"``, ``LANDCOVER_THREADS`` or the argument's name)."""

    processes: int
    threads: int
    budget: int
    source: str
    #: processes asked for, when more than the budget allowed
    asked: int | None = None
    #: single-threaded helper processes beside them (training's DataLoader workers)
    helpers: int = 0

    @property
    def total(self) -> int:
        return self.processes * self.threads

    def describe(self, unit: str = "worker") -> str:
        """e.g. ``2 threads (2 cores)``, ``2 workers x 1 thread (LANDCOVER_THREADS=2; 4 workers asked)``,
        ``1 thread + 1 DataLoader worker (2 cores)``."""
        def n(k: int, word: str) -> str:
            return f"{k} {word}{'' if k == 1 else 's'}"

        head = n(self.threads, "thread") if self.processes == 1 and unit == "worker" else \
            f"{n(self.processes, unit)} x {n(self.threads, 'thread')}"
        if self.helpers:
            head += f" + {n(self.helpers, 'DataLoader worker')}"
        why = n(self.budget, "core") if self.source == "cores" else f"{self.source}={self.budget}"
        if self.asked:
            why += f"; {n(self.asked, unit)} asked"
        return f"{head} ({why})"


def thread_budget(threads: int | None = None, name: str = "threads") -> tuple[int, str]:
    """The number of compute threads landcover may run in all, and what set it: ``threads`` (an argument named
    ``name``), else ``$LANDCOVER_THREADS``, else the cores available."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LandcoverError(f"{arg(name, threads)}: give a whole number of threads, at least 1")
        return threads, name
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise LandcoverError(f"{ENV}={value!r}: give a whole number of threads, at least 1 (or unset it)")
        return n, ENV
    return available_cores(), "cores"


def split_threads(processes: int = 1, threads: int | None = None, name: str = "threads") -> ThreadPlan:
    """Share the budget among ``processes`` compute processes of equal threads: at most one process per
    thread of the budget (more would run more threads than cores), each with ``budget // processes``."""
    budget, source = thread_budget(threads, name)
    asked = int(processes)
    processes = max(1, min(asked, budget))
    return ThreadPlan(processes, max(1, budget // processes), budget, source,
                      asked if asked > processes else None)


def training_threads(loader_workers: int, threads: int | None = None, name: str = "threads") -> ThreadPlan:
    """Torch threads for a training process beside ``loader_workers`` DataLoader worker processes (each runs
    one thread: PyTorch sets it so in its workers): the budget less the workers, at least one."""
    budget, source = thread_budget(threads, name)
    workers = max(0, int(loader_workers))
    return ThreadPlan(1, max(1, budget - workers), budget, source, helpers=workers)
