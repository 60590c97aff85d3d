"""Supervisor: start, with, cancel, stop, wait, wait_settled, snapshot, threads,
signal handlers and Ctrl-C."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Callable

import pytest

from threadsup import Backoff, CancelToken, Signal, State, Supervisor
from threadsup._errors import AlreadyStarted
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    RemoteRunnable,
    group_root,
    healthy_until_cancelled,
    run_each,
    wait_status,
    wait_until,
)

# ---------------------------------------------------------------------- start / with


def test_start_returns_the_supervisor(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.track(harness.supervisor(root))
    assert sup.start() is sup
    root.wait_incarnation(0)


def test_a_second_start_raises_runtime_error(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    with pytest.raises(RuntimeError) as err:
        sup.start()
    assert isinstance(err.value, AlreadyStarted)
    root.wait_incarnation(0)
    assert sup.wait_settled(timeout=10)
    assert root.count == 1


def test_with_starts_on_enter_and_stops_on_exit(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.track(harness.supervisor(root))
    with sup as entered:
        assert entered is sup
        inc = root.wait_incarnation(0)
        with pytest.raises(RuntimeError):
            sup.start()  # already started by the with
    assert inc.exited.is_set()
    assert sup.wait(timeout=0)
    assert not _runnable_threads()


class _BodyError(Exception):
    pass


@pytest.mark.parametrize("exc_type", [_BodyError, KeyboardInterrupt])
def test_with_stops_the_tree_on_an_exception_in_the_body_then_propagates(
    harness: Harness, exc_type: type[BaseException]
) -> None:
    child = RemoteRunnable()
    sup = harness.track(harness.supervisor(RemoteRunnable(lambda t: t.run("a", child))))
    with pytest.raises(exc_type), sup:
        inc = child.wait_incarnation(0)
        raise exc_type()
    assert inc.exited.is_set()
    assert sup.wait(timeout=0)
    assert not _runnable_threads()
    assert sup.snapshot()["root.a"].state is State.CANCELLED


_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({})))


def _mentions(record: logging.LogRecord, text: str) -> bool:
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS}
    return text in record.getMessage() or text in repr(extras)


def test_with_exit_logs_the_runnables_still_running_when_stop_times_out(
    harness: Harness,
) -> None:
    gate = harness.gate()
    child = RemoteRunnable(linger=gate)
    sup = harness.track(
        harness.supervisor(RemoteRunnable(lambda t: t.run("a", child)), shutdown_timeout=0.3)
    )
    t0 = time.monotonic()
    with sup:  # the exit must not raise although root.a does not stop
        child.wait_incarnation(0)
    assert time.monotonic() - t0 < 5
    wait_until(
        lambda: any(
            r.levelno >= logging.WARNING and _mentions(r, "root.a") for r in harness.logs.records
        ),
        what="a WARNING+ record naming root.a",
    )
    assert child.current.token.cancelled
    gate.set()
    assert sup.wait(timeout=10)


# ------------------------------------------------------------------- cancel / stop


def test_cancel_returns_at_once_and_is_idempotent(harness: Harness) -> None:
    gate = harness.gate()
    child = RemoteRunnable(linger=gate)
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    inc = child.wait_incarnation(0)
    t0 = time.monotonic()
    for _ in range(3):
        sup.cancel()
    assert time.monotonic() - t0 < 1.0  # root.a lingers, yet cancel does not wait
    assert inc.cancel_seen.wait(10)
    assert not sup.wait(timeout=0.05)
    gate.set()
    assert sup.wait(timeout=10)
    sup.cancel()
    assert sup.stop(timeout=10)
    assert sup.stop(timeout=10)  # stop is idempotent too


def test_cancel_from_another_thread(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    root.wait_incarnation(0)
    thread = threading.Thread(target=sup.cancel)
    thread.start()
    thread.join(10)
    assert sup.wait(timeout=10)


def test_cancel_from_inside_a_runnable(harness: Harness) -> None:
    holder: list[Supervisor] = []
    started = threading.Event()

    def root(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        started.wait(10)
        holder[0].cancel()
        token.wait()

    sup = harness.track(harness.supervisor(root))
    holder.append(sup)
    sup.start()
    started.set()
    assert sup.wait(timeout=10)
    assert sup.snapshot()["root"].state is State.CANCELLED


def test_stop_from_inside_a_runnable_neither_raises_nor_deadlocks(
    harness: Harness,
) -> None:
    holder: list[Supervisor] = []
    outcome: list[object] = []
    go = threading.Event()

    def worker(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        go.wait(10)
        t0 = time.monotonic()
        try:
            outcome.append(holder[0].stop(timeout=1.0))
        except BaseException as exc:  # reported below
            outcome.append(exc)
        outcome.append(time.monotonic() - t0)

    other = RemoteRunnable()

    root = group_root({"worker": worker, "other": other}, done=False)
    sup = harness.track(harness.supervisor(root))
    holder.append(sup)
    sup.start()
    other.wait_incarnation(0)
    go.set()
    assert sup.wait(timeout=10)
    assert len(outcome) == 2, outcome
    assert isinstance(outcome[0], bool), f"stop() raised {outcome[0]!r}"
    assert isinstance(outcome[1], float) and outcome[1] < 5.0


def test_cancel_from_a_signal_handler(harness: Harness) -> None:
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    child.wait_incarnation(0)

    def handler(signum: int, frame: FrameType | None) -> None:
        sup.cancel()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert sup.wait(timeout=10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert sup.snapshot()["root.a"].state is State.CANCELLED


def test_stop_returns_false_when_a_runnable_outlives_the_timeout(
    harness: Harness,
) -> None:
    gate = harness.gate()
    child = RemoteRunnable(linger=gate)
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    child.wait_incarnation(0)
    t0 = time.monotonic()
    assert sup.stop(timeout=0.3) is False
    assert time.monotonic() - t0 >= 0.25
    assert sup.snapshot()["root.a"].running
    gate.set()
    assert sup.wait(timeout=10)
    assert sup.stop(timeout=10) is True


def test_stop_true_means_every_runnable_thread_has_exited(harness: Harness) -> None:
    leaves = [RemoteRunnable() for _ in range(5)]
    sup = harness.start(
        RemoteRunnable(lambda t: t.run_group({f"n{i}": r for i, r in enumerate(leaves)}))
    )
    for rc in leaves:
        rc.wait_incarnation(0)
    assert sup.stop(timeout=10) is True
    assert not _runnable_threads()  # joined, not merely cancelled
    assert not any(s.running for s in sup.snapshot().values())


# -------------------------------------------------------------------- wait / settle


def test_wait_returns_false_on_timeout(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    root.wait_incarnation(0)
    t0 = time.monotonic()
    assert sup.wait(timeout=0.2) is False
    assert time.monotonic() - t0 >= 0.15


def _crash(token: CancelToken) -> None:
    raise RuntimeError("crash")


def test_wait_settled_returns_false_on_timeout_while_restarts_churn(
    harness: Harness,
) -> None:
    sup = harness.start(RemoteRunnable(lambda t: t.run("crash", _crash)))
    wait_status(sup, "root.crash", restarts=1)
    t0 = time.monotonic()
    assert sup.wait_settled(timeout=0.3) is False
    assert time.monotonic() - t0 >= 0.25


def test_wait_settled_returns_false_while_a_long_restart_is_pending(
    harness: Harness,
) -> None:
    child = RemoteRunnable()
    sup = harness.start(
        RemoteRunnable(lambda t: t.run("a", child)), backoff=Backoff(initial=30, jitter=0)
    )
    child.wait_incarnation(0).die()
    wait_status(sup, "root.a", state=State.DEAD)
    assert sup.wait_settled(timeout=0.3) is False


def test_wait_settled_does_not_wait_for_a_first_signal(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    assert sup.wait_settled(timeout=10)
    assert sup.snapshot()["root"].state is State.NEW


def _never_stopping_tree(harness: Harness) -> tuple[Supervisor, Callable[[], None]]:
    gate = harness.gate()
    child = RemoteRunnable(linger=gate)
    sup = harness.start(RemoteRunnable(run_each(a=child, crash=_crash)))
    child.wait_incarnation(0)
    return sup, gate.set


@pytest.mark.parametrize("method", ["wait", "stop", "wait_settled"])
def test_waits_are_interrupted_by_ctrl_c_in_the_main_thread(harness: Harness, method: str) -> None:
    assert threading.current_thread() is threading.main_thread()
    sup, release = _never_stopping_tree(harness)
    call: Callable[[], bool] = {
        "wait": lambda: sup.wait(timeout=5),
        "stop": lambda: sup.stop(timeout=5),
        "wait_settled": lambda: sup.wait_settled(timeout=5),
    }[method]
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            call()
            timer.join()
        elapsed = time.monotonic() - t0
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
        release()
    assert elapsed < 3.0, f"{method} was not interrupted ({elapsed:.1f} s)"


# ---------------------------------------------------------------------- snapshot


def test_snapshot_lists_parents_before_children(harness: Harness) -> None:
    def node(children: dict[str, Callable[[CancelToken], None]]) -> Callable[[CancelToken], None]:
        def run(token: CancelToken) -> None:
            for name, child in children.items():
                token.run(name, child)
            token.signal(Signal.HEALTHY)
            token.wait()

        return run

    tree = node(
        {
            "z": node({"y": healthy_until_cancelled, "b": node({"q": healthy_until_cancelled})}),
            "a": node({"c": healthy_until_cancelled}),
            "m": healthy_until_cancelled,
        }
    )
    sup = harness.start(tree)
    expected = {
        "root",
        "root.z",
        "root.z.y",
        "root.z.b",
        "root.z.b.q",
        "root.a",
        "root.a.c",
        "root.m",
    }
    wait_until(lambda: set(sup.snapshot()) == expected, what="the whole tree")
    snap = sup.snapshot()
    order = list(snap)
    assert order[0] == "root"
    for i, dn in enumerate(order):
        assert snap[dn].dn == dn
        if dn != "root":
            assert order.index(dn.rsplit(".", 1)[0]) < i, order


def test_snapshot_statuses_are_frozen(harness: Harness) -> None:
    sup = harness.start(RemoteRunnable())
    status = wait_status(sup, "root")
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = State.DEAD  # type: ignore[misc]


def test_running_follows_the_thread(harness: Harness) -> None:
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    inc = child.wait_incarnation(0)
    assert wait_status(sup, "root.a").running
    inc.healthy()
    inc.done()
    wait_status(sup, "root.a", state=State.DONE, running=True)
    inc.finish()
    wait_status(sup, "root.a", state=State.DONE, running=False)


# ----------------------------------------------------------------------- threads


def _runnable_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "root" or t.name.startswith("root.")]


def test_threads_are_named_after_their_dn_and_are_daemons() -> None:
    before = set(threading.enumerate())
    b = RemoteRunnable()
    a = RemoteRunnable(lambda t: t.run("b", b))
    root = RemoteRunnable(lambda t: t.run("a", a))
    with Supervisor(root, backoff=FAST_BACKOFF) as sup:
        b_inc = b.wait_incarnation(0)
        assert b_inc.thread_name == "root.a.b"
        assert root.current.thread_name == "root"
        new = [t for t in threading.enumerate() if t not in before]
        names = {t.name for t in new}
        assert {"root", "root.a", "root.a.b"} <= names
        assert "threadsup-processor" in names
        for t in new:
            assert t.daemon, t.name
            assert t.name in {"root", "root.a", "root.a.b"} or t.name.startswith("threadsup-"), (
                t.name
            )
        assert sup.snapshot()["root.a.b"].running
