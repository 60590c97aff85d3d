"""Thread reuse: runnable threads that park between incarnations.

With reuse on for a node (``Supervisor(reuse_threads=True)``, or the child's
own ``reuse_thread=True``), its incarnation runs on a `Worker`: a runnable
thread that, once the incarnation has ended cleanly (returned or raised; not
abandoned, not interrupted) and its exit is reported, parks instead of ending.
The processor then hands the next incarnation that reuses threads, of any node
of the tree, to a parked worker rather than starting a thread.

Ownership, which the races below depend on:

- `Park._parked` (the parked workers, most recently parked last) and
  `Park._closed` change only under `Park._lock`.
- A worker's job (`Worker._job`) is written only under that lock, by whoever
  takes the worker off `_parked` (the processor's `Park.launch`, or `Park.close`),
  which then releases the worker's `_wake` lock, still under it. So a worker
  that finds itself off `_parked` knows its wake is released already.
- A parked worker waits on its own `_wake` lock: no polling, no CPU. It leaves
  `_parked` itself only when its idle time is up, under the lock; if it was
  taken meanwhile, its job is there and it runs it.
- A thread whose incarnation was abandoned or interrupted never parks: an
  asynchronous `Cancelled` aimed at that incarnation could still be pending,
  and it must never land in another one.

`Park.close`, on the processor thread as its loop ends, wakes every parked
worker to end; workers that end their incarnation after it end too. `threads`
lists every worker still alive, for `Processor.join`.
"""

from __future__ import annotations

import _thread
import contextvars
import functools
import threading
from typing import TYPE_CHECKING

from threadsup._node import SupervisedThread, alive
from threadsup._seconds import deadline_after, wait_in_turns

if TYPE_CHECKING:
    from threadsup._node import Node, Tree
    from threadsup._token import CancelToken

#: The most threads a supervisor keeps parked, unless ``parked_threads`` says.
PARKED_THREADS = 32
#: Seconds a parked thread waits for work before it ends, unless
#: ``park_timeout`` says.
PARK_TIMEOUT = 30.0
#: A parked thread's name, until it is handed an incarnation and takes its DN.
PARKED_NAME = "threadsup-parked"

_Job = tuple["Node", "CancelToken"]


class Worker(SupervisedThread):
    """A runnable thread that may run several incarnations, one after another."""

    def __init__(self, park: Park, node: Node, token: CancelToken) -> None:
        super().__init__(park.tree, node.dn, self._serve)
        self._park = park
        #: The incarnation to run next; `None` once taken, or to make it end.
        self._job: _Job | None = (node, token)
        #: Locked while parked; released (under the park's lock) by the hand-off.
        self._wake = _thread.allocate_lock()
        self._wake.acquire()

    def _serve(self) -> None:
        job = self._take()
        try:
            while job is not None:
                clean = _run(*job)
                job = None  # hold no old node or token while parked
                job = self._park.park(self) if clean else None
        finally:
            self._park.ended(self)

    def _take(self) -> _Job | None:
        job, self._job = self._job, None
        return job


def _run(node: Node, token: CancelToken) -> bool:
    """Run one incarnation; whether its thread may run another.

    In a context of its own, empty, as a new thread's is: `contextvars` set by
    one incarnation never reach the next (`threading.local` data does).
    """
    contextvars.Context().run(node.run_incarnation, token)
    # Both flags are set under the tree lock before the exit was decided there.
    return not (token.abandoned or token.interrupted)


class Park:
    """The parked workers of one supervisor, and the hand-off to them."""

    def __init__(self, tree: Tree, bound: int, timeout: float) -> None:
        self.tree = tree
        #: The most workers parked at once; one more ends instead.
        self._bound = bound
        #: How long a worker stays parked before it ends (infinity: for ever).
        self._timeout = timeout
        self._lock = threading.Lock()
        self._parked: list[Worker] = []
        self._closed = False
        #: Every worker started and not ended, then those that ended, until
        #: pruned: what `threads` gives `Processor.join` to wait for.
        self._alive: set[Worker] = set()
        self._ended: list[threading.Thread] = []

    # The processor thread.

    def launch(self, node: Node, token: CancelToken) -> None:
        """Run ``node``'s incarnation on a parked worker, or on a new one; what
        starting a new one raises ("can't start new thread") reaches the caller
        with ``node.thread`` unset."""
        with self._lock:
            if self._parked:
                worker = self._parked.pop()  # the most recently parked: the oldest expire
                node.thread = worker
                self._hand(worker, (node, token))
                return
        worker = Worker(self, node, token)
        with self._lock:
            self._alive.add(worker)
        node.thread = worker
        try:
            worker.start()
        except BaseException:
            node.thread = None
            with self._lock:
                self._alive.discard(worker)
            raise

    def close(self) -> None:
        """The loop has ended: parked workers end now, the others once their
        incarnation ends."""
        with self._lock:
            self._closed = True
            parked, self._parked = self._parked, []
            for worker in parked:
                self._hand(worker, None)

    def _hand(self, worker: Worker, job: _Job | None) -> None:
        """Under `_lock`, ``worker`` just taken off `_parked`: give it ``job``
        (``None``: end) and wake it. The one place a parked worker is woken."""
        if job is not None:
            worker.name = job[0].dn
        worker._job = job
        worker._wake.release()

    # Any thread.

    def threads(self) -> list[threading.Thread]:
        """The workers still running or parked, and those ended lately."""
        with self._lock:
            return [*self._alive, *self._ended]

    # A worker's own thread.

    def park(self, worker: Worker) -> _Job | None:
        """Park ``worker`` until it is handed a job; ``None`` if it should end
        instead: the park is closed or full, or its idle time is up."""
        with self._lock:
            if self._closed or len(self._parked) >= self._bound:
                return None
            worker.name = PARKED_NAME
            self._parked.append(worker)
        acquire = functools.partial(_acquire, worker._wake)
        if not wait_in_turns(acquire, deadline_after(self._timeout)):
            with self._lock:
                if worker in self._parked:  # at most `_bound` long
                    self._parked.remove(worker)
                    return None
            # Taken off `_parked` meanwhile: the hand-off released the wake.
            worker._wake.acquire()
        return worker._take()

    def ended(self, worker: Worker) -> None:
        """``worker`` is about to end: `join` waits for it all the same."""
        with self._lock:
            self._alive.discard(worker)
            self._ended = alive(self._ended)
            self._ended.append(worker)


def _acquire(lock: _thread.LockType, timeout: float | None) -> bool:
    return lock.acquire(timeout=-1 if timeout is None else timeout)
