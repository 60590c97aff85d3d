"""Helpers for testing code that runs under a threadsup `Supervisor`.

They are public: threadsup's own suite is built on them, and so can yours.

- `RemoteRunnable`: a remote-controlled runnable. Each incarnation is an
  `Incarnation` that the test drives from outside (signal, run children, run any
  function in the runnable's own thread, return, raise) and whose start and exit
  it observes through events and timestamps.
- `wait_until`, `wait_snapshot`, `wait_status`: bounded waits on a condition or on
  `Supervisor.snapshot()`; on timeout they raise `AssertionError` with the last
  snapshot, so a hang fails fast and says why.
- `wait_blocked`: waits until a thread is inside a given call (its innermost
  frame at a line holding a given text), to prove a runnable blocks before a
  test cancels it.
- `no_thread_leak`: a context manager that fails when threads started inside it are
  still alive after a bounded wait.
- `RecordingHandler` / `capture_logs`: a logging handler that keeps records and
  waits (bounded) for one that matches, since the supervisor delivers its records
  from a thread of its own.
- `Harness`: starts supervisors on an isolated logger and stops them at the end;
  `CheckedHarness` (the pytest plugin's ``supervise`` fixture) also fails on an
  unexpected death or a leaked thread.
- Small runnables: `healthy_until_cancelled`, `done_at_once`, `group_root`,
  `spawner`, and `raising` to build a callback that raises.

Every wait here has a timeout; none waits forever.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import linecache
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable, TypeVar, cast

from threadsup import Backoff, CancelToken, NodeStatus, Runnable, Signal, Supervisor
from threadsup._processor import current_frames
from threadsup._render import LAST_ERROR, RESTARTS, RUNNING, STATE, render

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAST_BACKOFF",
    "AtLeast",
    "CheckedHarness",
    "Harness",
    "Incarnation",
    "RecordingHandler",
    "RemoteRunnable",
    "capture_logs",
    "check_no_new_threads",
    "done_at_once",
    "format_snapshot",
    "group_root",
    "healthy_until_cancelled",
    "no_thread_leak",
    "raising",
    "run_each",
    "spawner",
    "wait_blocked",
    "wait_snapshot",
    "wait_status",
    "wait_until",
]

T = TypeVar("T")

#: Default bound, in seconds, of every wait in this module.
DEFAULT_TIMEOUT = 10.0

#: A backoff that keeps tests fast: 10 ms, growing to at most 200 ms, no jitter.
FAST_BACKOFF = Backoff(initial=0.01, multiplier=1.5, maximum=0.2, jitter=0.0)

_POLL = 0.005


# --------------------------------------------------------------------------- waits


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; `AssertionError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(_POLL)


def wait_blocked(ident: int, needle: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until thread ``ident``'s innermost Python frame is at a source line
    holding ``needle`` (say ``".recv("``); `AssertionError` after ``timeout`` s.

    Being at the line is not proof of sleeping in it: a test that needs the
    thread asleep waits a little longer, then checks it has not moved on.
    """

    def at_the_call() -> bool:
        frame = current_frames().get(ident)
        if frame is None:
            return False
        return needle in linecache.getline(frame.f_code.co_filename, frame.f_lineno or 0)

    wait_until(at_the_call, timeout, f"thread {ident} to block at {needle!r}")


def format_snapshot(snapshot: Mapping[str, NodeStatus]) -> str:
    """The snapshot as a table, for assertion messages: a header, then one line
    per node with its DN (indented by depth), state, running, restarts and last
    error, in full."""
    return render(snapshot, [STATE, RUNNING, RESTARTS, LAST_ERROR])


def wait_snapshot(
    sup: Supervisor,
    predicate: Callable[[Mapping[str, NodeStatus]], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "snapshot condition",
) -> dict[str, NodeStatus]:
    """Poll ``sup.snapshot()`` until ``predicate`` holds and return that snapshot.

    Raises `AssertionError` with the last snapshot after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        snap = sup.snapshot()
        if predicate(snap):
            return snap
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; last snapshot:\n"
                + format_snapshot(snap)
            )
        time.sleep(_POLL)


class AtLeast:
    """A value equal to any number ``>= n``: ``wait_status(sup, dn, restarts=AtLeast(2))``."""

    def __init__(self, n: float) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (int, float)) and other >= self.n

    def __hash__(self) -> int:
        return hash(self.n)

    def __repr__(self) -> str:
        return f"AtLeast({self.n})"


def _status_matches(status: NodeStatus | None, fields: Mapping[str, object]) -> bool:
    if status is None:
        return False
    return all(getattr(status, key) == value for key, value in fields.items())


def wait_status(
    sup: Supervisor,
    dn: str,
    timeout: float = DEFAULT_TIMEOUT,
    **fields: object,
) -> NodeStatus:
    """Wait until node ``dn`` exists and each ``NodeStatus`` field equals ``fields``.

    Example: ``wait_status(sup, "root.a", state=State.DEAD, running=False)``.
    """
    wanted = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    snap = wait_snapshot(
        sup,
        lambda s: _status_matches(s.get(dn), fields),
        timeout,
        f"{dn} with {wanted or 'any status'}",
    )
    return snap[dn]


# --------------------------------------------------------------------- thread leaks


@contextlib.contextmanager
def no_thread_leak(timeout: float = 5.0) -> Iterator[None]:
    """Fail when threads started inside the block are alive ``timeout`` s after it.

    Only a block that ends normally is checked, so a failure inside it is not
    hidden behind a leak report.
    """
    before = set(threading.enumerate())
    yield
    check_no_new_threads(before, timeout)


def check_no_new_threads(before: set[threading.Thread], timeout: float = 5.0) -> None:
    """Join every live thread not in ``before``; `AssertionError` if any outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            names = sorted(t.name for t in leaked)
            raise AssertionError(
                f"{len(leaked)} thread(s) still alive {timeout} s after the test: {names}"
            )
        leaked[0].join(min(remaining, 0.1))


# -------------------------------------------------------------------------- logging


class RecordingHandler(logging.Handler):
    """A handler that keeps every record it sees; thread-safe."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._kept: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self._kept.append(record)
            self._cond.notify_all()

    @property
    def records(self) -> list[logging.LogRecord]:
        """A copy of the records seen so far."""
        with self._cond:
            return list(self._kept)

    def clear(self) -> None:
        """Forget the records seen so far."""
        with self._cond:
            self._kept.clear()

    def find(self, **fields: object) -> list[logging.LogRecord]:
        """Records whose attributes equal ``fields`` (e.g. ``event="died", dn="root.a"``)."""
        return [r for r in self.records if _record_matches(r, fields)]

    def wait_for(self, timeout: float = DEFAULT_TIMEOUT, **fields: object) -> logging.LogRecord:
        """Wait for a record matching ``fields`` and return the first one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self._kept:
                    if _record_matches(record, fields):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(
                        f"  {r.name} {r.levelname} event={getattr(r, 'event', None)!r} "
                        f"dn={getattr(r, 'dn', None)!r}: {r.getMessage()}"
                        for r in self._kept
                    )
                    raise AssertionError(
                        f"no log record with {fields!r} after {timeout} s; seen:\n{seen}"
                    )
                self._cond.wait(remaining)


_MISSING = object()


def _record_matches(record: logging.LogRecord, fields: Mapping[str, object]) -> bool:
    return all(getattr(record, k, _MISSING) == v for k, v in fields.items())


@contextlib.contextmanager
def capture_logs(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[RecordingHandler]:
    """Attach a `RecordingHandler` to ``logger`` (at ``level``) for the block."""
    handler = RecordingHandler()
    old_level = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# ------------------------------------------------------------- remote-controlled runnable


class _Command:
    __slots__ = ("done", "error", "fn", "result", "terminal")

    def __init__(self, fn: Callable[[CancelToken], object], terminal: bool) -> None:
        self.fn = fn
        self.terminal = terminal
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class Incarnation:
    """One run of a `RemoteRunnable`: one call of the runnable with one token.

    Commands sent here run in the runnable's own thread, in order.
    """

    def __init__(self, index: int, token: CancelToken) -> None:
        #: 0 for the first run, 1 for the first restart, ...
        self.index = index
        self.token = token
        self.thread_name = threading.current_thread().name
        #: ``time.monotonic()`` when the runnable was called.
        self.started_at = time.monotonic()
        #: ``time.monotonic()`` just before the runnable returned or raised.
        self.exited_at: float | None = None
        #: "returned" or "raised" once exited.
        self.outcome: str | None = None
        #: What the runnable raised, if it did.
        self.error: BaseException | None = None
        #: Set when the runnable has noticed its token's cancellation.
        self.cancel_seen = threading.Event()
        #: Set just before the runnable returns or raises.
        self.exited = threading.Event()
        self._queue: queue.Queue[_Command | None] = queue.Queue()

    def __repr__(self) -> str:
        return f"<Incarnation {self.index} of {self.token.dn} outcome={self.outcome}>"

    # -- driving

    def _send(self, cmd: _Command, timeout: float) -> None:
        if self.exited.is_set():
            raise RuntimeError(f"{self!r} has already exited")
        self._queue.put(cmd)
        if not cmd.done.wait(timeout):
            raise TimeoutError(f"{self!r} did not run the command within {timeout} s")

    def call(self, fn: Callable[[CancelToken], T], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run ``fn(token)`` in the runnable's thread; return its result or raise its error.

        The runnable goes on running whatever ``fn`` does.
        """
        cmd = _Command(fn, terminal=False)
        self._send(cmd, timeout)
        if cmd.error is not None:
            raise cmd.error
        return cast(T, cmd.result)

    def signal(self, signal: Signal, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``token.signal(signal)`` in the runnable's thread; its error is re-raised here."""
        self.call(lambda t: t.signal(signal), timeout)

    def healthy(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``signal(Signal.HEALTHY)``."""
        self.signal(Signal.HEALTHY, timeout)

    def done(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``signal(Signal.DONE)``."""
        self.signal(Signal.DONE, timeout)

    def run(
        self,
        name: object,
        runnable: object,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``token.run(name, runnable)`` in the runnable's thread (arguments unchecked)."""
        self.call(lambda t: t.run(name, runnable), timeout)  # type: ignore[arg-type]

    def run_group(self, runnables: object, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``token.run_group(runnables)`` in the runnable's thread (argument unchecked)."""
        self.call(lambda t: t.run_group(runnables), timeout)  # type: ignore[arg-type]

    def exit_with(
        self, fn: Callable[[CancelToken], object], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Run ``fn(token)`` in the runnable's thread, then return (or raise what it raised)."""
        self._send(_Command(fn, terminal=True), timeout)

    def die(self, exc: BaseException | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Make the runnable raise ``exc`` (default ``RuntimeError("died on request")``)."""
        error = exc if exc is not None else RuntimeError("died on request")
        self.exit_with(raising(error), timeout)

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Make the runnable return normally."""
        self.exit_with(lambda t: None, timeout)

    def wait_exited(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Wait until the runnable is about to return or raise (`exited`); ``False`` on timeout."""
        return self.exited.wait(timeout)

    # -- used by the runnable

    def _wake(self) -> None:
        self._queue.put(None)

    def _next(self) -> _Command | None:
        try:
            return self._queue.get(timeout=0.1)
        except queue.Empty:
            return None

    def _close(self) -> None:
        self.exited_at = time.monotonic()
        self.exited.set()
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            if cmd is not None:
                cmd.error = RuntimeError(f"{self!r} exited before running the command")
                cmd.done.set()


class RemoteRunnable:
    """A runnable driven from outside, for tests; see `Incarnation`.

    Each call (each incarnation of the node) first runs ``setup(token)`` if given
    (to start children, say), then serves commands until told to exit or until its
    token is cancelled. On cancellation it waits for ``linger`` (at most
    ``linger_timeout`` s) if given, so it can play a runnable that ignores
    cancellation for a while, then calls ``when_cancelled(token)`` if given (which
    may raise), then returns.

    The same object may be used as the runnable of one node only.
    """

    def __init__(
        self,
        setup: Runnable | None = None,
        *,
        when_cancelled: Runnable | None = None,
        linger: threading.Event | None = None,
        linger_timeout: float = 30.0,
    ) -> None:
        self._setup = setup
        self._when_cancelled = when_cancelled
        self._linger = linger
        self._linger_timeout = linger_timeout
        self._incarnations: list[Incarnation] = []
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        with self._cond:
            dn = self._incarnations[0].token.dn if self._incarnations else "?"
            return f"<RemoteRunnable {dn} runs={len(self._incarnations)}>"

    @property
    def incarnations(self) -> list[Incarnation]:
        """A copy of the runs so far, the first one first."""
        with self._cond:
            return list(self._incarnations)

    @property
    def count(self) -> int:
        """How many times the runnable has been called."""
        with self._cond:
            return len(self._incarnations)

    @property
    def current(self) -> Incarnation:
        """The latest incarnation; `AssertionError` if there is none yet."""
        with self._cond:
            if not self._incarnations:
                raise AssertionError(f"{self!r} has not started")
            return self._incarnations[-1]

    def wait_incarnation(self, index: int, timeout: float = DEFAULT_TIMEOUT) -> Incarnation:
        """Wait until incarnation ``index`` (0 = first run) has started and return it."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._incarnations) > index, timeout)
            if not ok:
                raise AssertionError(
                    f"{self!r}: incarnation {index} did not start within {timeout} s"
                )
            return self._incarnations[index]

    def __call__(self, token: CancelToken) -> None:
        with self._cond:
            inc = Incarnation(len(self._incarnations), token)
            self._incarnations.append(inc)
            self._cond.notify_all()
        try:
            self._serve(inc, token)
        except BaseException as exc:
            inc.outcome = "raised"
            inc.error = exc
            raise
        else:
            inc.outcome = "returned"
        finally:
            inc._close()

    def _serve(self, inc: Incarnation, token: CancelToken) -> None:
        unregister = token.on_cancel(inc._wake)
        try:
            if self._setup is not None:
                self._setup(token)
            while True:
                if token.cancelled:
                    inc.cancel_seen.set()
                    if self._linger is not None:
                        self._linger.wait(self._linger_timeout)
                    if self._when_cancelled is not None:
                        self._when_cancelled(token)
                    return
                cmd = inc._next()
                if cmd is None:
                    continue
                try:
                    cmd.result = cmd.fn(token)
                except BaseException as exc:
                    cmd.error = exc
                    cmd.done.set()
                    if cmd.terminal:
                        raise
                    continue
                cmd.done.set()
                if cmd.terminal:
                    return
        finally:
            unregister()


# ------------------------------------------------------------------ small runnables


def raising(exc: BaseException) -> Callable[[CancelToken], None]:
    """A callable that takes a token and raises ``exc``."""

    def fn(token: CancelToken) -> None:
        raise exc

    return fn


def healthy_until_cancelled(token: CancelToken) -> None:
    """Signal HEALTHY, then wait for cancellation and return."""
    token.signal(Signal.HEALTHY)
    token.wait()


def done_at_once(token: CancelToken) -> None:
    """Signal HEALTHY and DONE, then return."""
    token.signal(Signal.HEALTHY)
    token.signal(Signal.DONE)


def group_root(
    children: Mapping[str, Runnable], *, done: bool = True
) -> Callable[[CancelToken], None]:
    """A runnable that starts ``children`` as one group and signals HEALTHY.

    With ``done`` it then signals DONE and returns (the children go on running);
    otherwise it waits for cancellation.
    """

    def root(token: CancelToken) -> None:
        token.run_group(dict(children))
        token.signal(Signal.HEALTHY)
        if done:
            token.signal(Signal.DONE)
        else:
            token.wait()

    return root


def run_each(**runnables: Runnable) -> Callable[[CancelToken], None]:
    """A setup function that runs each of ``runnables`` in a group of its own.

    Example: ``RemoteRunnable(run_each(a=child_a, b=child_b))``.
    """

    def setup(token: CancelToken) -> None:
        for name, runnable in runnables.items():
            token.run(name, runnable)

    return setup


def spawner(
    levels: int, on_healthy: threading.Semaphore | None = None
) -> Callable[[CancelToken], None]:
    """A runnable that starts a group of two spawners one level down (``a``, ``b``),
    signals HEALTHY and waits for cancellation: a full binary tree of ``levels`` levels.

    ``on_healthy`` is released by the top runnable each time it becomes healthy.
    """

    def run(token: CancelToken) -> None:
        if levels > 0:
            token.run_group({"a": spawner(levels - 1), "b": spawner(levels - 1)})
        token.signal(Signal.HEALTHY)
        if on_healthy is not None:
            on_healthy.release()
        token.wait()

    return run


# -------------------------------------------------------------------------- harness


_harness_ids = itertools.count(1)


class Harness:
    """Starts supervisors for one test and cleans up after it.

    Each harness has its own base logger (``threadsup_test.<n>``, level DEBUG)
    with a `RecordingHandler` on it, so tests can wait for log records without
    seeing other tests'. `close` opens every gate made by `gate`, then stops every
    supervisor started by `start` and asserts that each stop succeeded.

    ``stop_timeout`` bounds `close`'s stop of all the supervisors together;
    ``shutdown_timeout`` is the default of the supervisors it makes.
    """

    def __init__(
        self, stop_timeout: float = DEFAULT_TIMEOUT, *, shutdown_timeout: float = 10.0
    ) -> None:
        self.logger = logging.getLogger(f"threadsup_test.{next(_harness_ids)}")
        self.logs = RecordingHandler()
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.logs)
        self.stop_timeout = stop_timeout
        self.shutdown_timeout = shutdown_timeout
        self._sups: list[Supervisor] = []
        self._gates: list[threading.Event] = []

    @property
    def base(self) -> str:
        """The name of the base logger given to supervisors."""
        return self.logger.name

    def supervisor(
        self,
        root: Runnable,
        *,
        backoff: Backoff | None = FAST_BACKOFF,
        shutdown_timeout: float | None = None,
        **options: Any,
    ) -> Supervisor:
        """A new, not yet started supervisor on this harness's logger.

        ``shutdown_timeout`` defaults to the harness's; ``options`` go to
        `Supervisor` as they are (``max_restarts=``, ``log_backlog=``, ...).
        """
        if shutdown_timeout is None:
            shutdown_timeout = self.shutdown_timeout
        return Supervisor(
            root,
            logger=self.logger,
            backoff=backoff,
            shutdown_timeout=shutdown_timeout,
            **options,
        )

    def start(
        self,
        root: Runnable,
        *,
        backoff: Backoff | None = FAST_BACKOFF,
        shutdown_timeout: float | None = None,
        **options: Any,
    ) -> Supervisor:
        """Start a supervisor (made as by `supervisor`) that `close` will stop."""
        sup = self.supervisor(root, backoff=backoff, shutdown_timeout=shutdown_timeout, **options)
        self.track(sup)
        return sup.start()

    def track(self, sup: Supervisor) -> Supervisor:
        """Have `close` stop ``sup`` (which the test started itself)."""
        self._sups.append(sup)
        return sup

    def gate(self) -> threading.Event:
        """A fresh event that `close` sets before stopping the supervisors."""
        event = threading.Event()
        self._gates.append(event)
        return event

    def close(self) -> None:
        """Open the gates, stop every supervisor within ``stop_timeout`` in all,
        and raise `AssertionError` naming what still runs if any did not stop."""
        for gate in self._gates:
            gate.set()
        try:
            # Cancelled together, the trees wind down at once rather than one
            # after the other, so one deadline bounds the whole teardown.
            for sup in self._sups:
                sup.cancel()
            deadline = time.monotonic() + self.stop_timeout
            failed = [s for s in self._sups if not s.stop(max(0.0, deadline - time.monotonic()))]
            if failed:
                still = "".join(
                    f"\n  {r.getMessage()}" for r in self.logs.find(event="stop_timed_out")
                )
                raise AssertionError(
                    f"{len(failed)} supervisor(s) did not stop within {self.stop_timeout} s:{still}"
                )
        finally:
            self.logger.removeHandler(self.logs)


class CheckedHarness(Harness):
    """A `Harness` that also fails a test on what it should not leave behind:
    a death it did not expect, or a thread still alive after the stop.

    Calling it is `start`: ``sup = harness(root)``. Every DEAD exit of a node
    of its supervisors is a death; one whose DN matches a pattern given to
    `expect_death` is expected. The threads alive when it was made are the
    baseline of the leak check.
    """

    def __init__(
        self,
        stop_timeout: float = DEFAULT_TIMEOUT,
        *,
        shutdown_timeout: float = 2.0,
        leak_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout, shutdown_timeout=shutdown_timeout)
        #: How long `close` waits for the threads started since to end.
        self.leak_timeout = leak_timeout
        self._threads_before = set(threading.enumerate())
        self._expected: list[str] = []

    __call__ = Harness.start

    def expect_death(self, *patterns: str) -> None:
        """Declare that the nodes whose DNs match ``patterns`` (`fnmatch` style:
        ``"root.flaky"``, ``"root.pool.*"``, ``"*"``) may die: they need not."""
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(
                    f"expect_death() takes DNs or DN patterns (str), not {type(pattern).__name__}"
                )
        self._expected.extend(patterns)

    def unexpected_deaths(self) -> list[logging.LogRecord]:
        """The records of the deaths so far that no `expect_death` pattern matches."""
        return [
            record
            for record in self.logs.find(event="died")
            if not any(fnmatch.fnmatchcase(_dn(record), p) for p in self._expected)
        ]

    def close(self) -> None:
        """Stop as `Harness.close` does, then raise one `AssertionError` telling
        every unexpected death (DN and traceback), failed stop and leaked thread."""
        problems: list[str] = []
        try:
            super().close()
        except AssertionError as exc:
            problems.append(str(exc))
        deaths = self.unexpected_deaths()
        if deaths:
            problems.insert(0, _describe_deaths(deaths))
        try:
            check_no_new_threads(self._threads_before, self.leak_timeout)
        except AssertionError as exc:
            problems.append(str(exc))
        if problems:
            raise AssertionError("\n\n".join(problems))


def _dn(record: logging.LogRecord) -> str:
    """The DN of a lifecycle record (an extra field, unknown to `logging.LogRecord`)."""
    return str(getattr(record, "dn", "?"))


def _describe_deaths(deaths: list[logging.LogRecord]) -> str:
    """Each DN that died, how often, and its first death's message and traceback."""
    by_dn: dict[str, list[logging.LogRecord]] = {}
    for record in deaths:
        by_dn.setdefault(_dn(record), []).append(record)
    formatter = logging.Formatter()
    parts = [
        f"{len(deaths)} unexpected death(s); if the test expects them, declare it "
        f"with expect_death({next(iter(by_dn))!r}):"
    ]
    for records in by_dn.values():
        first = records[0]
        more = f" ({len(records)} deaths, the first shown)" if len(records) > 1 else ""
        parts.append(first.getMessage() + more)
        if first.exc_info:
            parts.append(formatter.formatException(first.exc_info))
    return "\n".join(parts)
