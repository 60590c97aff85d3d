"""Wake-up latency: how soon a runnable blocked in a token helper sees its cancellation.

Each sample starts a fresh supervisor whose runnable blocks in one helper, waits
until its thread is blocked there (its innermost Python frame is at the blocking
call, then 2 ms more to be sure it sleeps in the kernel), cancels, and measures from
the cancelling call to the moment the helper returned or raised in the runnable.
Two ways to cancel:

- ``cancel``: ``sup.cancel()`` from the main thread (through the supervisor's
  processor, which fires the tokens on a helper thread);
- ``sibling``: a member of the blocked runnable's group raises; its own thread
  cancels its group and fires the tokens.

``wakeup.fail_after.deadline`` measures how late after its deadline a
``fail_after`` block ends. ``wakeup.floor`` is the least any of this can cost: a
bare thread blocked in ``threading.Event.wait()`` woken by ``set()`` from another
thread; every other row is also given as a multiple of it.

Logging stays on at its default level (WARNING, so the sibling's death is logged
at ERROR with its traceback), into a handler that drops the records.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Callable

from benchmarks import Measure, quiet_logger, register, supervisor
from threadsup import Backoff, CancelToken, Signal
from threadsup.testing import wait_blocked

#: How long to let a thread that reached its blocking call go to sleep in it.
SETTLE = 0.002
#: Bound of every wait here; a benchmark that hits it fails loudly.
TIMEOUT = 10.0
#: The deadline of each fail_after sample.
DEADLINE = 0.01

# Where a blocked thread's innermost Python frame is, by helper.
IN_CONDITION = "waiter.acquire("  # threading.Condition.wait: events, queues, futures
IN_RECV = ".recv("
IN_ACCEPT = "self._accept()"


LOGGER = quiet_logger("threadsup_benchmarks")

#: A sibling's death restarts it after this; samples stop their tree before that.
_BACKOFF = Backoff(initial=1.0, jitter=0)


def _asleep_at(ident: int, needle: str) -> None:
    """Wait until thread ``ident`` is at a line holding ``needle``, and asleep there."""
    wait_blocked(ident, needle, TIMEOUT)
    time.sleep(SETTLE)


class _Sample:
    """One blocked runnable: when it started blocking and when it woke."""

    def __init__(self, body: Callable[[CancelToken], object]) -> None:
        self.body = body
        self.ident = 0
        self.ready = threading.Event()
        self.woke = threading.Event()
        self.woke_at = 0.0
        self.runs = 0

    def __call__(self, token: CancelToken) -> None:
        self.runs += 1
        if self.runs > 1:  # restarted with its group: nothing to measure
            token.wait()
            return
        self.ident = threading.get_ident()
        self.ready.set()
        try:
            self.body(token)
        except BaseException:
            pass
        finally:
            self.woke_at = time.perf_counter()
            self.woke.set()


def _measure(body: Callable[[CancelToken], object], needle: str, how: str) -> float:
    """Block ``body`` in a fresh tree, cancel it ``how``; the seconds until it woke."""
    sample = _Sample(body)
    go = threading.Event()
    cancelled_at = [0.0]
    if how == "cancel":
        root: Callable[[CancelToken], None] = sample
    else:
        sibling_runs = [0]

        def sibling(token: CancelToken) -> None:
            sibling_runs[0] += 1
            if sibling_runs[0] > 1:
                token.wait()
                return
            go.wait(TIMEOUT)
            cancelled_at[0] = time.perf_counter()
            raise RuntimeError("the sibling dies")

        def root(token: CancelToken) -> None:
            token.run_group({"blocked": sample, "sibling": sibling})
            token.signal(Signal.HEALTHY)
            token.wait()

    sup = supervisor(root, logger=LOGGER, backoff=_BACKOFF)
    sup.start()
    try:
        if not sample.ready.wait(TIMEOUT):
            raise RuntimeError("the blocked runnable did not start")
        _asleep_at(sample.ident, needle)
        if how == "cancel":
            cancelled_at[0] = time.perf_counter()
            sup.cancel()
        else:
            go.set()
        if not sample.woke.wait(TIMEOUT):
            raise RuntimeError("the blocked runnable was not woken")
    finally:
        go.set()
        if not sup.stop(TIMEOUT):
            raise RuntimeError("the tree did not stop")
    return sample.woke_at - cancelled_at[0]


# ---------------------------------------------------------------- the helpers


@contextlib.contextmanager
def _plain(block: Callable[[CancelToken], object], needle: str, how: str) -> Iterator[Measure]:
    yield lambda: _measure(block, needle, how)


def _wait(token: CancelToken) -> object:
    return token.wait()


def _get(token: CancelToken) -> object:
    return token.get(queue.Queue())


def _put(token: CancelToken) -> object:
    full: queue.Queue[int] = queue.Queue(maxsize=1)
    full.put(0)
    token.put(full, 1)
    return None


def _wait_for_event(token: CancelToken) -> object:
    return token.wait_for(threading.Event())


def _wait_for_future(token: CancelToken) -> object:
    return token.wait_for(concurrent.futures.Future())


@contextlib.contextmanager
def _wait_for_token(how: str) -> Iterator[Measure]:
    """Waits for the token of another, live tree, which is never cancelled meanwhile."""
    other_token: list[CancelToken] = []
    ready = threading.Event()

    def other_root(token: CancelToken) -> None:
        other_token.append(token)
        ready.set()
        token.wait()

    other = supervisor(other_root, logger=LOGGER).start()
    try:
        if not ready.wait(TIMEOUT):
            raise RuntimeError("the other tree did not start")
        yield lambda: _measure(lambda t: t.wait_for(other_token[0]), IN_CONDITION, how)
    finally:
        other.stop(TIMEOUT)


@contextlib.contextmanager
def _closing_recv(how: str) -> Iterator[Measure]:
    """A connection on 127.0.0.1 per sample; the runnable blocks in ``recv``."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        address = listener.getsockname()[:2]

        def measure() -> float:
            with socket.create_connection(address, timeout=TIMEOUT):
                server_side, _ = listener.accept()
                server_side.settimeout(None)
                with server_side:

                    def body(token: CancelToken) -> object:
                        with token.closing(server_side) as conn:
                            return conn.recv(1)

                    return _measure(body, IN_RECV, how)

        yield measure


@contextlib.contextmanager
def _closing_accept(how: str) -> Iterator[Measure]:
    """A listening socket on 127.0.0.1 per sample; the runnable blocks in ``accept``."""

    def measure() -> float:
        with socket.create_server(("127.0.0.1", 0)) as listener:

            def body(token: CancelToken) -> object:
                with token.closing(listener) as server:
                    return server.accept()

            return _measure(body, IN_ACCEPT, how)

    yield measure


HELPERS: dict[str, tuple[str, Callable[[str], contextlib.AbstractContextManager[Measure]]]] = {
    "wait": ("token.wait()", lambda how: _plain(_wait, IN_CONDITION, how)),
    "get": ("token.get(q) on an empty queue", lambda how: _plain(_get, IN_CONDITION, how)),
    "put": ("token.put(q, x) on a full queue", lambda how: _plain(_put, IN_CONDITION, how)),
    "wait_for_event": (
        "token.wait_for(threading.Event())",
        lambda how: _plain(_wait_for_event, IN_CONDITION, how),
    ),
    "wait_for_future": (
        "token.wait_for(concurrent.futures.Future())",
        lambda how: _plain(_wait_for_future, IN_CONDITION, how),
    ),
    "wait_for_token": ("token.wait_for(another live token)", _wait_for_token),
    "closing_recv": ("token.closing(sock) around sock.recv()", _closing_recv),
    "closing_accept": ("token.closing(sock) around sock.accept()", _closing_accept),
}

HOWS = {
    "cancel": "sup.cancel() from the main thread",
    "sibling": "a group sibling raises",
}


def _factory(
    make: Callable[[str], contextlib.AbstractContextManager[Measure]], how: str
) -> Callable[[], contextlib.AbstractContextManager[Measure]]:
    return lambda: make(how)


for _helper, (_what, _make) in HELPERS.items():
    for _how, _how_text in HOWS.items():
        register(
            f"wakeup.{_helper}.{_how}",
            f"{_what}, woken by {_how_text}: from the cancelling call to the helper's return",
            baseline="wakeup.floor",
            tags={"helper": _helper, "how": _how},
        )(_factory(_make, _how))


@register(
    "wakeup.fail_after.deadline",
    f"with token.fail_after({DEADLINE}) around a blocking call: from the deadline "
    "to DeadlineExceeded in the runnable",
    baseline="wakeup.floor",
    tags={"helper": "fail_after", "how": "deadline"},
)
@contextlib.contextmanager
def _fail_after() -> Iterator[Measure]:
    def measure() -> float:
        late = concurrent.futures.Future[float]()

        def root(token: CancelToken) -> None:
            deadline = time.monotonic() + DEADLINE
            try:
                with token.fail_at(deadline) as scoped:
                    scoped.wait_for(threading.Event())
            except TimeoutError:
                late.set_result(time.monotonic() - deadline)
            token.wait()

        with supervisor(root, logger=LOGGER):
            return late.result(TIMEOUT)

    yield measure


@register(
    "wakeup.floor",
    "a bare thread in threading.Event.wait() woken by set() from another thread",
    tags={"helper": "threading.Event", "how": "set"},
)
@contextlib.contextmanager
def _floor() -> Iterator[Measure]:
    def measure() -> float:
        event = threading.Event()
        woke_at = [0.0]

        def waiter() -> None:
            event.wait(TIMEOUT)
            woke_at[0] = time.perf_counter()

        thread = threading.Thread(target=waiter, name="floor-waiter")
        thread.start()
        assert thread.ident is not None
        _asleep_at(thread.ident, IN_CONDITION)
        set_at = time.perf_counter()
        event.set()
        thread.join(TIMEOUT)
        return woke_at[0] - set_at

    yield measure
