"""What happens when a runnable returns or raises: rules 1, 2 and 3."""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple, cast

import pytest

from threadsup import Backoff, Cancelled, CancelToken, Signal, State, Supervisor
from threadsup.testing import (
    Harness,
    Incarnation,
    RemoteRunnable,
    done_at_once,
    group_root,
    raising,
    wait_status,
    wait_until,
)

SLOW = Backoff(initial=30.0, jitter=0.0)


class Child(NamedTuple):
    sup: Supervisor
    rc: RemoteRunnable
    inc: Incarnation


def start_child(
    harness: Harness, rc: RemoteRunnable | None = None, backoff: Backoff | None = None
) -> Child:
    """root runs ``rc`` as ``root.a``; returns its first incarnation."""
    child = rc if rc is not None else RemoteRunnable()
    root = RemoteRunnable(lambda t: t.run("a", child))
    sup = harness.start(root) if backoff is None else harness.start(root, backoff=backoff)
    return Child(sup, child, child.wait_incarnation(0))


# --------------------------------------------------------------------------- rule 1


def test_done_then_return_is_done_and_not_restarted(harness: Harness) -> None:
    c = start_child(harness)
    c.inc.healthy()
    c.inc.done()
    c.inc.finish()
    status = wait_status(c.sup, "root.a", state=State.DONE, running=False)
    assert c.sup.wait_settled(timeout=10)
    assert c.rc.count == 1
    assert (status.restarts, status.last_error) == (0, None)
    assert c.sup.snapshot()["root.a"].state is State.DONE


def _returns_a_value(token: CancelToken) -> int:
    token.signal(Signal.HEALTHY)
    token.signal(Signal.DONE)
    return 42


def test_the_return_value_is_ignored(harness: Harness) -> None:
    runnable = cast(Callable[[CancelToken], None], _returns_a_value)
    sup = harness.start(group_root({"a": runnable}))
    wait_status(sup, "root.a", state=State.DONE, running=False)


def test_a_tree_that_is_all_done_ends_the_supervisor_by_itself(harness: Harness) -> None:
    sup = harness.start(group_root({"a": done_at_once, "b": done_at_once}))
    assert sup.wait(timeout=10)
    snap = sup.snapshot()
    assert {dn: s.state for dn, s in snap.items()} == {
        "root": State.DONE,
        "root.a": State.DONE,
        "root.b": State.DONE,
    }
    assert not any(s.running for s in snap.values())
    assert sup.stop(timeout=10)


# --------------------------------------------------------------------------- rule 2


def _return(token: CancelToken) -> None:
    return None


def _raise_own_cancelled(token: CancelToken) -> None:
    token.raise_if_cancelled()


CANCEL_EXITS = [
    pytest.param(_return, id="returns"),
    pytest.param(_raise_own_cancelled, id="raises-Cancelled"),
    pytest.param(raising(ValueError("while cancelled")), id="raises-ValueError"),
    pytest.param(raising(SystemExit(2)), id="raises-SystemExit"),
]


@pytest.mark.parametrize("exit_fn", CANCEL_EXITS)
def test_exit_after_stop_is_cancelled_whatever_the_exit(
    harness: Harness, exit_fn: Callable[[CancelToken], None]
) -> None:
    c = start_child(harness, RemoteRunnable(when_cancelled=exit_fn))
    c.inc.healthy()
    c.sup.cancel()
    assert c.sup.wait(10)
    status = c.sup.snapshot()["root.a"]
    assert (status.state, status.running, status.last_error) == (State.CANCELLED, False, None)
    assert not harness.logs.find(dn="root.a", event="died")
    assert not [r for r in harness.logs.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("exit_fn", CANCEL_EXITS)
def test_exit_after_a_sibling_died_is_cancelled_and_restarts(
    harness: Harness, exit_fn: Callable[[CancelToken], None]
) -> None:
    a = RemoteRunnable(when_cancelled=exit_fn)
    b = RemoteRunnable()
    sup = harness.start(group_root({"a": a, "b": b}))
    a.wait_incarnation(0).healthy()
    b.wait_incarnation(0).die(RuntimeError("b fails"))
    a.wait_incarnation(1)
    harness.logs.wait_for(dn="root.a", event="cancelled")
    status = wait_status(sup, "root.a", restarts=1)
    assert status.last_error is None
    assert not harness.logs.find(dn="root.a", event="died")
    assert wait_status(sup, "root.b", restarts=1).last_error == "RuntimeError: b fails"


def test_an_exception_after_cancellation_is_logged_at_debug(harness: Harness) -> None:
    error = ValueError("ignored while cancelled")
    c = start_child(harness, RemoteRunnable(when_cancelled=raising(error)))
    c.sup.cancel()
    assert c.sup.wait(10)

    def mentions_error(r: logging.LogRecord) -> bool:
        return (r.exc_info is not None and r.exc_info[1] is error) or str(error) in (r.getMessage())

    harness.logs.wait_for(dn="root.a", event="cancelled")
    records = [r for r in harness.logs.records if mentions_error(r)]
    assert records, "the exception raised after cancellation was not logged"
    assert all(r.levelno == logging.DEBUG for r in records)


# --------------------------------------------------------------------------- rule 3


class _CustomBase(BaseException):
    pass


DEATHS: list[tuple[BaseException, str]] = [
    (ValueError("boom"), "ValueError: boom"),
    (RuntimeError("died on request"), "RuntimeError: died on request"),
    (_CustomBase("custom"), "_CustomBase"),
    (SystemExit(3), "SystemExit"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
    (GeneratorExit(), "GeneratorExit"),
    (Cancelled("root.somewhere_else"), "Cancelled"),
]


@pytest.mark.parametrize("exc, prefix", DEATHS, ids=[type(e).__name__ for e, _ in DEATHS])
def test_any_exception_is_a_death_and_is_restarted(
    harness: Harness, exc: BaseException, prefix: str
) -> None:
    c = start_child(harness)
    c.inc.healthy()
    c.inc.die(exc)
    c.rc.wait_incarnation(1)
    status = wait_status(c.sup, "root.a", restarts=1)
    assert status.last_error is not None and status.last_error.startswith(prefix)
    harness.logs.wait_for(dn="root.a", event="died", levelno=logging.ERROR)
    # The supervisor still works: the new incarnation is served and the tree stops.
    c.rc.current.healthy()
    wait_status(c.sup, "root.a", state=State.HEALTHY)
    assert c.sup.stop(10)


def test_value_error_gives_last_error_type_colon_message(harness: Harness) -> None:
    c = start_child(harness, backoff=SLOW)
    c.inc.die(ValueError("boom"))
    status = wait_status(c.sup, "root.a", state=State.DEAD, running=False)
    assert status.last_error == "ValueError: boom"


def test_last_error_is_one_line(harness: Harness) -> None:
    c = start_child(harness, backoff=SLOW)
    c.inc.die(ValueError("first line\nsecond line\r\nthird"))
    status = wait_status(c.sup, "root.a", state=State.DEAD)
    assert status.last_error is not None
    assert status.last_error.startswith("ValueError")
    assert "\n" not in status.last_error and "\r" not in status.last_error


@pytest.mark.parametrize(
    "signals",
    [pytest.param([], id="from-new"), pytest.param([Signal.HEALTHY], id="from-healthy")],
)
def test_returning_without_done_is_a_death(harness: Harness, signals: list[Signal]) -> None:
    c = start_child(harness, backoff=SLOW)
    for sig in signals:
        c.inc.signal(sig)
    c.inc.finish()
    status = wait_status(c.sup, "root.a", state=State.DEAD, running=False)
    assert status.last_error is not None
    assert "return" in status.last_error and "\n" not in status.last_error
    harness.logs.wait_for(dn="root.a", event="died", levelno=logging.ERROR)


def test_raising_after_done_is_a_death(harness: Harness) -> None:
    c = start_child(harness, backoff=SLOW)
    c.inc.healthy()
    c.inc.done()
    c.inc.die(ValueError("after done"))
    status = wait_status(c.sup, "root.a", state=State.DEAD, running=False)
    assert status.last_error == "ValueError: after done"


def test_cancelled_from_a_stale_token_while_live_is_a_death(harness: Harness) -> None:
    c = start_child(harness)
    c.inc.die()
    old = c.inc.token
    new = c.rc.wait_incarnation(1)
    wait_status(c.sup, "root.a", restarts=1)
    new.exit_with(lambda t: old.raise_if_cancelled())
    c.rc.wait_incarnation(2)
    status = wait_status(c.sup, "root.a", restarts=2)
    assert status.last_error is not None and status.last_error.startswith("Cancelled")
    # The second death's record is delivered after the restart it caused: wait for it.
    wait_until(lambda: len(harness.logs.find(dn="root.a", event="died")) == 2, 10, "2 died records")


def test_a_dead_root_is_restarted(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    root.wait_incarnation(0).die(ValueError("root fails"))
    root.wait_incarnation(1)
    status = wait_status(sup, "root", restarts=1)
    assert status.last_error == "ValueError: root fails"


def test_a_death_cancels_the_group_and_restarts_it(harness: Harness) -> None:
    a, b, c = RemoteRunnable(), RemoteRunnable(), RemoteRunnable()
    other = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run_group({"a": a, "b": b, "c": c})
        token.run("other", other)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    a0, c0 = a.wait_incarnation(0), c.wait_incarnation(0)
    other.wait_incarnation(0)
    b.wait_incarnation(0).die()
    assert a0.cancel_seen.wait(10) and c0.cancel_seen.wait(10)
    for rc in (a, b, c):
        rc.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert (a.count, b.count, c.count, other.count) == (2, 2, 2, 1)
