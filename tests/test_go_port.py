"""Ports of the Go supervisor's tests (TestSimple, TestSimpleFailure,
TestDeepFailure, TestPanic, TestMultipleLevelFailure, TestResilience).
TestBackoff is ported in test_backoff.py."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from threadsup import CancelToken, Signal, State
from threadsup.testing import (
    AtLeast,
    Harness,
    Incarnation,
    RemoteRunnable,
    group_root,
    spawner,
    wait_snapshot,
    wait_status,
)


def _becomes_healthy(token: CancelToken) -> None:
    token.signal(Signal.HEALTHY)


def healthy_rc() -> RemoteRunnable:
    """Go's runnableBecomesHealthy: HEALTHY at once, then waits for cancellation."""
    return RemoteRunnable(_becomes_healthy)


def test_simple_group_starts(harness: Harness) -> None:
    one, two = healthy_rc(), healthy_rc()
    sup = harness.start(group_root({"one": one, "two": two}))
    assert sup.wait_settled(timeout=10)
    one.wait_incarnation(0)
    two.wait_incarnation(0)
    wait_status(sup, "root.one", state=State.HEALTHY)
    wait_status(sup, "root.two", state=State.HEALTHY)
    wait_status(sup, "root", state=State.DONE, running=False)


def _sibling_failure(
    harness: Harness, one: RemoteRunnable, kill: Callable[[Incarnation], None]
) -> None:
    two = RemoteRunnable()
    sup = harness.start(group_root({"one": one, "two": two}))
    two0 = two.wait_incarnation(0)
    two0.healthy()
    assert sup.wait_settled(timeout=10)
    one0 = one.wait_incarnation(0)
    kill(two0)  # one should be cancelled and restarted
    assert one0.cancel_seen.wait(10)
    one.wait_incarnation(1)
    two.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert (one.count, two.count) == (2, 2)


def test_sibling_failure_restarts_the_group(harness: Harness) -> None:
    _sibling_failure(harness, healthy_rc(), lambda inc: inc.die(RuntimeError("died on request")))


def test_panic_restarts_the_group(harness: Harness) -> None:
    """Go's panic: an unexpected BaseException (not an Exception) in a member."""

    class Panic(BaseException):
        pass

    _sibling_failure(harness, healthy_rc(), lambda inc: inc.die(Panic("at the disco")))


def test_deep_failure_rebuilds_the_whole_sibling_subtree(harness: Harness) -> None:
    became_healthy = threading.Semaphore(0)
    two = RemoteRunnable()
    sup = harness.start(group_root({"one": spawner(5, became_healthy), "two": two}))
    two.wait_incarnation(0).healthy()
    assert became_healthy.acquire(timeout=10)
    snap = wait_snapshot(sup, lambda s: len(s) == 1 + 1 + 63, what="65 nodes")
    assert "root.one.a.b.a.b.a" in snap
    two.current.die()
    assert became_healthy.acquire(timeout=10)  # one restarted and built its subtree again
    snap = wait_snapshot(
        sup,
        lambda s: (
            len(s) == 65
            and all(st.state is State.HEALTHY for dn, st in s.items() if dn.startswith("root.one"))
        ),
        what="root.one's subtree rebuilt and healthy",
    )
    assert snap["root.one"].restarts == 1
    assert snap["root.one.a.b.a.b.a"].restarts == 0


def test_multiple_level_failure(harness: Harness) -> None:
    """Two deep subtrees (31 nodes each) start and settle without a single restart.

    A failure deep in a tree is in test_restarts.test_a_deep_death_restarts_only_its_own_group.
    """
    sup = harness.start(group_root({"one": spawner(4), "two": spawner(4)}))
    wait_snapshot(
        sup,
        lambda s: (
            len(s) == 1 + 2 * 31
            and all(st.state is State.HEALTHY for dn, st in s.items() if dn != "root")
        ),
        what="both subtrees healthy",
    )
    assert sup.wait_settled(timeout=10)
    snap = sup.snapshot()
    assert all(st.restarts == 0 for st in snap.values())


# ----------------------------------------------------------------------- resilience


def _stale_signaller() -> Callable[[CancelToken], None]:
    """Signals wrongly: DONE from NEW first, then through its first (stale) token."""
    first: list[CancelToken] = []

    def run(token: CancelToken) -> None:
        if not first:
            first.append(token)
            token.signal(Signal.DONE)
        first[0].signal(Signal.HEALTHY)

    return run


def _done_from_new(token: CancelToken) -> None:
    token.signal(Signal.DONE)


def _busy_loop(release: threading.Event) -> Callable[[CancelToken], None]:
    """Spins without looking at its token until ``release`` is set; then it does."""

    def run(token: CancelToken) -> None:
        while not release.is_set():
            for _ in range(2000):
                pass
        token.wait()

    return run


def _runaway_spawner(limit: int) -> Callable[[CancelToken], None]:
    """Adds children as fast as it can (up to ``limit``), never signalling."""

    def run(token: CancelToken) -> None:
        for i in range(1, limit + 1):
            token.run(f"r{i}", spawner(1))
            if token.wait(0.002):
                return
        token.wait()

    return run


@pytest.mark.slow
def test_resilience_against_misbehaving_runnables(harness: Harness) -> None:
    """Wrong signals, a busy loop and a runaway spawner do not stop the supervisor
    from serving a healthy runnable and restarting it with its sibling."""
    release = harness.gate()
    one = RemoteRunnable(_becomes_healthy)
    one_sibling = RemoteRunnable()
    spawned = 100

    def root(token: CancelToken) -> None:
        token.run_group({"one": one, "one_sibling": one_sibling})
        token.run("two", _stale_signaller())
        token.run("three", _done_from_new)
        token.run("four", _busy_loop(release))
        token.run("five", _runaway_spawner(spawned))
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)

    sup = harness.start(root)
    for i in range(3):
        one_sibling.wait_incarnation(i).healthy()
        one_inc = one.wait_incarnation(i)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            one_inc.call(lambda t: None, timeout=5)  # ping
            assert time.monotonic() - t0 < 2.0
        one_sibling.current.die(RuntimeError("at the disco"))
    one.wait_incarnation(3).call(lambda t: None, timeout=5)

    snap = wait_snapshot(
        sup,
        lambda s: (
            sum(1 for dn in s if dn.startswith("root.five.r") and dn.count(".") == 2) == spawned
        ),
        what="the runaway spawner's children",
    )
    assert len(snap) >= 1 + 2 + 4 + 3 * spawned
    for dn, prefix in (
        ("root.two", ("InvalidSignal", "Cancelled")),
        ("root.three", ("InvalidSignal",)),
    ):
        status = wait_status(sup, dn, restarts=AtLeast(1))
        assert status.last_error is not None and status.last_error.startswith(prefix), status
    release.set()
    assert sup.stop(timeout=20)
