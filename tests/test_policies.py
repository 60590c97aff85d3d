"""Restart policies against the OTP semantics they are named after.

Restart types (permanent, transient, temporary) under group restarts and on a
normal return or a failure; restart intensity counted in a sliding window;
escalation of a node that gave up, up to `Supervisor.wait` raising `GaveUp`;
`Backoff.stable`; per-child backoff; validation of every policy keyword.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from typing import Any, Callable

import pytest

from threadsup import (
    Backoff,
    CancelToken,
    GaveUp,
    Runnable,
    Signal,
    State,
    Supervisor,
    ThreadsupError,
)
from threadsup._policy import Restart
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    Incarnation,
    RemoteRunnable,
    healthy_until_cancelled,
    raising,
    wait_snapshot,
    wait_status,
    wait_until,
)

RESTART_TYPES = ["permanent", "transient", "temporary"]


def start(
    harness: Harness,
    root: Runnable,
    *,
    backoff: Backoff | None = FAST_BACKOFF,
    max_restarts: int | None = None,
    within: float = 60.0,
) -> Supervisor:
    """Start a supervisor with the root's intensity, on the harness's logger."""
    sup = Supervisor(
        root,
        logger=harness.logger,
        backoff=backoff,
        max_restarts=max_restarts,
        within=within,
    )
    harness.track(sup)
    return sup.start()


def parent_of(
    setup: Callable[[CancelToken], None], *, done: bool = False
) -> Callable[[CancelToken], None]:
    """A runnable that runs ``setup`` (to start children), signals HEALTHY, and
    then signals DONE and returns (``done``) or waits for cancellation."""

    def run(token: CancelToken) -> None:
        setup(token)
        token.signal(Signal.HEALTHY)
        if done:
            token.signal(Signal.DONE)
        else:
            token.wait()

    return run


def gap(before: Incarnation, after: Incarnation) -> float:
    """Seconds from the exit of ``before`` to the start of ``after``."""
    assert before.exited_at is not None
    return after.started_at - before.exited_at


def scheduled_delays(harness: Harness, dn: str, count: int) -> list[float]:
    """The delays of ``dn``'s first ``count`` restarts, as the processor chose them.

    The backoff is checked on these rather than on measured gaps: a gap has a
    floor (the delay) but, on a loaded machine, no ceiling.
    """

    def found() -> list[logging.LogRecord]:
        return harness.logs.find(event="restart_scheduled", dn=dn)

    wait_until(lambda: len(found()) >= count, what=f"{count} restarts of {dn} scheduled")
    return [vars(record)["delay"] for record in found()[:count]]


def dns_of(harness: Harness, event: str) -> list[str]:
    return [getattr(r, "dn", "?") for r in harness.logs.find(event=event)]


# ------------------------------------------------------------------ restart types


@pytest.mark.parametrize("restart", RESTART_TYPES)
def test_a_member_death_and_its_running_sibling(harness: Harness, restart: Restart) -> None:
    """OTP one_for_all: permanent and transient members are cancelled and restarted
    with the member that failed; a temporary member's death takes nobody down and
    restarts nothing (suture/OTP: temporary children are never restarted)."""
    x, k = RemoteRunnable(), RemoteRunnable()
    sup = start(harness, parent_of(lambda t: t.run_group({"x": x, "k": k}, restart=restart)))
    x0 = x.wait_incarnation(0)
    x0.healthy()
    k.wait_incarnation(0).die(RuntimeError("k failed"))
    if restart == "temporary":
        wait_status(sup, "root.k", state=State.DEAD, running=False)
        assert sup.wait_settled(timeout=10)
        assert not x0.token.cancelled
        snap = sup.snapshot()
        assert (snap["root.x"].state, snap["root.x"].running) == (State.HEALTHY, True)
        assert (snap["root.x"].restarts, snap["root.k"].restarts) == (0, 0)
        assert snap["root.k"].last_error == "RuntimeError: k failed"
        assert (x.count, k.count) == (1, 1)
        return
    assert x0.cancel_seen.wait(10)
    x.wait_incarnation(1)
    k.wait_incarnation(1)
    snap = wait_snapshot(
        sup, lambda s: s["root.x"].running and s["root.k"].running, what="both members back"
    )
    assert (snap["root.x"].restarts, snap["root.x"].last_error) == (1, None)
    assert (snap["root.k"].restarts, snap["root.k"].last_error) == (1, "RuntimeError: k failed")
    assert snap["root.x"].restart == snap["root.k"].restart == restart


@pytest.mark.parametrize("restart", RESTART_TYPES)
def test_a_finished_member_when_a_sibling_dies(harness: Harness, restart: Restart) -> None:
    """A member that ended normally (DONE) runs again with its group, as OTP's
    one_for_all restarts every child it still holds; a temporary one stays DONE."""
    x, k = RemoteRunnable(), RemoteRunnable()
    sup = start(harness, parent_of(lambda t: t.run_group({"x": x, "k": k}, restart=restart)))
    x0 = x.wait_incarnation(0)
    x0.healthy()
    if restart == "permanent":
        x0.done()  # a permanent node returning without DONE would be a failure
    x0.finish()
    wait_status(sup, "root.x", state=State.DONE, running=False)
    k.wait_incarnation(0).die(RuntimeError("k failed"))
    if restart == "temporary":
        wait_status(sup, "root.k", state=State.DEAD, running=False)
        assert sup.wait_settled(timeout=10)
        snap = sup.snapshot()
        assert (snap["root.x"].state, snap["root.x"].restarts) == (State.DONE, 0)
        assert (snap["root.k"].state, snap["root.k"].restarts) == (State.DEAD, 0)
        assert (x.count, k.count) == (1, 1)
        return
    x.wait_incarnation(1)
    k.wait_incarnation(1)
    snap = wait_snapshot(
        sup, lambda s: s["root.x"].running and s["root.k"].running, what="both members back"
    )
    assert (snap["root.x"].restarts, snap["root.k"].restarts) == (1, 1)


@pytest.mark.parametrize(
    ("restart", "healthy"), list(itertools.product(RESTART_TYPES, [False, True]))
)
def test_a_normal_return_without_done(harness: Harness, restart: Restart, healthy: bool) -> None:
    """Permanent: a normal return is a failure (the contract). Transient and
    temporary: it ends the node as DONE, with no ERROR record and no restart."""
    c = RemoteRunnable()
    sup = start(harness, parent_of(lambda t: t.run("c", c, restart=restart)))
    c0 = c.wait_incarnation(0)
    if healthy:
        c0.healthy()
    c0.finish()
    if restart == "permanent":
        c.wait_incarnation(1)
        status = wait_status(sup, "root.c", restarts=1)
        assert status.last_error == "returned without signalling DONE"
        harness.logs.wait_for(event="died", dn="root.c")  # delivered after the restart
        assert dns_of(harness, "died") == ["root.c"]
        return
    status = wait_status(sup, "root.c", state=State.DONE, running=False)
    assert sup.wait_settled(timeout=10)
    status = sup.snapshot()["root.c"]
    assert (status.state, status.restarts, status.last_error) == (State.DONE, 0, None)
    assert c.count == 1
    assert dns_of(harness, "died") == []
    assert "root.c" not in dns_of(harness, "restart_scheduled")
    assert [r.levelno for r in harness.logs.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("restart", RESTART_TYPES)
def test_a_failure(harness: Harness, restart: Restart) -> None:
    """Permanent and transient nodes restart after a failure; a temporary one stays
    DEAD with its error. Every failure is logged at ERROR."""
    c = RemoteRunnable()
    sup = start(harness, parent_of(lambda t: t.run("c", c, restart=restart)))
    c0 = c.wait_incarnation(0)
    c0.healthy()
    c0.die(OSError("disk on fire"))
    harness.logs.wait_for(event="died", dn="root.c", levelno=logging.ERROR)
    if restart == "temporary":
        wait_status(sup, "root.c", state=State.DEAD, running=False)
        assert sup.wait_settled(timeout=10)
        status = sup.snapshot()["root.c"]
        assert (status.state, status.restarts) == (State.DEAD, 0)
        assert status.last_error == "OSError: disk on fire"
        assert (status.gave_up, status.next_restart_at) == (None, None)
        assert c.count == 1
        assert "root.c" not in dns_of(harness, "restart_scheduled")
        return
    c.wait_incarnation(1)
    status = wait_status(sup, "root.c", restarts=1)
    assert status.last_error == "OSError: disk on fire"


def test_a_temporary_failure_neither_counts_nor_escalates(harness: Harness) -> None:
    """A temporary node is never restarted, so it has no intensity to exceed."""
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = start(
        harness,
        parent_of(lambda t: t.run_group({"a": a, "b": b}, restart="temporary", max_restarts=0)),
        max_restarts=0,
    )
    b0 = b.wait_incarnation(0)
    a.wait_incarnation(0).die()
    wait_status(sup, "root.a", state=State.DEAD, running=False)
    b0.die()
    wait_status(sup, "root.b", state=State.DEAD, running=False)
    assert sup.wait_settled(timeout=10)
    snap = sup.snapshot()
    assert (snap["root"].state, snap["root"].restarts) == (State.HEALTHY, 0)
    assert snap["root.a"].gave_up is None and snap["root.b"].gave_up is None
    assert dns_of(harness, "gave_up") == []
    assert sup.stop(timeout=10)
    assert sup.wait(timeout=0)  # no GaveUp


def test_finished_transient_and_temporary_nodes_let_the_tree_finish(harness: Harness) -> None:
    def setup(token: CancelToken) -> None:
        token.run("temp", raising(RuntimeError("gone")), restart="temporary")
        token.run("trans", lambda t: None, restart="transient")

    sup = start(harness, parent_of(setup, done=True))
    assert sup.wait(timeout=10)
    snap = sup.snapshot()
    assert {dn: s.state for dn, s in snap.items()} == {
        "root": State.DONE,
        "root.temp": State.DEAD,
        "root.trans": State.DONE,
    }
    assert not any(s.running for s in snap.values())


def test_a_parent_restart_builds_temporary_children_again(harness: Harness) -> None:
    """Children are the parent's code: a restarted parent runs its ``run`` calls
    again, temporary children included, as new nodes (OTP: a restarted supervisor
    starts every child of its spec)."""
    t = RemoteRunnable()
    p = RemoteRunnable(lambda tok: tok.run("t", t, restart="temporary"))
    sup = start(harness, parent_of(lambda tok: tok.run("p", p)))
    t0 = t.wait_incarnation(0)
    t0.die()
    wait_status(sup, "root.p.t", state=State.DEAD, running=False)
    p.wait_incarnation(0).die()
    t.wait_incarnation(1)
    status = wait_status(sup, "root.p.t", running=True)
    assert (status.restarts, status.last_error) == (0, None)


# ---------------------------------------------------------------------- intensity


def test_spread_failures_leave_the_window_and_never_give_up(harness: Harness) -> None:
    """max_restarts=1 within 0.2 s, with at least 0.25 s between failures: there is
    never more than one failure in the window, however many there are in all."""
    runs = itertools.count()
    healthy = threading.Event()

    def flaky(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        if next(runs) < 4:
            raise RuntimeError("flaky")
        healthy.set()
        token.wait()

    spaced = Backoff(initial=0.25, multiplier=1, jitter=0)
    sup = start(
        harness,
        parent_of(lambda t: t.run("c", flaky, max_restarts=1, within=0.2, backoff=spaced)),
    )
    assert healthy.wait(10)
    status = wait_status(sup, "root.c", state=State.HEALTHY)
    assert (status.restarts, status.gave_up) == (4, None)
    assert sup.snapshot()["root"].restarts == 0
    assert sup.wait_settled(timeout=10)  # every record delivered: none can come late
    assert dns_of(harness, "gave_up") == []


def test_bunched_failures_give_up_at_the_first_one_past_the_limit(harness: Harness) -> None:
    """max_restarts=2: the third failure within the window gives up, even though
    the node signalled HEALTHY every time (OTP counts restarts, not health)."""
    runs = itertools.count(1)
    c_runs: list[int] = []

    def flaky(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        n = next(runs)
        c_runs.append(n)
        raise RuntimeError(f"fail {n}")

    sup = start(
        harness,
        parent_of(lambda t: t.run("c", flaky, max_restarts=2, within=30, backoff=FAST_BACKOFF)),
        backoff=Backoff(initial=30, jitter=0),  # the root, once escalated to, stays DEAD
    )
    snap = wait_snapshot(
        sup, lambda s: "root.c" in s and s["root.c"].gave_up is not None, what="c gave up"
    )
    assert c_runs == [1, 2, 3]
    c, root = snap["root.c"], snap["root"]
    assert (c.state, c.restarts, c.last_error) == (State.DEAD, 2, "RuntimeError: fail 3")
    assert c.gave_up is not None and "max_restarts=2" in c.gave_up
    assert c.next_restart_at is None
    root = wait_status(sup, "root", running=False)
    assert (root.state, root.last_error) == (State.DEAD, "child c gave up: RuntimeError: fail 3")
    assert root.next_restart_at is not None and root.gave_up is None
    record = harness.logs.wait_for(event="gave_up", dn="root.c")
    assert record.levelno == logging.ERROR


def test_intensity_is_a_sliding_window(harness: Harness) -> None:
    """max_restarts=2 within 1 s, failures f1..f4 at about 0, 0.7, 1.1 and 1.15 s.

    At f3 the window holds f2 and f3 (f1 left it): no give-up, where a count that
    never decays would give up. At f4 it holds f2, f3, f4: give up, where windows
    cut at fixed times (one from f1, a new one from f3) would see only two.
    """
    within = 1.0
    c = RemoteRunnable()
    sup = start(
        harness,
        parent_of(lambda t: t.run("c", c, max_restarts=2, within=within, backoff=FAST_BACKOFF)),
        backoff=Backoff(initial=30, jitter=0),
    )
    c.wait_incarnation(0).die()
    c1 = c.wait_incarnation(1)
    f1_latest = time.monotonic()  # f1 was recorded before its restart
    time.sleep(0.7)
    f2_earliest = time.monotonic()
    c1.die()
    c2 = c.wait_incarnation(2)
    time.sleep(max(0.0, f1_latest + within + 0.05 - time.monotonic()))
    c2.die()  # f3: f1 is out of the window
    c3 = c.wait_incarnation(3)
    assert sup.snapshot()["root.c"].gave_up is None
    c3.die()  # f4: f2, f3 and f4 are in it
    status = wait_status(sup, "root.c", state=State.DEAD, running=False)
    f4_latest = time.monotonic()
    assert f4_latest - f2_earliest < within, "too slow a machine for this test"
    assert status.gave_up is not None
    assert status.restarts == 3
    assert c.count == 4


def test_cancellations_do_not_count_against_intensity(harness: Harness) -> None:
    """Only failures count: being cancelled by a group member's death does not."""
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = start(
        harness,
        parent_of(
            lambda t: t.run_group({"a": a, "b": b}, max_restarts=2, within=30, backoff=FAST_BACKOFF)
        ),
        backoff=Backoff(initial=30, jitter=0),
    )
    b.wait_incarnation(0)  # b's first incarnation is the one a's death cancels
    a.wait_incarnation(0).die()  # a: 1 failure
    a1 = a.wait_incarnation(1)
    b.wait_incarnation(1).die()  # b: 1 failure; a cancelled
    assert a1.cancel_seen.wait(10)
    a.wait_incarnation(2).die()  # a: 2 failures (3 if the cancellation counted)
    a3 = a.wait_incarnation(3)
    assert sup.snapshot()["root.a"].gave_up is None
    assert dns_of(harness, "gave_up") == []
    a3.die()  # a: 3 failures
    status = wait_status(sup, "root.a", state=State.DEAD, running=False)
    assert status.gave_up is not None
    harness.logs.wait_for(event="gave_up", dn="root.a")
    assert dns_of(harness, "gave_up") == ["root.a"]


def test_escalation_through_two_levels_makes_wait_raise_gave_up(harness: Harness) -> None:
    """leaf (max 1) gives up twice; the second time its parent mid (max 1) has
    failed twice too and gives up; the root (max 0) gives up at mid's failure and
    the tree stops. wait() raises GaveUp with the chain, innermost first."""
    leaf_runs = itertools.count(1)
    mid_starts: list[float] = []
    sibling = RemoteRunnable()

    def leaf(token: CancelToken) -> None:
        raise ValueError(f"leaf {next(leaf_runs)}")

    def mid(token: CancelToken) -> None:
        mid_starts.append(time.monotonic())
        token.run("leaf", leaf, max_restarts=1, within=30)
        token.signal(Signal.HEALTHY)
        token.wait()

    def setup(token: CancelToken) -> None:
        token.run("mid", mid, max_restarts=1, within=30, backoff=Backoff(initial=0.2, jitter=0))
        token.run("sibling", sibling)

    sup = start(harness, parent_of(setup), max_restarts=0, within=30)
    sibling.wait_incarnation(0)
    with pytest.raises(GaveUp) as raised:
        sup.wait(timeout=10)
    error = raised.value
    assert isinstance(error, ThreadsupError)
    assert error.failures == [
        ("root.mid.leaf", "ValueError: leaf 4"),
        ("root.mid", "child leaf gave up: ValueError: leaf 4"),
        ("root", "child mid gave up: child leaf gave up: ValueError: leaf 4"),
    ]
    assert "root.mid.leaf" in str(error)
    # mid restarted once, with its own backoff, after leaf's first giving up.
    assert len(mid_starts) == 2
    assert mid_starts[1] - mid_starts[0] >= 0.2
    # The tree has stopped: every thread has exited, the sibling was cancelled.
    assert sibling.current.outcome == "returned" and sibling.current.token.cancelled
    snap = sup.snapshot()
    assert not any(s.running for s in snap.values())
    for dn in ("root", "root.mid", "root.mid.leaf"):
        assert snap[dn].state is State.DEAD
        assert snap[dn].gave_up is not None, dn
    assert snap["root"].last_error == error.failures[-1][1]
    assert snap["root.mid"].restarts == 1
    assert dns_of(harness, "gave_up") == ["root.mid.leaf", "root.mid.leaf", "root.mid", "root"]
    assert {r.levelno for r in harness.logs.find(event="gave_up")} == {logging.ERROR}
    # wait() keeps saying why; stop() just stops.
    with pytest.raises(GaveUp):
        sup.wait(timeout=0)
    assert sup.stop(timeout=5)


def test_the_root_gives_up_on_its_own_failures(harness: Harness) -> None:
    runs = itertools.count(1)

    def root(token: CancelToken) -> None:
        raise RuntimeError(f"root {next(runs)}")

    sup = start(harness, root, max_restarts=2, within=30)
    with pytest.raises(GaveUp) as raised:
        sup.wait(timeout=10)
    assert raised.value.failures == [("root", "RuntimeError: root 3")]
    status = sup.snapshot()["root"]
    assert (status.state, status.restarts, status.running) == (State.DEAD, 2, False)


def test_a_temporary_parent_stops_escalation(harness: Harness) -> None:
    """leaf gives up and its temporary parent dies in its place, for good: it is
    not restarted, so nothing goes further up. The root's own limit is 0."""
    sibling = RemoteRunnable()
    leaf_runs = itertools.count()

    def leaf(token: CancelToken) -> None:
        next(leaf_runs)
        raise RuntimeError("boom")

    def p(token: CancelToken) -> None:
        token.run("leaf", leaf, max_restarts=0)
        token.signal(Signal.HEALTHY)
        token.wait()

    def setup(token: CancelToken) -> None:
        token.run("p", p, restart="temporary")
        token.run("sibling", sibling)

    sup = start(harness, parent_of(setup), max_restarts=0)
    sibling0 = sibling.wait_incarnation(0)
    wait_status(sup, "root.p", state=State.DEAD, running=False)
    assert sup.wait_settled(timeout=10)
    snap = sup.snapshot()
    assert (snap["root.p"].restarts, snap["root.p"].gave_up) == (0, None)
    assert snap["root.p"].last_error == "child leaf gave up: RuntimeError: boom"
    assert snap["root.p.leaf"].gave_up is not None
    assert (snap["root"].state, snap["root"].restarts) == (State.HEALTHY, 0)
    assert not sibling0.token.cancelled and sibling.count == 1
    assert next(leaf_runs) == 1
    assert sup.stop(timeout=10)  # which also delivers every log record
    assert sup.wait(timeout=0)  # stopped, not given up
    assert dns_of(harness, "gave_up") == ["root.p.leaf"]


# ------------------------------------------------------------------------ backoff


def _healthy_then_die(inc: Incarnation, healthy_for: float = 0.0) -> None:
    inc.healthy()
    if healthy_for:
        time.sleep(healthy_for)  # the point of the test: time spent HEALTHY
    inc.die()


@pytest.mark.slow
def test_stable_resets_the_backoff_only_after_the_period(harness: Harness) -> None:
    """Delays 0.1, 0.4, 1.6 ... (multiplier 4) with stable=1.5: a node HEALTHY for
    a moment before each crash keeps climbing; one HEALTHY for 1.6 s starts over.

    The period is long enough that "a moment" stays under it on a loaded machine.
    """
    backoff = Backoff(initial=0.1, multiplier=4, maximum=10, jitter=0, stable=1.5)
    c = RemoteRunnable()
    start(harness, parent_of(lambda t: t.run("c", c, backoff=backoff)))
    _healthy_then_die(c.wait_incarnation(0))
    _healthy_then_die(c.wait_incarnation(1))
    _healthy_then_die(c.wait_incarnation(2), healthy_for=1.6)
    c3 = c.wait_incarnation(3)
    # Not reset after a moment HEALTHY; reset after 1.6 s.
    assert scheduled_delays(harness, "root.c", 3) == [0.1, 0.4, 0.1]
    assert all(gap(c.incarnations[i], c.incarnations[i + 1]) >= 0.1 for i in (0, 2))
    assert gap(c.incarnations[1], c.incarnations[2]) >= 0.4
    c3.healthy()


def test_without_stable_healthy_resets_the_backoff_at_once(harness: Harness) -> None:
    """Delays would be 0.1, 0.8, 6.4 s without the resets."""
    backoff = Backoff(initial=0.1, multiplier=8, maximum=10, jitter=0)
    c = RemoteRunnable()
    start(harness, parent_of(lambda t: t.run("c", c, backoff=backoff)))
    for index in range(3):
        _healthy_then_die(c.wait_incarnation(index))
    c.wait_incarnation(3)
    assert scheduled_delays(harness, "root.c", 3) == [0.1, 0.1, 0.1]
    for index in range(3):
        assert gap(c.incarnations[index], c.incarnations[index + 1]) >= 0.1


def test_without_healthy_the_backoff_grows(harness: Harness) -> None:
    backoff = Backoff(initial=0.05, multiplier=4, maximum=10, jitter=0, stable=0.01)
    c = RemoteRunnable()
    start(harness, parent_of(lambda t: t.run("c", c, backoff=backoff)))
    c.wait_incarnation(0).die()
    c.wait_incarnation(1).die()
    c.wait_incarnation(2)
    assert scheduled_delays(harness, "root.c", 2) == [0.05, 0.2]
    assert gap(c.incarnations[0], c.incarnations[1]) >= 0.05
    assert gap(c.incarnations[1], c.incarnations[2]) >= 0.2


def test_done_resets_the_backoff_at_once_even_with_stable(harness: Harness) -> None:
    backoff = Backoff(initial=0.1, multiplier=4, maximum=10, jitter=0, stable=30)
    c = RemoteRunnable()
    sup = start(harness, parent_of(lambda t: t.run("c", c, backoff=backoff)))
    c.wait_incarnation(0).die()
    c.wait_incarnation(1).die()  # the next delay would be 1.6 s
    c2 = c.wait_incarnation(2)
    c2.healthy()
    c2.done()
    c2.finish()
    wait_status(sup, "root.c", state=State.DONE, running=False)
    sup.restart("root.c")
    c.wait_incarnation(3).die()
    c.wait_incarnation(4)
    # After the deaths of incarnations 0 and 1, the restart sup.restart() asked for,
    # and the death of incarnation 3: DONE started the sequence over.
    assert scheduled_delays(harness, "root.c", 4) == [0.1, 0.4, 0.0, 0.1]
    assert gap(c.incarnations[3], c.incarnations[4]) >= 0.1


def test_a_childs_backoff_overrides_the_supervisors(harness: Harness) -> None:
    fast = Backoff(initial=0.05, jitter=0)
    own, inherits = RemoteRunnable(), RemoteRunnable()
    g1, g2 = RemoteRunnable(), RemoteRunnable()

    def setup(token: CancelToken) -> None:
        token.run("own", own, backoff=fast)
        token.run("inherits", inherits)
        token.run_group({"g1": g1, "g2": g2}, backoff=fast)

    sup = start(harness, parent_of(setup), backoff=Backoff(initial=30, jitter=0))
    before = time.time()
    inherits.wait_incarnation(0).die()
    status = wait_status(sup, "root.inherits", state=State.DEAD, running=False)
    after = time.time()
    assert status.next_restart_at is not None
    assert before + 30 - 0.05 <= status.next_restart_at <= after + 30 + 0.05
    own.wait_incarnation(0).die()
    own.wait_incarnation(1)
    assert scheduled_delays(harness, "root.own", 1) == [0.05]
    # run_group's backoff= applies to every member.
    g1.wait_incarnation(0).die()
    g1.wait_incarnation(1)
    g2.wait_incarnation(1).die()  # g2 restarted at once with g1: cancelled, not dead
    g2.wait_incarnation(2)
    assert scheduled_delays(harness, "root.g1", 1) == [0.05]
    assert scheduled_delays(harness, "root.g2", 2) == [0.0, 0.05]
    assert inherits.count == 1
    assert sup.snapshot()["root.inherits"].state is State.DEAD


# --------------------------------------------------------------------- validation

BAD_POLICIES: list[tuple[dict[str, Any], type[Exception] | tuple[type[Exception], ...]]] = [
    ({"restart": "forever"}, ValueError),
    ({"restart": "Permanent"}, ValueError),
    ({"restart": None}, (ValueError, TypeError)),
    ({"max_restarts": -1}, ValueError),
    ({"max_restarts": 1.5}, (ValueError, TypeError)),
    ({"max_restarts": True}, (ValueError, TypeError)),
    ({"max_restarts": "3"}, (ValueError, TypeError)),
    ({"within": 0}, ValueError),
    ({"within": -1.0}, ValueError),
    ({"within": math.nan}, ValueError),
    ({"within": "60"}, TypeError),
    ({"within": None}, TypeError),
    ({"backoff": 0.5}, TypeError),
    ({"backoff": {"initial": 1}}, TypeError),
    ({"shutdown_timeout": -1}, ValueError),
    ({"on_stuck": "kill"}, ValueError),
]


@pytest.mark.parametrize("method", ["run", "run_group", "spawn"])
def test_bad_policies_raise_in_the_caller_and_create_nothing(harness: Harness, method: str) -> None:
    child, other = RemoteRunnable(), RemoteRunnable()

    def call(kwargs: dict[str, Any]) -> Callable[[CancelToken], None]:
        def in_runnable(token: CancelToken) -> None:
            if method == "run":
                token.run("c", child, **kwargs)
            elif method == "run_group":
                token.run_group({"c": child, "d": other}, **kwargs)
            else:
                token.spawn("c", child, **kwargs)

        return in_runnable

    root = RemoteRunnable()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    for kwargs, error in BAD_POLICIES:
        with pytest.raises(error):
            inc.call(call(kwargs))
    assert sup.wait_settled(timeout=10)
    assert list(sup.snapshot()) == ["root"]
    assert child.count == other.count == 0
    # Nothing was half created: the name is free.
    inc.call(call({"restart": "transient", "max_restarts": 0, "within": 1}))
    child.wait_incarnation(0)


def test_spawn_takes_only_temporary_or_transient(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    with pytest.raises(ValueError, match="permanent"):
        inc.call(lambda t: t.spawn("c", healthy_until_cancelled, restart="permanent"))
    assert list(sup.snapshot()) == ["root"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"stable": -1}, ValueError),
        ({"stable": math.nan}, ValueError),
        ({"stable": -math.inf}, ValueError),
        ({"stable": "1"}, TypeError),
        ({"stable": True}, TypeError),
    ],
)
def test_bad_stable_periods(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="stable"):
        Backoff(**kwargs)


def test_stable_defaults_to_zero() -> None:
    assert Backoff().stable == 0.0
    assert Backoff(stable=2).stable == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_restarts": -1}, ValueError),
        ({"max_restarts": 2.0}, (ValueError, TypeError)),
        ({"within": 0}, ValueError),
        ({"within": "60"}, TypeError),
    ],
)
def test_bad_root_intensity_raises_before_anything_starts(
    kwargs: dict[str, Any], error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    ran = threading.Event()
    with pytest.raises(error):
        Supervisor(lambda t: ran.set(), **kwargs)
    assert not ran.is_set()


def test_the_policy_defaults_keep_the_seeds_behaviour(harness: Harness) -> None:
    """No keyword: permanent, no limit, the supervisor's backoff."""
    runs = itertools.count()

    def flaky(token: CancelToken) -> None:
        if next(runs) < 12:
            raise RuntimeError("again")
        token.signal(Signal.HEALTHY)
        token.wait()

    tiny = Backoff(initial=0.001, multiplier=1, maximum=0.001, jitter=0)
    sup = start(harness, parent_of(lambda t: t.run("c", flaky)), backoff=tiny)
    status = wait_status(sup, "root.c", state=State.HEALTHY)
    assert (status.restart, status.restarts, status.gave_up) == ("permanent", 12, None)
    assert sup.snapshot()["root"].restarts == 0
