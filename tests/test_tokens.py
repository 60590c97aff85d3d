"""CancelToken: wait, raise_if_cancelled, on_cancel, descendants, stale tokens,
helper threads and token.logger."""

from __future__ import annotations

import functools
import threading
import time
from typing import Callable, NamedTuple

import pytest

from threadsup import Cancelled, CancelToken, Signal, State, Supervisor
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    Incarnation,
    RemoteRunnable,
    done_at_once,
    healthy_until_cancelled,
    run_each,
    wait_status,
    wait_until,
)

# ---------------------------------------------------------------- wait / cancelled


def test_wait_returns_false_on_timeout_while_live(harness: Harness) -> None:
    root = RemoteRunnable()
    harness.start(root)
    inc = root.wait_incarnation(0)
    t0 = time.monotonic()
    assert inc.call(lambda t: t.wait(0.05)) is False
    assert time.monotonic() - t0 >= 0.04
    assert inc.call(lambda t: t.cancelled) is False
    inc.call(lambda t: t.raise_if_cancelled())  # does not raise while live


def test_wait_wakes_when_cancelled_and_returns_true(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(token.wait(30)))
    waiter.start()
    sup.cancel()
    waiter.join(10)
    assert woke == [True]
    assert token.cancelled
    assert token.wait() is True
    assert token.wait(0) is True


@pytest.mark.parametrize("timeout", [0, 0.01])
def test_wait_with_a_short_or_no_timeout_only_looks(harness: Harness, timeout: float) -> None:
    """Like `threading.Event.wait`: a zero timeout does not block (a negative one is a
    `ValueError`, see test_seconds.py). A wait that timed out leaves nothing behind for
    the cancellation to wake."""
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    assert token.wait(timeout) is False
    assert not token._waiters
    sup.cancel()
    assert token.wait(10) is True
    assert token.wait(timeout) is True


def test_every_thread_waiting_on_one_token_wakes(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    woke: list[bool] = []
    waiting = threading.Barrier(9)

    def wait() -> None:
        waiting.wait(10)
        woke.append(token.wait(30))

    waiters = [threading.Thread(target=wait) for _ in range(8)]
    for waiter in waiters:
        waiter.start()
    waiting.wait(10)
    wait_until(lambda: len(token._waiters or ()) == 8, timeout=10)
    sup.cancel()
    for waiter in waiters:
        waiter.join(10)
    assert woke == [True] * 8


def test_raise_if_cancelled_raises_cancelled_naming_the_dn(harness: Harness) -> None:
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    token = child.wait_incarnation(0).token
    sup.cancel()
    assert sup.wait(10)
    with pytest.raises(Cancelled) as err:
        token.raise_if_cancelled()
    assert err.value.dn == "root.a"


def test_cancelling_a_token_cancels_every_descendant_and_no_sibling(
    harness: Harness,
) -> None:
    g = RemoteRunnable()
    c = RemoteRunnable(lambda t: t.run("g", g))
    p = RemoteRunnable(lambda t: t.run("c", c))
    other = RemoteRunnable()
    harness.start(RemoteRunnable(run_each(p=p, other=other)))
    p_inc, c_inc, g_inc = p.wait_incarnation(0), c.wait_incarnation(0), g.wait_incarnation(0)
    other_inc = other.wait_incarnation(0)
    p_inc.die(ValueError("p fails"))
    assert c_inc.cancel_seen.wait(10) and g_inc.cancel_seen.wait(10)
    assert c_inc.token.cancelled and g_inc.token.cancelled
    p.wait_incarnation(1)
    g.wait_incarnation(1)
    assert not other_inc.token.cancelled
    assert other.count == 1


# ------------------------------------------------------------------------ on_cancel


def test_on_cancel_calls_the_callback_once(harness: Harness) -> None:
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run_group({"a": a, "b": b})))
    calls: list[str] = []
    a_inc = a.wait_incarnation(0)
    a_inc.call(lambda t: t.on_cancel(lambda: calls.append("a")))
    b.wait_incarnation(0).die()  # cancels a's token
    assert a_inc.wait_exited(10)
    a.wait_incarnation(1)
    sup.cancel()
    assert sup.wait(10)
    assert calls == ["a"]


def test_on_cancel_unregister_prevents_the_call(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    calls: list[str] = []
    unregister = inc.call(lambda t: t.on_cancel(lambda: calls.append("x")))
    inc.call(lambda t: t.on_cancel(lambda: calls.append("kept")))
    unregister()
    sup.cancel()
    assert sup.wait(10)
    assert calls == ["kept"]


def test_on_cancel_on_a_cancelled_token_calls_at_once_in_the_caller(
    harness: Harness,
) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    sup.cancel()
    assert sup.wait(10)
    called_in: list[threading.Thread] = []
    unregister = token.on_cancel(lambda: called_in.append(threading.current_thread()))
    assert called_in == [threading.current_thread()]
    unregister()  # harmless


class _CallbackBoom(BaseException):
    pass


CALLBACK_ERRORS: list[BaseException] = [
    ValueError("callback boom"),
    _CallbackBoom("callback boom"),
    SystemExit(3),
    KeyboardInterrupt(),
    Cancelled("root.elsewhere"),
]


def _raiser(exc: BaseException) -> Callable[[], None]:
    def cb() -> None:
        raise exc

    return cb


def _logged_with(harness: Harness, exc: BaseException) -> bool:
    return any(r.exc_info is not None and r.exc_info[1] is exc for r in harness.logs.records)


@pytest.mark.parametrize("exc", CALLBACK_ERRORS, ids=lambda e: type(e).__name__)
def test_a_raising_callback_is_logged_and_the_others_still_run(
    harness: Harness, exc: BaseException
) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    calls: list[str] = []
    inc.call(lambda t: t.on_cancel(lambda: calls.append("before")))
    inc.call(lambda t: t.on_cancel(_raiser(exc)))
    inc.call(lambda t: t.on_cancel(lambda: calls.append("after")))
    try:
        sup.cancel()
    except BaseException as err:  # a KeyboardInterrupt here would end the session
        pytest.fail(f"cancel() re-raised the callback's {err!r}")
    assert sup.wait(10)
    assert sorted(calls) == ["after", "before"]
    wait_until(lambda: _logged_with(harness, exc), what="the callback's error logged")
    assert sup.snapshot()["root"].state is State.CANCELLED


@pytest.mark.parametrize("exc", CALLBACK_ERRORS, ids=lambda e: type(e).__name__)
def test_a_callback_raising_when_called_at_once_is_logged_not_reraised(
    harness: Harness, exc: BaseException
) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    sup.cancel()
    assert sup.wait(10)
    try:
        token.on_cancel(_raiser(exc))
    except BaseException as err:  # a KeyboardInterrupt here would end the session
        pytest.fail(f"on_cancel() re-raised the callback's {err!r}")
    wait_until(lambda: _logged_with(harness, exc), what="the callback's error logged")


def test_callbacks_do_not_run_under_the_supervisor_lock(harness: Harness) -> None:
    """A callback that needs the tree (snapshot from another thread) does not deadlock."""
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run_group({"a": a, "b": b})))
    results: list[bool] = []

    def callback() -> None:
        helper = threading.Thread(target=sup.snapshot)
        helper.start()
        helper.join(5)
        results.append(not helper.is_alive())

    a.wait_incarnation(0).call(lambda t: t.on_cancel(callback))
    b.wait_incarnation(0).die()
    a.wait_incarnation(1)
    a.current.call(lambda t: t.on_cancel(callback))
    sup.cancel()
    assert sup.wait(10)
    assert results == [True, True]


# --------------------------------------------------------------------- stale tokens


class Stale(NamedTuple):
    sup: Supervisor
    old: Incarnation
    new: Incarnation


@pytest.fixture
def stale(harness: Harness) -> Stale:
    """root.a has died once: ``old`` holds the dead incarnation, ``new`` the live one."""
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    old = child.wait_incarnation(0)
    old.die(ValueError("first life"))
    new = child.wait_incarnation(1)
    wait_status(sup, "root.a", state=State.NEW, running=True, restarts=1)
    return Stale(sup, old, new)


def test_a_stale_token_is_cancelled_and_its_wait_returns_at_once(stale: Stale) -> None:
    assert stale.new.token is not stale.old.token  # every incarnation gets a fresh token
    assert stale.old.token.cancelled
    assert stale.old.token.wait(5) is True
    assert not stale.new.token.cancelled
    with pytest.raises(Cancelled):
        stale.old.token.raise_if_cancelled()


def _signal_with(token: CancelToken, sig: Signal, _caller: CancelToken) -> None:
    token.signal(sig)


@pytest.mark.parametrize("where", ["test-thread", "new-incarnation-thread"])
def test_a_stale_token_signal_raises_cancelled_and_changes_nothing(
    stale: Stale, where: str
) -> None:
    old = stale.old.token
    for sig in (Signal.HEALTHY, Signal.DONE):
        with pytest.raises(Cancelled):
            if where == "test-thread":
                old.signal(sig)
            else:
                stale.new.call(functools.partial(_signal_with, old, sig))
    assert stale.sup.wait_settled(timeout=10)
    status = stale.sup.snapshot()["root.a"]
    assert (status.state, status.restarts) == (State.NEW, 1)
    stale.new.healthy()  # the live incarnation is untouched
    wait_status(stale.sup, "root.a", state=State.HEALTHY)


def test_a_stale_token_run_and_run_group_raise_cancelled_and_start_nothing(
    stale: Stale,
) -> None:
    probe = RemoteRunnable()
    with pytest.raises(Cancelled) as err:
        stale.old.token.run("x", probe)
    assert err.value.dn == "root.a"
    with pytest.raises(Cancelled):
        stale.old.token.run_group({"y": probe})
    with pytest.raises(Cancelled):
        stale.new.call(lambda t: stale.old.token.run("z", probe))
    assert stale.sup.wait_settled(timeout=10)
    assert sorted(stale.sup.snapshot()) == ["root", "root.a"]
    assert probe.count == 0
    # The names are still free for the live incarnation.
    stale.new.run("x", done_at_once)
    wait_status(stale.sup, "root.a.x", state=State.DONE)


@pytest.mark.parametrize(
    "bad_call",
    [
        pytest.param(lambda t: t.run("Bad Name", done_at_once), id="invalid-name"),
        pytest.param(lambda t: t.run("x", 42), id="non-callable"),
        pytest.param(lambda t: t.run_group([("x", done_at_once)]), id="non-mapping"),
        pytest.param(lambda t: t.signal("DONE"), id="non-signal"),
        pytest.param(lambda t: t.signal(Signal.DONE), id="out-of-order"),
    ],
)
def test_a_stale_token_raises_cancelled_before_any_other_check(
    stale: Stale, bad_call: Callable[[CancelToken], object]
) -> None:
    with pytest.raises(Cancelled):
        bad_call(stale.old.token)


def test_on_cancel_on_a_stale_token_calls_at_once(stale: Stale) -> None:
    calls: list[int] = []
    stale.old.token.on_cancel(lambda: calls.append(1))
    assert calls == [1]
    assert not stale.new.token.cancelled


def test_a_stale_helper_thread_cannot_touch_the_new_incarnation(stale: Stale) -> None:
    """A thread left over from the old incarnation keeps calling: every call is refused."""
    outcomes: list[str] = []

    def leftover() -> None:
        calls: list[Callable[[], None]] = [
            lambda: stale.old.token.signal(Signal.HEALTHY),
            lambda: stale.old.token.run("x", healthy_until_cancelled),
        ]
        for call in calls:
            try:
                call()
            except Cancelled:
                outcomes.append("cancelled")
            else:
                outcomes.append("accepted")

    thread = threading.Thread(target=leftover)
    thread.start()
    thread.join(10)
    assert outcomes == ["cancelled", "cancelled"]
    assert stale.sup.wait_settled(timeout=10)
    assert stale.sup.snapshot()["root.a"].state is State.NEW
    assert "root.a.x" not in stale.sup.snapshot()


# --------------------------------------------------------------------- helper threads


def test_helper_threads_may_use_the_token(harness: Harness) -> None:
    child = RemoteRunnable()
    errors: list[BaseException] = []

    def root(token: CancelToken) -> None:
        def helper() -> None:
            try:
                token.run("child", child)
                token.signal(Signal.HEALTHY)
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        thread = threading.Thread(target=helper, name="helper")
        thread.start()
        thread.join()
        token.wait()

    sup = harness.start(root)
    child.wait_incarnation(0)
    wait_status(sup, "root", state=State.HEALTHY)
    assert errors == []
    assert child.current.token.dn == "root.child"


def test_a_helper_thread_blocked_on_the_token_is_woken_by_cancellation(
    harness: Harness,
) -> None:
    finished = threading.Event()

    def root(token: CancelToken) -> None:
        def helper() -> None:
            token.wait()
            finished.set()

        thread = threading.Thread(target=helper)
        thread.start()
        token.signal(Signal.HEALTHY)
        thread.join()

    sup = harness.start(root)
    wait_status(sup, "root", state=State.HEALTHY)
    sup.cancel()
    assert finished.wait(10)
    assert sup.wait(10)


# ------------------------------------------------------------------------ token.logger


def test_token_logger_is_named_base_dot_dn(harness: Harness) -> None:
    child = RemoteRunnable()
    root = RemoteRunnable(lambda t: t.run("a", child))
    harness.start(root)
    assert root.wait_incarnation(0).token.logger.name == f"{harness.base}.root"
    assert child.wait_incarnation(0).token.logger.name == f"{harness.base}.root.a"


def test_token_logger_base_defaults_to_threadsup(harness: Harness) -> None:
    child = RemoteRunnable()
    sup = Supervisor(RemoteRunnable(lambda t: t.run("a", child)), backoff=FAST_BACKOFF)
    harness.track(sup).start()
    assert child.wait_incarnation(0).token.logger.name == "threadsup.root.a"
