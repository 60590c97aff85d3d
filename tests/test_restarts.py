"""Restarts: groups, DONE members, subtrees, pending restarts and counters."""

from __future__ import annotations

import time

from threadsup import Backoff, CancelToken, Signal, State
from threadsup.testing import (
    Harness,
    RemoteRunnable,
    group_root,
    wait_snapshot,
    wait_status,
)


def test_a_done_member_restarts_with_its_group(harness: Harness) -> None:
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = harness.start(group_root({"a": a, "b": b}))
    a0 = a.wait_incarnation(0)
    a0.healthy()
    a0.done()
    a0.finish()
    wait_status(sup, "root.a", state=State.DONE, running=False)
    b.wait_incarnation(0).die()
    a1 = a.wait_incarnation(1)
    assert not a1.token.cancelled
    status = wait_status(sup, "root.a", state=State.NEW, running=True)
    assert (status.restarts, status.last_error) == (1, None)


def test_a_done_node_alone_in_its_group_stays_done_when_a_sibling_group_dies(
    harness: Harness,
) -> None:
    a, b = RemoteRunnable(), RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run("a", a)
        token.run("b", b)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    a0 = a.wait_incarnation(0)
    a0.healthy()
    a0.done()
    a0.finish()
    wait_status(sup, "root.a", state=State.DONE, running=False)
    b.wait_incarnation(0).die()
    b.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert a.count == 1
    assert sup.snapshot()["root.a"].state is State.DONE


def test_a_dead_node_waits_for_its_lingering_descendant_before_restarting(
    harness: Harness,
) -> None:
    """No restart while a thread of the subtree runs; the backoff starts after it ends."""
    delay = 0.3
    gate = harness.gate()
    g = RemoteRunnable(linger=gate)
    p = RemoteRunnable(lambda t: t.run("g", g))
    sup = harness.start(
        RemoteRunnable(lambda t: t.run("p", p)), backoff=Backoff(initial=delay, jitter=0)
    )
    g0 = g.wait_incarnation(0)
    p.wait_incarnation(0).die()
    assert g0.cancel_seen.wait(10)
    wait_status(sup, "root.p", state=State.DEAD, running=False)
    # g ignores its cancellation: nothing may restart while it runs. A restart
    # wrongly scheduled now would be pending, and wait_settled would wait it out.
    assert sup.wait_settled(timeout=10)
    snap = sup.snapshot()
    assert p.count == 1 and g.count == 1
    assert snap["root.p.g"].running
    assert snap["root.p"].state is State.DEAD
    released = time.monotonic()
    gate.set()
    p1 = p.wait_incarnation(1)
    assert p1.started_at - released >= delay * 0.9
    g.wait_incarnation(1)


def test_a_done_descendant_still_running_delays_the_restart(harness: Harness) -> None:
    """A DONE node whose function still runs is not finished (the Go code thought so)."""
    gate = harness.gate()
    g = RemoteRunnable(linger=gate)
    p = RemoteRunnable(lambda t: t.run("g", g))
    sup = harness.start(RemoteRunnable(lambda t: t.run("p", p)))
    g0 = g.wait_incarnation(0)
    g0.healthy()
    g0.done()
    wait_status(sup, "root.p.g", state=State.DONE, running=True)
    p.wait_incarnation(0).die()
    assert g0.cancel_seen.wait(10)
    assert sup.wait_settled(timeout=10)
    assert p.count == 1 and g.count == 1
    assert sup.snapshot()["root.p.g"].running
    gate.set()
    p.wait_incarnation(1)
    g.wait_incarnation(1)


def test_the_largest_ready_subtree_restarts_as_one(harness: Harness) -> None:
    gate = harness.gate()
    g = RemoteRunnable(linger=gate)
    c = RemoteRunnable(lambda t: t.run("g", g))
    p = RemoteRunnable(lambda t: t.run("c", c))
    sup = harness.start(RemoteRunnable(lambda t: t.run("p", p)))
    g0 = g.wait_incarnation(0)
    c.wait_incarnation(0).die(ValueError("c fails"))
    assert g0.cancel_seen.wait(10)
    wait_status(sup, "root.p.c", state=State.DEAD)
    p.wait_incarnation(0).die(ValueError("p fails"))
    wait_status(sup, "root.p", state=State.DEAD)
    assert sup.wait_settled(timeout=10)
    assert (p.count, c.count, g.count) == (1, 1, 1)
    gate.set()
    g.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    # p restarted once and built c and g again; c did not restart on its own.
    assert (p.count, c.count, g.count) == (2, 2, 2)
    snap = sup.snapshot()
    assert (snap["root.p"].restarts, snap["root.p"].last_error) == (1, "ValueError: p fails")
    assert (snap["root.p.c"].restarts, snap["root.p.c"].last_error) == (0, None)
    assert (snap["root.p.c.g"].restarts, snap["root.p.c.g"].last_error) == (0, None)


def test_a_cancelled_node_restarts_at_once_a_dead_one_after_its_backoff(
    harness: Harness,
) -> None:
    delay = 1.0
    a, b = RemoteRunnable(), RemoteRunnable()
    sup = harness.start(group_root({"a": a, "b": b}), backoff=Backoff(initial=delay, jitter=0))
    a.wait_incarnation(0)
    b0 = b.wait_incarnation(0)
    b0.die()
    a1 = a.wait_incarnation(1)
    b1 = b.wait_incarnation(1)
    assert b0.exited_at is not None
    assert b1.started_at - b0.exited_at >= delay * 0.9
    assert a1.started_at < b1.started_at - delay / 2
    assert sup.snapshot()["root.a"].last_error is None


def test_a_pending_restart_is_dropped_when_the_parent_is_cancelled(
    harness: Harness,
) -> None:
    delay = 1.0
    c = RemoteRunnable()
    p = RemoteRunnable(lambda t: t.run("c", c))
    sup = harness.start(
        RemoteRunnable(lambda t: t.run("p", p)), backoff=Backoff(initial=delay, jitter=0)
    )
    p0, c0 = p.wait_incarnation(0), c.wait_incarnation(0)
    c0.die(ValueError("c fails"))
    wait_status(sup, "root.p.c", state=State.DEAD, running=False)
    p0.die(ValueError("p fails"))  # c's restart is still waiting for its delay
    p1 = p.wait_incarnation(1)
    c1 = c.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert c.count == 2 and p.count == 2
    assert c1.started_at >= p1.started_at
    assert not c1.token.cancelled
    assert sup.snapshot()["root.p.c"].restarts == 0


def test_a_deep_death_restarts_only_its_own_group(harness: Harness) -> None:
    b = RemoteRunnable()
    a = RemoteRunnable(lambda t: t.run("b", b))
    one = RemoteRunnable(lambda t: t.run("a", a))
    two = RemoteRunnable()
    sup = harness.start(group_root({"one": one, "two": two}))
    b.wait_incarnation(0).die()
    b.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert (one.count, two.count, a.count, b.count) == (1, 1, 1, 2)
    a.current.die()
    b.wait_incarnation(2)
    assert sup.wait_settled(timeout=10)
    assert (one.count, two.count, a.count, b.count) == (1, 1, 2, 3)
    snap = sup.snapshot()
    assert snap["root.one.a"].restarts == 1
    assert snap["root.one.a.b"].restarts == 0  # rebuilt by its parent


def test_counters_belong_to_the_node(harness: Harness) -> None:
    """restarts/last_error: kept until the next failure, untouched by CANCELLED,
    and back to 0/None when an ancestor's restart discards the node."""
    c, d = RemoteRunnable(), RemoteRunnable()
    p = RemoteRunnable(lambda t: t.run_group({"c": c, "d": d}))
    sup = harness.start(RemoteRunnable(lambda t: t.run("p", p)))

    d.wait_incarnation(0)  # started: c's death will cancel it, not pre-empt it
    c.wait_incarnation(0).die(ValueError("one"))
    c.wait_incarnation(1).healthy()
    status = wait_status(sup, "root.p.c", state=State.HEALTHY, restarts=1)
    assert status.last_error == "ValueError: one"

    # c's death restarted its group: d runs its second incarnation.
    d.wait_incarnation(1).die(RuntimeError("d fails"))  # c exits CANCELLED
    c.wait_incarnation(2)
    status = wait_status(sup, "root.p.c", restarts=2)
    assert status.last_error == "ValueError: one"

    c.current.die(RuntimeError("two"))
    c.wait_incarnation(3)
    status = wait_status(sup, "root.p.c", restarts=3)
    assert status.last_error == "RuntimeError: two"

    p.wait_incarnation(0).die(ValueError("p fails"))
    c.wait_incarnation(4)
    snap = wait_snapshot(
        sup,
        lambda s: "root.p.c" in s and s["root.p"].restarts == 1,
        what="root.p restarted",
    )
    assert (snap["root.p"].restarts, snap["root.p"].last_error) == (1, "ValueError: p fails")
    assert (snap["root.p.c"].restarts, snap["root.p.c"].last_error) == (0, None)
    assert (snap["root.p.d"].restarts, snap["root.p.d"].last_error) == (0, None)
