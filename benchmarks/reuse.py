"""What thread reuse (``Supervisor(reuse_threads=True)``) buys, beside its floors.

``churn``
    10,000 children spawned one after another (``token.spawn(...,
    restart="transient")``), each returning at once: seconds per child, from
    the first spawn until the last child has run, with reuse on. Its baseline
    ``churn.floor`` is the same tasks submitted to a
    ``ThreadPoolExecutor(32)``; beside them, ``churn.reuse_off`` (today's
    thread per child) and ``churn.thread_per_task`` (a bare
    ``threading.Thread`` per task), both against the pool too. Every task
    ticks the same countdown, whose last tick stamps the end.
``restart_warm``
    floor.py's ``restart`` (group {a, b}; b raises: from b's raise to the
    first line of a's next incarnation) with reuse on; its baseline is
    ``restart`` itself, today's restart on a new thread.

A churn sample waits for the tree to settle, after its timing, so that no
child of one sample runs into the next. ``--quick`` spawns 1,000 children
where the full run spawns 10,000; the run's notes say so.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from benchmarks import Measure, Target, note, quick, register, supervisor
from benchmarks.floor import LOGGER, MASS_TIMEOUT, _join_all, _started, _supervised_pair
from threadsup import CancelToken, Signal

#: Children (tasks) per churn sample in a full run, and with ``--quick``.
CHURN = 10_000
QUICK_CHURN = 1_000
#: The thread pool of the churn floor: ``concurrent.futures``' most workers by default.
POOL_WORKERS = 32

_CHURN_NOTE = f"quick run: churn spawns {QUICK_CHURN:,} children instead of {CHURN:,}"


def _tasks() -> int:
    if quick():
        note(_CHURN_NOTE)
        return QUICK_CHURN
    return CHURN


class _Countdown:
    """Ticked once by every task; the last tick stamps the end (`time.perf_counter`)."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self._left = tasks
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.done_at = 0.0

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            last = not self._left
        if last:
            self.done_at = time.perf_counter()
            self.done.set()

    def per_task(self, started: float) -> float:
        """Seconds per task from ``started`` to the last tick."""
        if not self.done.wait(MASS_TIMEOUT):
            raise RuntimeError(f"{self.tasks:,} tasks did not all run in {MASS_TIMEOUT:g} s")
        return (self.done_at - started) / self.tasks


def _child(countdown: _Countdown, token: CancelToken) -> None:
    countdown.tick()


class _SupervisedChurn:
    """A root that spawns a batch of children on request, one after another."""

    def __init__(self) -> None:
        self._batches: queue.Queue[tuple[str, _Countdown]] = queue.Queue()
        self._samples = itertools.count()

    def root(self, token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        while True:
            prefix, countdown = token.get(self._batches)
            child = functools.partial(_child, countdown)
            for index in range(countdown.tasks):
                token.spawn(f"{prefix}_{index}", child, restart="transient")

    def measure(self) -> float:
        countdown = _Countdown(_tasks())
        started = time.perf_counter()
        self._batches.put((f"s{next(self._samples)}", countdown))
        return countdown.per_task(started)


@contextlib.contextmanager
def _supervised_churn(reuse_threads: bool) -> Iterator[Measure]:
    churn = _SupervisedChurn()
    sup = supervisor(churn.root, logger=LOGGER, reuse_threads=reuse_threads)

    def measure() -> float:
        took = churn.measure()
        if not sup.wait_settled(MASS_TIMEOUT):  # every child gone before the next sample
            raise RuntimeError(f"a churn tree did not settle within {MASS_TIMEOUT:g} s")
        return took

    with _started(sup):
        yield measure


@contextlib.contextmanager
def _pool_churn() -> Iterator[Measure]:
    def measure() -> float:
        countdown = _Countdown(_tasks())
        started = time.perf_counter()
        for _ in range(countdown.tasks):
            pool.submit(countdown.tick)
        return countdown.per_task(started)

    with ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix="churn-pool") as pool:
        yield measure


@contextlib.contextmanager
def _thread_churn() -> Iterator[Measure]:
    def measure() -> float:
        countdown = _Countdown(_tasks())
        threads = [
            threading.Thread(target=countdown.tick, daemon=True) for _ in range(countdown.tasks)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        took = countdown.per_task(started)
        _join_all(threads)
        return took

    yield measure


_CHURN = (
    f"{CHURN:,} children spawned one after another, each returning at once: seconds per "
    "child, from the first spawn until the last has run"
)
#: The churn rows take turns alone: thousands of thread starts weigh on whatever runs beside.
_churn = functools.partial(
    register, repeats=10, quick_repeats=3, warmup=1, session="churn", tags={"workload": "churn"}
)

_churn(
    "churn",
    f"{_CHURN}; reuse_threads=True",
    baseline="churn.floor",
    target=Target("ratio", 3.0),
)(functools.partial(_supervised_churn, True))
_churn(
    "churn.floor",
    f"{CHURN:,} tasks submitted to ThreadPoolExecutor({POOL_WORKERS}): seconds per task",
)(_pool_churn)
_churn(
    "churn.reuse_off",
    f"{_CHURN}; reuse_threads=False (a new thread per child)",
    baseline="churn.floor",
)(functools.partial(_supervised_churn, False))
_churn(
    "churn.thread_per_task",
    f"{CHURN:,} tasks on a bare threading.Thread each: seconds per task",
    baseline="churn.floor",
)(_thread_churn)

register(
    "restart_warm",
    "restart's group {a, b} with reuse_threads=True: from b's raise to the first line of "
    "a's next incarnation, on a parked thread",
    baseline="restart",
    target=Target("ratio", 0.5),
    tags={"workload": "restart_warm"},
)(functools.partial(_supervised_pair, 0, reuse_threads=True))
