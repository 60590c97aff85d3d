"""`Supervisor.ready` and `Supervisor.summary`: the tree's readiness rule and its
one-line description, on real runnables driven from the test."""

from __future__ import annotations

import pytest

from threadsup import Backoff, CancelToken, Signal, State
from threadsup._node import SUMMARY_LENGTH
from threadsup._policy import Restart
from threadsup.testing import (
    Harness,
    RemoteRunnable,
    done_at_once,
    run_each,
    spawner,
    wait_status,
    wait_until,
)

#: A backoff that keeps a DEAD node DEAD for the whole test.
NEVER_SOON = Backoff(initial=600.0, jitter=0.0)


def test_ready_once_the_root_and_every_permanent_node_is_up(harness: Harness) -> None:
    db, web = RemoteRunnable(), RemoteRunnable()
    root = RemoteRunnable(run_each(db=db, web=web))
    sup = harness.supervisor(root, backoff=NEVER_SOON)
    assert not sup.ready()
    assert sup.summary() == "1 node: 1 NEW (root)"
    harness.track(sup).start()
    root0, db0, web0 = (r.wait_incarnation(0) for r in (root, db, web))
    assert not sup.ready()
    assert sup.summary() == "3 nodes: 3 NEW (root, root.db, root.web)"
    root0.healthy()
    db0.healthy()
    assert not sup.ready()
    assert sup.summary() == "3 nodes: 2 HEALTHY, 1 NEW (root.web)"
    web0.healthy()
    assert sup.ready()
    assert sup.summary() == "3 nodes: 3 HEALTHY"
    web0.done()  # DONE counts as up, running or not
    assert sup.ready()
    web0.finish()
    wait_status(sup, "root.web", state=State.DONE, running=False)
    assert sup.ready()
    assert sup.summary() == "3 nodes: 2 HEALTHY, 1 DONE"
    db0.die()
    wait_status(sup, "root.db", state=State.DEAD, running=False)
    assert not sup.ready()
    assert sup.summary() == "3 nodes: 1 HEALTHY, 1 DONE, 1 DEAD (root.db)"
    sup.restart("root.db")
    db.wait_incarnation(1).healthy()
    assert sup.ready()


def test_transient_and_temporary_nodes_do_not_count(harness: Harness) -> None:
    transient, temporary = RemoteRunnable(), RemoteRunnable()

    def setup(token: CancelToken) -> None:
        token.run("t", transient, restart="transient")
        token.run("tmp", temporary, restart="temporary")

    root = RemoteRunnable(setup)
    sup = harness.start(root, backoff=NEVER_SOON)
    transient0, temporary0 = transient.wait_incarnation(0), temporary.wait_incarnation(0)
    root.wait_incarnation(0).healthy()
    assert sup.ready()  # both still NEW
    transient0.die()
    temporary0.die()
    wait_status(sup, "root.t", state=State.DEAD, running=False)
    wait_status(sup, "root.tmp", state=State.DEAD, running=False)
    assert sup.ready()
    assert sup.summary() == "3 nodes: 1 HEALTHY, 2 DEAD (root.t, root.tmp)"


@pytest.mark.parametrize(("restart", "ready_after"), [("temporary", True), ("transient", False)])
def test_permanent_children_of_a_node_that_does_not_count(
    harness: Harness, restart: Restart, ready_after: bool
) -> None:
    """They count while it may run them: not once it died for good (temporary),
    still while it waits to restart and build them again (transient)."""
    step = RemoteRunnable()
    job = RemoteRunnable(run_each(step=step))
    root = RemoteRunnable(lambda token: token.run("job", job, restart=restart))
    sup = harness.start(root, backoff=NEVER_SOON)
    job0, step0 = job.wait_incarnation(0), step.wait_incarnation(0)
    root.wait_incarnation(0).healthy()
    assert not sup.ready()  # step is permanent and NEW
    step0.healthy()
    assert sup.ready()  # job is NEW, but it does not count
    job0.die()
    wait_status(sup, "root.job.step", state=State.CANCELLED, running=False)
    wait_status(sup, "root.job", state=State.DEAD, running=False)
    assert sup.ready() is ready_after
    assert sup.summary() == "3 nodes: 1 HEALTHY, 1 DEAD (root.job), 1 CANCELLED"


def test_a_tree_of_several_levels(harness: Harness) -> None:
    c = RemoteRunnable()
    b = RemoteRunnable(run_each(c=c))
    a = RemoteRunnable(run_each(b=b))
    root = RemoteRunnable(run_each(a=a, wide=spawner(2)))  # and 7 nodes that get HEALTHY
    sup = harness.start(root, backoff=NEVER_SOON)
    for remote in (root, a, b):
        remote.wait_incarnation(0).healthy()
    c0 = c.wait_incarnation(0)
    expected = "11 nodes: 10 HEALTHY, 1 NEW (root.a.b.c)"
    wait_until(lambda: sup.summary() == expected, what=expected)
    assert not sup.ready()
    c0.healthy()
    assert sup.ready()
    c0.die()
    wait_status(sup, "root.a.b.c", state=State.DEAD, running=False)
    assert not sup.ready()
    assert sup.summary() == "11 nodes: 10 HEALTHY, 1 DEAD (root.a.b.c)"


def test_a_stopping_tree_is_not_ready(harness: Harness) -> None:
    root = RemoteRunnable(run_each(a=spawner(0)))
    sup = harness.start(root)
    root.wait_incarnation(0).healthy()
    wait_status(sup, "root.a", state=State.HEALTHY)
    assert sup.ready()
    sup.cancel()
    assert not sup.ready()  # at once, though the nodes have not exited yet
    assert sup.stop(timeout=10)
    assert not sup.ready()
    assert sup.summary() == "2 nodes: 2 CANCELLED"


def test_a_finished_tree_is_not_ready(harness: Harness) -> None:
    sup = harness.start(done_at_once)
    assert sup.wait(timeout=10)
    assert not sup.ready()
    assert sup.summary() == "1 node: 1 DONE"


def test_the_summary_names_a_few_nodes_and_stays_short(harness: Harness) -> None:
    children = {name: RemoteRunnable() for name in "abcde"}
    long_names = {name * 64: RemoteRunnable() for name in "xyz"}
    root = RemoteRunnable(run_each(**children, **long_names))
    sup = harness.start(root)
    root.wait_incarnation(0).healthy()
    for remote in (*children.values(), *long_names.values()):
        remote.wait_incarnation(0)
    assert sup.summary() == "9 nodes: 1 HEALTHY, 8 NEW (root.a, root.b, root.c, +5 more)"
    for remote in children.values():
        remote.current.healthy()
    summary = sup.summary()
    assert len(summary) == SUMMARY_LENGTH
    assert summary.startswith(f"9 nodes: 6 HEALTHY, 3 NEW (root.{'x' * 64}, root.{'y' * 64}")
    assert summary.endswith("...")


def test_the_summary_names_stuck_nodes(harness: Harness) -> None:
    a = RemoteRunnable(linger=harness.gate())

    def root(token: CancelToken) -> None:
        token.run("a", a, shutdown_timeout=0.05)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    a.wait_incarnation(0).healthy()
    assert sup.summary() == "2 nodes: 2 HEALTHY"
    sup.restart("root.a")
    wait_until(lambda: "stuck" in sup.summary(), what="root.a to be stuck")
    assert sup.summary() == "2 nodes: 2 HEALTHY, 1 stuck (root.a)"
