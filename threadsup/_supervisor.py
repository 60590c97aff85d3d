"""Supervisor: the public face of one supervision tree."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Callable, NamedTuple

from threadsup import _logs
from threadsup._errors import (
    AlreadyStarted,
    GaveUp,
    NotDynamic,
    NotStarted,
    OwnThreadError,
    ProcessorFailed,
    UnknownNode,
    require_runnable,
)
from threadsup._events import MAX_QUEUED, Backlog, Callback, Subscribers
from threadsup._node import (
    Figures,
    Node,
    NodeStatus,
    State,
    SupervisedThread,
    Tree,
    cancel_subtree,
    census,
    drop,
    fire,
    ready,
    summary,
    unready,
)
from threadsup._park import PARK_TIMEOUT, PARKED_THREADS, Park
from threadsup._policy import Backoff, ChildPolicy
from threadsup._processor import Processor, current_frames, stack_of
from threadsup._render import render_tree
from threadsup._seconds import (
    check_interval,
    check_seconds,
    check_timeout,
    deadline_after,
    remaining,
    wait_in_turns,
)
from threadsup._token import Runnable


class Supervisor:
    """Runs ``root`` in a thread of its own and keeps its tree alive.

    Typical use::

        with Supervisor(root) as sup:
            sup.wait()

    ``logger`` is the base logger (``threadsup`` by default): node loggers are
    named ``<base>.<dn>`` and the supervisor's own records go to
    ``<base>.supervisor``. ``backoff`` sets the delays between restarts of DEAD
    nodes. ``shutdown_timeout`` bounds how long leaving the ``with`` block and
    interpreter exit wait for the tree to stop, and is every runnable's
    default time to exit once cancelled. ``max_restarts`` within ``within``
    seconds is the root's restart intensity: past it, the root gives up, the
    tree stops and `wait` raises `GaveUp`. The last ``log_backlog`` records of
    each node are kept in memory for `logs` (0 keeps none).

    ``reuse_threads=True`` lets a runnable's thread that ended its incarnation
    cleanly park, to run the next incarnation or spawned child instead of a
    new thread (a child's ``reuse_thread`` overrides it): at most
    ``parked_threads`` park at once, each for at most ``park_timeout`` seconds
    without work, and all end with the tree. `threading.local` data then
    survives from one incarnation to the next on the same thread.

    Every time value here (and in the other calls) is a number of seconds;
    infinity means for ever: ``shutdown_timeout=inf`` never counts a runnable
    as stuck and lets ``stop`` wait for ever.
    """

    def __init__(
        self,
        root: Runnable,
        *,
        logger: logging.Logger | None = None,
        backoff: Backoff | None = None,
        shutdown_timeout: float = 10.0,
        max_restarts: int | None = None,
        within: float = 60.0,
        log_backlog: int = 100,
        reuse_threads: bool = False,
        parked_threads: int = PARKED_THREADS,
        park_timeout: float = PARK_TIMEOUT,
    ) -> None:
        require_runnable(root, "the root runnable")
        _require_count("log_backlog of Supervisor()", log_backlog, 0, "records kept per node")
        if not isinstance(reuse_threads, bool):
            raise TypeError(
                f"reuse_threads of Supervisor() must be True or False, not {reuse_threads!r}"
            )
        _require_count("parked_threads of Supervisor()", parked_threads, 0, "threads kept parked")
        park_timeout = check_interval("park_timeout of Supervisor()", park_timeout)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, not {logger!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a threadsup.Backoff, not {backoff!r}")
        self.shutdown_timeout = check_seconds("shutdown_timeout of Supervisor()", shutdown_timeout)
        self._tree = Tree(
            logger if logger is not None else logging.getLogger("threadsup"),
            backoff if backoff is not None else Backoff(),
            self.shutdown_timeout,
            reuse_threads=reuse_threads,
        )
        self._root = Node(
            self._tree,
            "root",
            root,
            None,
            ChildPolicy(max_restarts=max_restarts, within=within, where="Supervisor()"),
        )
        events = self._tree.events
        self._subscribers = events.subscribers = Subscribers(self._tree, self._root)
        if log_backlog:
            events.backlog = Backlog(events, self._root, log_backlog)
        park = Park(self._tree, parked_threads, park_timeout)
        self._processor = Processor(self._tree, self._root, park)
        self._start_lock = threading.Lock()
        self._started = False
        self._cancel_requested = False

    def __repr__(self) -> str:
        if not self._started:
            phase = "not started"
        elif self._processor.ended.is_set():
            phase = "stopped"
        else:
            phase = "stopping" if self._cancel_requested else "running"
        return f"<Supervisor {self._tree.events.base.name} {phase}>"

    def start(self) -> Supervisor:
        """Start the processor and schedule the root runnable."""
        with self._start_lock:
            if self._started:
                raise AlreadyStarted(
                    "this Supervisor was already started; create a new one to run the tree again"
                )
            try:
                self._started = True
                _stop_at_exit(self._processor)
                self._processor.schedule((self._root,))
                self._processor.start()
            except BaseException:  # no thread to be had, or Ctrl-C anywhere: leave nothing
                self._cancel_requested = True
                self._processor.abandon_start()
                raise
        return self

    def cancel(self) -> None:
        """Ask the whole tree to stop and return at once.

        Idempotent, safe from any thread, from a runnable and from a signal
        handler: it takes no lock, except from a runnable, where the tree is
        cancelled before it returns (so returning right after is no death).
        """
        if self._own_thread() is not None:
            self._cancel_requested = True
            self._processor.stop_from_tree()
        elif not self._cancel_requested:
            self._cancel_requested = True
            self._processor.stop()

    def stop(self, timeout: float | None = None) -> bool:
        """Cancel the tree and wait for it; ``True`` once every thread has ended.

        On a timeout it logs a WARNING naming the runnables still running, the
        stuck ones with how long ago they were cancelled. Called from a thread of
        the tree itself (a runnable shutting everything down), it cancels and
        returns ``False`` at once: that thread cannot have ended yet.
        """
        timeout = check_timeout("timeout of stop()", timeout)
        self.cancel()
        if not self._started:
            return True
        if self._own_thread() is not None:
            return False
        if self._join(timeout):
            return True
        self._report_unstopped(timeout)
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tree has stopped or finished; ``False`` on timeout.

        Stopped: cancelled, with every runnable thread ended. Finished: every
        node DONE and no thread running.
        """
        timeout = check_timeout("timeout of wait()", timeout)
        self._require_started("wait")
        own = self._own_thread()
        if own is not None:
            raise OwnThreadError(
                f"wait() called from {own}, a thread of the tree it waits for, would wait "
                "for itself: call cancel() and return from the runnable or handler instead"
            )
        stopped = self._join(timeout)
        failures = self._processor.gave_up
        if stopped and failures is not None:
            raise GaveUp(failures)
        return stopped

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (no request, no backoff restart, no log
        record on its way to the handlers) and nothing has started, exited or
        signalled for 50 ms; ``False`` on timeout. Meant for tests."""
        until = deadline_after(check_timeout("timeout of wait_settled()", timeout))
        self._require_started("wait_settled")
        settled = threading.Event()
        self._processor.add_settle_waiter(settled)
        try:
            return wait_in_turns(settled.wait, until)
        finally:
            self._processor.remove_settle_waiter(settled)

    def snapshot(self) -> dict[str, NodeStatus]:
        """The status of every node, by DN, parents before children."""
        now, wall = time.monotonic(), time.time()
        # Only copies under the lock, which the processor needs: building the
        # statuses of a thousand nodes there would hold up restarts meanwhile.
        with self._tree.lock:  # abandoning changes both the node and this count
            abandoned = self._processor.abandoned()
            moments = [(node, node.moment()) for node in self._root.walk()]
        ended = self._processor.ended.is_set()
        return {
            node.dn: node.status(moment, now, wall, abandoned[node.dn], ended)
            for node, moment in moments
        }

    def subscribe(self, callback: Callback, *, max_queued: int = MAX_QUEUED) -> Callable[[], None]:
        """Call ``callback(event)`` with a `threadsup.Event` for every lifecycle
        record from now on, in their order; return a function that unsubscribes
        (idempotent; callable from the callback too).

        The callback runs on a thread of its own, never under a lock of the tree:
        one that raises is logged (at most once a minute) and stays subscribed;
        one that falls behind by more than ``max_queued`` events loses the newer
        ones, and a WARNING says how many once it catches up. Once the tree has
        stopped, it has one second to deliver what is queued, and is then
        abandoned. Subscribing to a stopped tree delivers nothing.
        """
        if not callable(callback):
            raise TypeError(
                f"subscribe() takes a callable, called with each threadsup.Event, not {callback!r}"
            )
        _require_count("max_queued of subscribe()", max_queued, 1, "events queued per subscriber")
        return self._subscribers.subscribe(callback, max_queued)

    def logs(self, dn: str) -> list[logging.LogRecord]:
        """The last records of the node at ``dn``, oldest first: its lifecycle
        records (whatever their level) and those its logger made; ``[]`` without
        a backlog (``log_backlog=0``). Unknown DNs raise `UnknownNode`."""
        with self._tree.lock:
            node = self._find(dn)
        backlog = self._tree.events.backlog
        return [] if backlog is None else backlog.records(node)

    def ready(self) -> bool:
        """Whether the tree is up: running (started, not stopping, not stopped)
        with the root and every permanent node HEALTHY or DONE.

        Transient and temporary nodes do not count, nor does the subtree of one
        that will not run again. Cheap: one walk of the tree, no status built.
        """
        with self._tree.lock:
            return (
                self._processor.stop_asked_at is None
                and not self._tree.stopping
                and ready(self._root)
            )

    def summary(self) -> str:
        """The tree on one short line, such as ``12 nodes: 11 HEALTHY, 1 DEAD
        (root.db)``: how many nodes are in each state, naming the first few NEW,
        DEAD and stuck ones."""
        with self._tree.lock:
            return summary(self._root)

    def render(self) -> str:
        """The tree as text, like ``pstree``: one line per node with its state,
        uptime, restarts and last error. For logs, demos and debugging."""
        return render_tree(self.snapshot(), time.time())

    def thread_dump(self, *, running_only: bool = False) -> str:
        """The tree (`render`), then the stack of every runnable thread still
        running, under its DN: what an operator asks for when a program hangs.
        ``running_only`` leaves the tree out."""
        with self._tree.lock:
            threads = self._processor.runnable_threads()
        frames = current_frames()  # once for all: it costs a dict entry per thread
        stacks = [
            f"{dn} (thread {thread.name!r}):\n{stack_of(thread, frames)}" for dn, thread in threads
        ]
        parts = [] if running_only else [self.render()]
        parts.append("\n\n".join(stacks) if stacks else "(no runnable thread is running)")
        return "\n\n".join(parts)

    def restart(self, dn: str) -> None:
        """Restart the subtree at ``dn``: cancel it; it comes back per its policy.

        A node waiting for a backoff restart restarts now; one that gave up is
        given its intensity back. A temporary node does not come back. Unknown
        DNs raise `UnknownNode` (a `KeyError`).
        """
        with self._tree.lock:
            node = self._find(dn)
            node.gave_up = None
            node.deaths.clear()
            node.restart_due = None
            self._processor.ask_restart(node)
            if node.state is State.DONE and not node.running and node.policy.restart != "temporary":
                node.state = State.CANCELLED
            cancelled = cancel_subtree(node)
        try:
            fire(self._tree, cancelled)  # a callback's Ctrl-C reaches the caller...
        finally:
            self._processor.check(node)  # ...with the restart asked for all the same

    def remove(self, dn: str, timeout: float | None = None) -> bool:
        """Cancel a child added by `CancelToken.spawn` and wait for it to leave the tree.

        ``True`` once it has, ``False`` on timeout (it leaves once its threads
        exit). Unknown DNs raise `UnknownNode`; a child not spawned raises
        `NotDynamic`.
        """
        timeout = check_timeout(f"timeout of remove({dn!r})", timeout)
        with self._tree.lock:
            node = self._find(dn)
            if not node.dynamic:
                raise NotDynamic(
                    f"{dn} was started with run() or run_group(), so it cannot be removed; "
                    "restart(dn) restarts it, and its parent decides which children it runs"
                )
            if node.removed is None:
                node.removed = threading.Event()
            removed = node.removed
            node.removing = True
            cancelled = cancel_subtree(node)
            if not node.busy:
                drop(node)
        fire(self._tree, cancelled)
        own = self._own_thread()
        if own is not None and (own == node.dn or own.startswith(f"{node.dn}.")):
            return removed.is_set()  # like stop(): the caller's own thread cannot have ended
        return wait_in_turns(removed.wait, deadline_after(timeout))

    def _find(self, dn: str) -> Node:
        """The node at ``dn``; the caller holds the tree lock."""
        if not isinstance(dn, str):
            raise UnknownNode(f"a DN is a str like 'root.a.b', not {dn!r}")
        first, *names = dn.split(".")
        node: Node | None = self._root if first == self._root.name else None
        for name in names:
            if node is None:
                break
            node = node.children.get(name)
        if node is None:
            raise UnknownNode(f"no node {dn!r} in the tree: snapshot() lists the DNs there are")
        return node

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(self.shutdown_timeout)

    def _report_unstopped(self, timeout: float | None) -> None:
        unstopped = [
            status.dn
            + (f" (stuck, cancelled {status.stuck_for:.1f} s ago)" if status.stuck_for else "")
            + (f" ({status.abandoned} abandoned)" if status.abandoned else "")
            for status in self.snapshot().values()
            if status.running or status.abandoned
        ]
        unstopped.extend(self._processor.blocked_callbacks())
        self._tree.events.emit(
            logging.WARNING,
            _logs.STOP_TIMED_OUT,
            self._root.dn,
            "the tree did not stop within %.1f s; still running: %s",
            timeout,
            ", ".join(unstopped) or "(only the supervisor's own threads)",
            delivery="now",  # out before stop() returns False
            running=unstopped,
        )

    # For threadsup's own modules (the systemd notifier).

    def _every(self, interval: float, function: Callable[[], None]) -> Callable[[], None]:
        """Call ``function`` on the processor thread every ``interval`` seconds
        (see `Processor.every`); return its disarm."""
        return self._processor.every(interval, function)

    def _readiness(self) -> tuple[bool, list[str]]:
        """`ready`, and the DNs of the nodes that keep the tree from it
        (`threadsup._node.unready`): what the status server's /readyz says."""
        with self._tree.lock:
            running = self._processor.stop_asked_at is None and not self._tree.stopping
            dns = [node.dn for node in unready(self._root)]
        return running and not dns, dns

    def _liveness(self) -> tuple[bool, str]:
        """Whether the processor runs and the root has not given up, and a word
        on why: what the status server's /healthz says."""
        processor = self._processor
        if processor.failure is not None:
            return False, "threadsup's processor failed: see the log for its traceback"
        if processor.gave_up is not None:
            return False, str(GaveUp(processor.gave_up))
        if processor.ended.is_set():
            return False, "stopped"
        if not self._started:
            return False, "not started"
        return True, "stopping" if processor.stop_asked_at is not None else "running"

    def _activity(self) -> float:
        """When a runnable last started, exited or signalled (`time.monotonic`):
        a cheap sign that `summary` and `ready` may have changed."""
        return self._tree.last_activity

    def _census(self) -> Census:
        """The figures `threadsup.prometheus` reports, all read at one moment."""
        now, wall = time.monotonic(), time.time()
        with self._tree.lock:
            return Census(
                self.ready(),
                self._processor.abandoned(),
                census(self._root),
                now,
                wall,
            )

    def _emit(self, level: int, event: str, msg: str, *args: object) -> None:
        """Log a record of the supervisor's own, as its lifecycle records are."""
        self._tree.events.emit(level, event, self._root.dn, msg, *args)

    def _require_started(self, method: str) -> None:
        if not self._started:
            raise NotStarted(f"{method}() needs a started Supervisor: call start() first")

    def _own_thread(self) -> str | None:
        """The name of the calling thread if this supervisor started it: a
        runnable's, a helper's, or the log dispatcher's, where handlers run."""
        thread = threading.current_thread()
        if (
            isinstance(thread, SupervisedThread) and thread.tree is self._tree
        ) or self._tree.events.is_dispatcher(thread):
            return thread.name
        return None

    def _join(self, timeout: float | None) -> bool:
        joined = self._processor.join(timeout)
        failure = self._processor.failure
        if failure is not None:
            raise ProcessorFailed(
                f"the threadsup processor failed ({type(failure).__name__}: {failure}); "
                "the tree was cancelled: see the log for the traceback and report it"
            ) from failure
        return joined


def _require_count(name: str, value: object, minimum: int, what: str) -> None:
    """Raise unless ``value`` is an int >= ``minimum`` (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int ({what}), not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({what}), not {value!r}")


# Interpreter exit: runnable threads are daemon threads, so a forgotten
# supervisor cannot keep the process alive; this hook first gives its tree up to
# `shutdown_timeout` to stop cleanly. It holds the processors, not the
# supervisors: a tree runs on after a program drops its Supervisor object.

_running: set[Processor] = set()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _stop_at_exit(processor: Processor) -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        _running.difference_update([p for p in _running if p.ended.is_set()])
        _running.add(processor)
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    # threading's exit hooks run before the interpreter waits for threads and
    # while daemon threads still run, unlike `atexit`'s (Python 3.9+).
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(_stop_all)
        else:
            atexit.register(_stop_all)
    except RuntimeError:  # already shutting down: nothing left to protect
        pass


def _skip_at_exit(processor: Processor) -> None:
    """Let interpreter exit leave this tree's threads as they are, without
    waiting for them: the program has given up on them and exits at once."""
    with _exit_hook_lock:
        _running.discard(processor)


def _stop_all() -> None:
    with _exit_hook_lock:
        running = [p for p in _running if not p.ended.is_set()]
    for processor in running:
        processor.stop()
    # Each tree gets ``shutdown_timeout`` from when its stop began, not from now:
    # a `with` block that already waited that long is not waited for again.
    for processor in running:
        began = processor.stop_asked_at
        assert began is not None
        processor.join(remaining(began + processor.shutdown_timeout))


def _forget_trees_after_fork() -> None:
    """In a forked child: none of the parent's trees runs here, so the exit hook
    has nothing to stop or wait for (as `concurrent.futures` does)."""
    global _exit_hook_lock
    _exit_hook_lock = threading.Lock()  # another thread of the parent may have held it
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_trees_after_fork)


class Census(NamedTuple):
    """A supervisor's figures for its metrics (`Supervisor._census`)."""

    ready: bool
    #: Abandoned threads still running, by DN (nodes gone from the tree too).
    abandoned: Counter[str]
    #: The nodes that are their own anchor (see `threadsup._node.census`).
    nodes: list[Figures]
    #: When it was read, as `time.monotonic` and as `time.time`.
    now: float
    wall: float
