"""Dynamic children (`CancelToken.spawn`), runtime control (`Supervisor.restart`,
`Supervisor.remove`) and introspection (`NodeStatus` fields, `Supervisor.render`)."""

from __future__ import annotations

import gc
import itertools
import re
import threading
import time
from collections.abc import Mapping
from typing import Callable

import pytest

from threadsup import (
    Backoff,
    Cancelled,
    CancelToken,
    DuplicateName,
    InvalidName,
    NodeStatus,
    NotDynamic,
    Runnable,
    Signal,
    State,
    Supervisor,
    ThreadsupError,
    UnknownNode,
)
from threadsup._node import Node
from threadsup._policy import Restart
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_snapshot,
    wait_status,
    wait_until,
)

#: Tolerance when comparing `time.time` values taken in the test and in the supervisor.
CLOCK = 0.05

BAD_DNS: list[object] = [
    "nope",
    "root.nope",
    "root.a.nope",
    "",
    "root.",
    ".root",
    "root..a",
    "ROOT",
    42,
    None,
    b"root",
]


def start(
    harness: Harness, root: Runnable, *, backoff: Backoff | None = FAST_BACKOFF
) -> Supervisor:
    sup = Supervisor(root, logger=harness.logger, backoff=backoff)
    harness.track(sup)
    return sup.start()


def healthy_root(setup: Callable[[CancelToken], None] | None = None) -> RemoteRunnable:
    """A remote root that runs ``setup`` and is HEALTHY once its first incarnation starts."""

    def run(token: CancelToken) -> None:
        if setup is not None:
            setup(token)
        token.signal(Signal.HEALTHY)

    return RemoteRunnable(run)


def gone(sup: Supervisor, dn: str) -> None:
    wait_snapshot(sup, lambda s: dn not in s, what=f"{dn} to leave the tree")


# ---------------------------------------------------------------------------- spawn


def test_spawn_from_a_healthy_node(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    job = RemoteRunnable()
    dn = inc.call(lambda t: t.spawn("job", job))
    assert dn == "root.job"
    job.wait_incarnation(0).healthy()
    status = wait_status(sup, dn, state=State.HEALTHY, running=True)
    assert (status.dynamic, status.restart, status.group) == (True, "temporary", ("root.job",))
    assert sup.snapshot()["root"].dynamic is False
    assert list(sup.snapshot()) == ["root", "root.job"]


def test_spawn_while_new_and_from_a_helper_thread(harness: Harness) -> None:
    """Allowed while the token is live, whatever the state, from any thread."""
    first = RemoteRunnable()

    def setup(token: CancelToken) -> None:
        assert token.spawn("first", first) == "root.first"

    root = RemoteRunnable(setup)
    sup = start(harness, root)
    first.wait_incarnation(0)
    inc = root.wait_incarnation(0)
    second = RemoteRunnable()
    helper = threading.Thread(target=lambda: inc.token.spawn("second", second))
    helper.start()
    helper.join(10)
    second.wait_incarnation(0)
    assert wait_status(sup, "root.second", running=True).dynamic


@pytest.mark.parametrize("fails", [False, True])
def test_a_temporary_spawned_child_leaves_the_tree_when_it_ends(
    harness: Harness, fails: bool
) -> None:
    root = healthy_root()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    job = RemoteRunnable()
    dn = inc.call(lambda t: t.spawn("job", job))
    job0 = job.wait_incarnation(0)
    job0.healthy()
    if fails:
        job0.die(RuntimeError("job failed"))
        harness.logs.wait_for(event="died", dn=dn)
    else:
        job0.finish()
    gone(sup, dn)
    assert sup.wait_settled(timeout=10)
    assert job.count == 1
    assert list(sup.snapshot()) == ["root"]
    # The name is free again.
    again = RemoteRunnable()
    assert inc.call(lambda t: t.spawn("job", again)) == dn
    again.wait_incarnation(0)
    assert wait_status(sup, dn, running=True).restarts == 0


def test_a_transient_spawned_child_restarts_after_a_failure_and_leaves_once_done(
    harness: Harness,
) -> None:
    root = healthy_root()
    sup = start(harness, root)
    job = RemoteRunnable()
    dn = root.wait_incarnation(0).call(lambda t: t.spawn("job", job, restart="transient"))
    job.wait_incarnation(0).die(RuntimeError("first try"))
    job1 = job.wait_incarnation(1)
    status = wait_status(sup, dn, running=True)
    assert (status.restarts, status.last_error) == (1, "RuntimeError: first try")
    assert (status.restart, status.dynamic) == ("transient", True)
    job1.healthy()
    job1.finish()  # a normal return: DONE, for a transient node
    gone(sup, dn)
    assert sup.wait_settled(timeout=10)
    assert job.count == 2


def test_a_spawned_child_that_signals_done_leaves_the_tree(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    job = RemoteRunnable()
    dn = root.wait_incarnation(0).call(lambda t: t.spawn("job", job, restart="transient"))
    job0 = job.wait_incarnation(0)
    job0.healthy()
    job0.done()
    assert wait_status(sup, dn, state=State.DONE).running
    job0.finish()
    gone(sup, dn)


@pytest.mark.parametrize("restart", ["temporary", "transient"])
def test_spawned_children_are_cancelled_with_their_parent_and_not_recreated(
    harness: Harness, restart: Restart
) -> None:
    p = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("p", p)))
    p0 = p.wait_incarnation(0)
    p0.healthy()
    job, grandchild = RemoteRunnable(), RemoteRunnable()
    job_runnable = RemoteRunnable(lambda t: t.run("g", grandchild))
    p0.call(lambda t: t.spawn("job", job_runnable, restart=restart))
    p0.call(lambda t: t.spawn("other", job, restart=restart))
    g0 = grandchild.wait_incarnation(0)
    job0 = job.wait_incarnation(0)
    p0.die()
    assert job0.cancel_seen.wait(10) and g0.cancel_seen.wait(10)
    p1 = p.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    assert sorted(sup.snapshot()) == ["root", "root.p"]
    assert (job.count, job_runnable.count, grandchild.count) == (1, 1, 1)
    # The new incarnation adds what it wants again.
    p1.call(lambda t: t.spawn("job", healthy_until_cancelled, restart=restart))
    wait_status(sup, "root.p.job", state=State.HEALTHY)


def test_spawned_children_are_cancelled_when_the_tree_stops(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    jobs = [RemoteRunnable() for _ in range(5)]
    inc = root.wait_incarnation(0)
    for index, job in enumerate(jobs):
        inc.call(lambda t, job=job, index=index: t.spawn(f"job{index}", job))  # type: ignore[misc]
    for job in jobs:
        job.wait_incarnation(0)
    assert sup.stop(timeout=10)
    assert all(job.current.token.cancelled and job.current.exited.is_set() for job in jobs)


def test_a_duplicate_name_while_alive_raises_duplicate_name(harness: Harness) -> None:
    root = healthy_root(lambda t: t.run("static", healthy_until_cancelled))
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    job = RemoteRunnable()
    inc.call(lambda t: t.spawn("job", job))
    job0 = job.wait_incarnation(0)
    for name in ("job", "static"):
        with pytest.raises(DuplicateName):
            inc.call(lambda t, name=name: t.spawn(name, healthy_until_cancelled))  # type: ignore[misc]
    # A transient child waiting for its backoff still holds its name.
    slow = RemoteRunnable()
    inc.call(lambda t: t.spawn("slow", slow, restart="transient", backoff=Backoff(30, jitter=0)))
    slow.wait_incarnation(0).die()
    wait_status(sup, "root.slow", state=State.DEAD, running=False)
    with pytest.raises(DuplicateName):
        inc.call(lambda t: t.spawn("slow", healthy_until_cancelled))
    assert job.count == 1 and not job0.token.cancelled


def test_spawn_on_a_cancelled_token_raises_cancelled_and_adds_nothing(harness: Harness) -> None:
    p = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("p", p)))
    p0 = p.wait_incarnation(0)
    p0.die()
    p.wait_incarnation(1)
    ran = threading.Event()
    stale = p0.token
    with pytest.raises(Cancelled):
        stale.spawn("job", lambda t: ran.set())
    with pytest.raises(Cancelled):  # before any other check
        stale.spawn("Not A Name", lambda t: ran.set(), restart="permanent")
    assert sup.wait_settled(timeout=10)
    assert sorted(sup.snapshot()) == ["root", "root.p"]
    assert not ran.is_set()


def test_spawn_checks_its_arguments(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    with pytest.raises(InvalidName):
        inc.call(lambda t: t.spawn("Job", healthy_until_cancelled))
    with pytest.raises(ValueError):
        inc.call(lambda t: t.spawn("job", healthy_until_cancelled, restart="permanent"))
    with pytest.raises(TypeError):
        inc.call(lambda t: t.spawn("job", "not callable"))  # type: ignore[arg-type]
    assert list(sup.snapshot()) == ["root"]


def test_a_thousand_spawned_children_leave_the_tree(harness: Harness) -> None:
    """1,000 children added from 4 threads at once and finished (returning, failing,
    failing once then DONE, or removed): the tree is back to its static size, and
    no node of theirs stays in memory."""
    harness.logger.propagate = False  # keep 100 tracebacks out of pytest's capture
    per_thread = 250
    finished = itertools.count()
    first_try: set[str] = set()
    lock = threading.Lock()

    def returns(token: CancelToken) -> None:
        next(finished)

    def fails(token: CancelToken) -> None:
        next(finished)
        raise RuntimeError("job failed")

    def fails_once(token: CancelToken) -> None:
        with lock:
            retry = token.dn in first_try
            first_try.add(token.dn)
        if not retry:
            raise RuntimeError("first try")
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)
        next(finished)

    def until_removed(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.wait()
        next(finished)

    root = healthy_root(lambda t: t.run("static", healthy_until_cancelled))
    sup = start(harness, root)
    token = root.wait_incarnation(0).token
    wait_status(sup, "root.static", state=State.HEALTHY)
    static = len(sup.snapshot())
    gc.collect()
    nodes_before = sum(isinstance(o, Node) for o in gc.get_objects())
    errors: list[BaseException] = []

    def spawn_many(worker: int) -> None:
        try:
            for index in range(per_thread):
                name = f"w{worker}_job{index}"
                kind = index % 10
                if kind == 0:
                    token.spawn(name, fails)
                elif kind == 1:
                    token.spawn(name, fails_once, restart="transient")
                elif kind == 2:
                    dn = token.spawn(name, until_removed)
                    wait_status(sup, dn, state=State.HEALTHY)
                    assert sup.remove(dn, timeout=10)
                else:
                    token.spawn(name, returns)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=spawn_many, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    wait_until(lambda: next(finished) >= 4 * per_thread + 1, timeout=20, what="1000 jobs ran")
    wait_snapshot(sup, lambda s: len(s) == static, timeout=20, what="the static tree")
    assert sup.wait_settled(timeout=10)
    assert list(sup.snapshot()) == ["root", "root.static"]
    harness.logs.clear()  # records hold tracebacks, whose frames hold nodes
    gc.collect()
    nodes_after = sum(isinstance(o, Node) for o in gc.get_objects())
    assert nodes_after - nodes_before < 20
    # Every name is free again.
    token.spawn("w0_job0", healthy_until_cancelled)
    wait_status(sup, "root.w0_job0", state=State.HEALTHY)


def test_a_spawned_child_that_gives_up_takes_its_parent_down(harness: Harness) -> None:
    p = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("p", p)))
    p0 = p.wait_incarnation(0)
    job = RemoteRunnable()
    p0.call(lambda t: t.spawn("job", job, restart="transient", max_restarts=0))
    job.wait_incarnation(0).die(RuntimeError("job failed"))
    p.wait_incarnation(1)
    status = wait_status(sup, "root.p", running=True)
    assert (status.restarts, status.last_error) == (
        1,
        "child job gave up: RuntimeError: job failed",
    )
    harness.logs.wait_for(event="gave_up", dn="root.p.job")
    assert sup.wait_settled(timeout=10)
    assert sorted(sup.snapshot()) == ["root", "root.p"]
    assert job.count == 1
    assert [getattr(r, "dn", None) for r in harness.logs.find(event="gave_up")] == ["root.p.job"]


# --------------------------------------------------------------------------- remove


def test_remove_cancels_a_spawned_child_and_returns_true_once_it_has_left(
    harness: Harness,
) -> None:
    root = healthy_root()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    job, grandchild = RemoteRunnable(), RemoteRunnable()
    conn = RemoteRunnable(lambda t: t.run("reader", grandchild))
    dn = inc.call(lambda t: t.spawn("conn", conn, restart="transient"))
    inc.call(lambda t: t.spawn("job", job))
    job.wait_incarnation(0)
    grandchild.wait_incarnation(0)
    with pytest.raises(NotDynamic):  # a static child of a spawned one
        sup.remove("root.conn.reader")
    assert sup.remove(dn, timeout=10) is True
    assert sorted(sup.snapshot()) == ["root", "root.job"]
    assert conn.current.exited.is_set() and grandchild.current.exited.is_set()
    assert not job.current.token.cancelled
    assert sup.wait_settled(timeout=10)
    assert (conn.count, grandchild.count) == (1, 1)  # transient, but removed: not restarted
    with pytest.raises(UnknownNode):
        sup.remove(dn)


def test_remove_right_after_spawn(harness: Harness) -> None:
    """Removed before (or just as) it starts: it leaves all the same."""
    root = healthy_root()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)
    for index in range(20):

        def spawn_and_remove(token: CancelToken, index: int = index) -> bool:
            return sup.remove(token.spawn(f"quick{index}", healthy_until_cancelled), timeout=10)

        assert inc.call(spawn_and_remove) is True
    assert sup.wait_settled(timeout=10)
    assert list(sup.snapshot()) == ["root"]


def test_remove_of_a_child_waiting_for_its_backoff(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    job = RemoteRunnable()
    dn = root.wait_incarnation(0).call(
        lambda t: t.spawn("job", job, restart="transient", backoff=Backoff(30, jitter=0))
    )
    job.wait_incarnation(0).die()
    wait_status(sup, dn, state=State.DEAD, running=False)
    assert sup.remove(dn, timeout=10) is True
    assert dn not in sup.snapshot()
    assert sup.wait_settled(timeout=10)
    assert job.count == 1


def test_remove_times_out_with_a_child_that_ignores_cancellation(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    release = harness.gate()
    job = RemoteRunnable(linger=release)
    dn = root.wait_incarnation(0).call(lambda t: t.spawn("job", job))
    job0 = job.wait_incarnation(0)
    began = time.monotonic()
    assert sup.remove(dn, timeout=0.2) is False
    assert time.monotonic() - began >= 0.2
    assert job0.cancel_seen.wait(10)
    status = sup.snapshot()[dn]
    assert status.running and status.state is State.NEW
    release.set()
    gone(sup, dn)
    assert job.count == 1


def test_remove_rejects_unknown_and_static_nodes(harness: Harness) -> None:
    p = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("p", p)))
    p.wait_incarnation(0)
    for dn in BAD_DNS:
        with pytest.raises(UnknownNode) as raised:
            sup.remove(dn)  # type: ignore[arg-type]
        assert isinstance(raised.value, KeyError) and isinstance(raised.value, ThreadsupError)
        assert repr(dn) in str(raised.value)
    for dn in ("root", "root.p"):
        with pytest.raises(NotDynamic) as not_dynamic:
            sup.remove(dn)
        assert isinstance(not_dynamic.value, ValueError)
        assert dn in str(not_dynamic.value)
    with pytest.raises(ValueError):
        sup.remove("root.p", timeout=-1)
    assert sup.wait_settled(timeout=10)
    assert p.count == 1 and not p.current.token.cancelled


# -------------------------------------------------------------------------- restart


def test_restart_of_a_leaf(harness: Harness) -> None:
    a = RemoteRunnable()
    root = healthy_root(lambda t: t.run("a", a))
    sup = start(harness, root)
    a0 = a.wait_incarnation(0)
    a0.healthy()
    sup.restart("root.a")
    assert a0.cancel_seen.wait(10)
    a.wait_incarnation(1)
    status = wait_status(sup, "root.a", running=True)
    assert (status.state, status.restarts, status.last_error) == (State.NEW, 1, None)
    assert root.count == 1 and not root.current.token.cancelled


def test_restart_of_a_subtree(harness: Harness) -> None:
    g, sibling = RemoteRunnable(), RemoteRunnable()
    p = RemoteRunnable(lambda t: t.run("g", g))

    def setup(token: CancelToken) -> None:
        token.run("p", p)
        token.run("sibling", sibling)

    sup = start(harness, healthy_root(setup))
    g0 = g.wait_incarnation(0)
    sibling.wait_incarnation(0)
    g0.die()  # g's counters belong to the node the restart discards
    g1 = g.wait_incarnation(1)
    sup.restart("root.p")
    assert g1.cancel_seen.wait(10)
    p.wait_incarnation(1)
    g.wait_incarnation(2)
    status = wait_status(sup, "root.p.g", running=True)
    assert (status.restarts, status.last_error) == (0, None)
    assert sup.snapshot()["root.p"].restarts == 1
    assert sibling.count == 1 and sup.snapshot()["root"].restarts == 0


def test_restart_of_the_root(harness: Harness) -> None:
    a = RemoteRunnable()
    root = healthy_root(lambda t: t.run("a", a))
    sup = start(harness, root)
    a0 = a.wait_incarnation(0)
    sup.restart("root")
    assert a0.cancel_seen.wait(10)
    root.wait_incarnation(1)
    a.wait_incarnation(1)
    snap = wait_snapshot(sup, lambda s: "root.a" in s, what="root.a back")
    assert (snap["root"].restarts, snap["root.a"].restarts) == (1, 0)
    assert sup.wait(timeout=0) is False  # the tree goes on


def test_restart_of_a_node_waiting_for_its_backoff_restarts_it_now(harness: Harness) -> None:
    a = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("a", a)), backoff=Backoff(30, jitter=0))
    a.wait_incarnation(0).die(RuntimeError("crashed"))
    status = wait_status(sup, "root.a", state=State.DEAD, running=False)
    assert status.next_restart_at is not None
    asked = time.monotonic()
    sup.restart("root.a")
    a1 = a.wait_incarnation(1, timeout=5)
    assert a1.started_at - asked < 2
    status = wait_status(sup, "root.a", running=True)
    assert (status.restarts, status.next_restart_at) == (1, None)
    assert status.last_error == "RuntimeError: crashed"
    assert sup.wait_settled(timeout=10)  # no restart left pending
    assert a.count == 2
    # One death, two decisions: the backoff's, then the requested one, which says so.
    assert len(harness.logs.find(event="died", dn="root.a")) == 1
    decisions = harness.logs.find(event="restart_scheduled", dn="root.a")
    assert [(r.__dict__["delay"], r.__dict__["requested"]) for r in decisions] == [
        (30.0, False),
        (0.0, True),
    ]
    assert decisions[1].getMessage().endswith("as sup.restart() asked")


def test_restart_of_a_dead_node_whose_thread_still_runs_restarts_it_once_it_exits(
    harness: Harness,
) -> None:
    """p is DEAD (its child gave up) but its runnable takes a while to stop: a
    restart asked for meanwhile brings it back as soon as it exits, not after
    its 30 s backoff."""
    release = harness.gate()
    leaf = RemoteRunnable()
    p = RemoteRunnable(
        lambda t: t.run("leaf", leaf, max_restarts=0, backoff=FAST_BACKOFF), linger=release
    )
    sup = start(harness, healthy_root(lambda t: t.run("p", p)), backoff=Backoff(30, jitter=0))
    p0 = p.wait_incarnation(0)
    leaf.wait_incarnation(0).die()
    assert p0.cancel_seen.wait(10)
    assert wait_status(sup, "root.p", state=State.DEAD).running
    sup.restart("root.p")
    release.set()
    p.wait_incarnation(1, timeout=3)


def test_restart_of_a_done_node_runs_it_again(harness: Harness) -> None:
    a = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("a", a, restart="transient")))
    a0 = a.wait_incarnation(0)
    a0.finish()
    wait_status(sup, "root.a", state=State.DONE, running=False)
    sup.restart("root.a")
    a.wait_incarnation(1)
    assert wait_status(sup, "root.a", running=True).restarts == 1


def test_restart_of_a_gave_up_node_gives_it_its_intensity_back(harness: Harness) -> None:
    """A node that gave up took its parent down, so it comes back with its parent:
    restart clears its giving up at once; restarting the parent (waiting for its
    own backoff) brings both back now."""
    leaf = RemoteRunnable()
    p = RemoteRunnable(lambda t: t.run("leaf", leaf, max_restarts=0, backoff=FAST_BACKOFF))
    sup = start(
        harness,
        healthy_root(lambda t: t.run("p", p, backoff=Backoff(30, jitter=0))),
    )
    leaf.wait_incarnation(0).die(RuntimeError("boom"))
    snap = wait_snapshot(
        sup,
        lambda s: s["root.p"].state is State.DEAD and not s["root.p"].running,
        what="p dead",
    )
    assert snap["root.p.leaf"].gave_up is not None
    assert snap["root.p"].next_restart_at is not None
    sup.restart("root.p.leaf")
    status = sup.snapshot()["root.p.leaf"]
    assert status.gave_up is None
    assert not status.running  # its parent is dead: nothing runs under it
    sup.restart("root.p")
    p.wait_incarnation(1, timeout=5)
    leaf1 = leaf.wait_incarnation(1, timeout=5)
    status = wait_status(sup, "root.p.leaf", running=True)
    assert (status.gave_up, status.restarts, status.last_error) == (None, 0, None)
    assert wait_status(sup, "root.p", running=True).restarts == 1
    leaf1.die()  # fresh intensity: max_restarts=0 again gives up at the first failure
    assert wait_status(sup, "root.p.leaf", running=False).gave_up is not None


def test_restart_of_a_temporary_node_does_not_bring_it_back(harness: Harness) -> None:
    """ "After any exit it stays as it ended": a restart cancels a running temporary
    node for good, and leaves an ended one as it is."""
    running, failed, finished = RemoteRunnable(), RemoteRunnable(), RemoteRunnable()

    def setup(token: CancelToken) -> None:
        token.run("running", running, restart="temporary")
        token.run("failed", failed, restart="temporary")
        token.run("finished", finished, restart="temporary")

    sup = start(harness, healthy_root(setup))
    r0 = running.wait_incarnation(0)
    failed.wait_incarnation(0).die(RuntimeError("failed"))
    finished.wait_incarnation(0).finish()
    wait_status(sup, "root.failed", state=State.DEAD, running=False)
    wait_status(sup, "root.finished", state=State.DONE, running=False)
    sup.restart("root.running")
    assert r0.cancel_seen.wait(10)
    wait_status(sup, "root.running", state=State.CANCELLED, running=False)
    sup.restart("root.failed")
    sup.restart("root.finished")
    assert sup.wait_settled(timeout=10)
    snap = sup.snapshot()
    assert (running.count, failed.count, finished.count) == (1, 1, 1)
    assert {dn: (s.state, s.restarts) for dn, s in snap.items() if dn != "root"} == {
        "root.running": (State.CANCELLED, 0),
        "root.failed": (State.DEAD, 0),
        "root.finished": (State.DONE, 0),
    }
    assert snap["root.failed"].last_error == "RuntimeError: failed"


def test_restart_of_a_spawned_transient_child(harness: Harness) -> None:
    root = healthy_root()
    sup = start(harness, root)
    job = RemoteRunnable()
    dn = root.wait_incarnation(0).call(lambda t: t.spawn("job", job, restart="transient"))
    job0 = job.wait_incarnation(0)
    sup.restart(dn)
    assert job0.cancel_seen.wait(10)
    job.wait_incarnation(1)
    status = wait_status(sup, dn, running=True)
    assert (status.restarts, status.dynamic) == (1, True)


def test_restart_rejects_unknown_dns(harness: Harness) -> None:
    a = RemoteRunnable()
    sup = start(harness, healthy_root(lambda t: t.run("a", a)))
    a.wait_incarnation(0)
    for dn in BAD_DNS:
        with pytest.raises(UnknownNode) as raised:
            sup.restart(dn)  # type: ignore[arg-type]
        assert isinstance(raised.value, KeyError) and isinstance(raised.value, ThreadsupError)
        assert repr(dn) in str(raised.value)
    assert sup.wait_settled(timeout=10)
    assert a.count == 1 and not a.current.token.cancelled


def test_control_calls_from_inside_runnables(harness: Harness) -> None:
    a, b = RemoteRunnable(), RemoteRunnable()

    def setup(token: CancelToken) -> None:
        token.run("a", a)
        token.run("b", b)

    root = healthy_root(setup)
    sup = start(harness, root)
    a0, b0 = a.wait_incarnation(0), b.wait_incarnation(0)
    # A runnable restarts itself: it is cancelled, returns, and comes back.
    a0.call(lambda t: sup.restart(t.dn))
    a1 = a.wait_incarnation(1)
    assert a0.outcome == "returned"
    # ... and a sibling.
    a1.call(lambda t: sup.restart("root.b"))
    assert b0.cancel_seen.wait(10)
    b.wait_incarnation(1)
    # A parent removes the child it spawned, from its own thread.
    job = RemoteRunnable()
    root0 = root.wait_incarnation(0)
    dn = root0.call(lambda t: t.spawn("job", job))
    job.wait_incarnation(0)
    assert root0.call(lambda t: sup.remove(dn, timeout=10)) is True
    # Introspection from a runnable.
    assert "job" not in root0.call(lambda t: sup.render())
    assert list(a1.call(lambda t: sup.snapshot())) == ["root", "root.a", "root.b"]
    # A child restarts the whole tree.
    b.current.call(lambda t: sup.restart("root"))
    root.wait_incarnation(1)
    a.wait_incarnation(2)
    assert wait_status(sup, "root", running=True).restarts == 1


def test_remove_from_the_removed_childs_own_thread_does_not_wait_for_itself(
    harness: Harness,
) -> None:
    """Like stop() from a runnable: the calling thread cannot have ended, so
    waiting is pointless (and with timeout=None would never end)."""
    root = healthy_root()
    sup = start(harness, root)
    job = RemoteRunnable()
    dn = root.wait_incarnation(0).call(lambda t: t.spawn("job", job))

    def remove_self(token: CancelToken) -> tuple[bool, float]:
        began = time.monotonic()
        return sup.remove(token.dn, timeout=30.0), time.monotonic() - began

    removed, took = job.wait_incarnation(0).call(remove_self)
    gone(sup, dn)
    assert removed is False
    assert took < 10.0  # did not wait out its own exit


# ----------------------------------------------------------------- introspection


def test_node_status_fields(harness: Harness) -> None:
    a, b, single = RemoteRunnable(), RemoteRunnable(), RemoteRunnable()

    def setup(token: CancelToken) -> None:
        token.run_group({"a": a, "b": b}, restart="transient")
        token.run("single", single, backoff=Backoff(30, jitter=0))

    before_start = time.time()
    root = healthy_root(setup)
    sup = start(harness, root)
    a0 = a.wait_incarnation(0)
    after_start = time.time()
    single.wait_incarnation(0)  # root adds it after the group, which may already run
    snap = sup.snapshot()
    assert snap["root.a"].group == snap["root.b"].group == ("root.a", "root.b")
    assert snap["root.single"].group == ("root.single",)
    assert snap["root"].group == ("root",)
    assert (snap["root.a"].restart, snap["root.single"].restart) == ("transient", "permanent")
    assert snap["root"].restart == "permanent"
    assert not any(s.dynamic for s in snap.values())
    assert (snap["root.a"].stuck_for, snap["root.a"].abandoned) == (None, 0)
    started_at = snap["root.a"].started_at
    assert started_at is not None
    assert before_start - CLOCK <= started_at <= after_start + CLOCK
    assert snap["root.a"].healthy_since is None
    before_healthy = time.time()
    a0.healthy()
    after_healthy = time.time()
    status = sup.snapshot()["root.a"]
    assert status.healthy_since is not None
    assert before_healthy - CLOCK <= status.healthy_since <= after_healthy + CLOCK
    assert status.started_at == pytest.approx(started_at, abs=CLOCK)
    assert (status.next_restart_at, status.gave_up) == (None, None)
    # A restart gives a new start time and clears healthy_since.
    before_restart = time.time()
    sup.restart("root.a")
    a.wait_incarnation(1)
    after_restart = time.time()
    status = wait_status(sup, "root.a", running=True, restarts=1)
    assert status.started_at is not None
    assert before_restart - CLOCK <= status.started_at <= after_restart + CLOCK
    assert status.healthy_since is None
    # A backoff restart shows when it is due.
    before_death = time.time()
    single.wait_incarnation(0).die()
    status = wait_status(sup, "root.single", state=State.DEAD, running=False)
    after_death = time.time()
    assert status.next_restart_at is not None
    assert before_death + 30 - CLOCK <= status.next_restart_at <= after_death + 30 + CLOCK
    sup.restart("root.single")
    single.wait_incarnation(1)
    assert wait_status(sup, "root.single", running=True).next_restart_at is None


def test_node_status_gave_up(harness: Harness) -> None:
    def setup(token: CancelToken) -> None:
        token.run(
            "p",
            RemoteRunnable(lambda t: t.run("leaf", leaf, max_restarts=1, within=30)),
            restart="temporary",
        )

    leaf = RemoteRunnable()
    sup = start(harness, healthy_root(setup))
    leaf.wait_incarnation(0).die()
    leaf.wait_incarnation(1).die(RuntimeError("again"))
    wait_status(sup, "root.p", state=State.DEAD, running=False)
    status = sup.snapshot()["root.p.leaf"]
    assert status.gave_up is not None
    assert re.fullmatch(r"2 failures within 30 s \(max_restarts=1\)", status.gave_up)
    assert (status.state, status.last_error) == (State.DEAD, "RuntimeError: again")
    assert sup.snapshot()["root.p"].gave_up is None


_DURATION = re.compile(r"\b\d+(?:\.\d)?s\b|\b\d+m\d\ds\b|\b\d+h\d\dm\b")


def test_render_draws_the_tree(harness: Harness) -> None:
    g, b, leaf, job = RemoteRunnable(), RemoteRunnable(), RemoteRunnable(), RemoteRunnable()
    a = RemoteRunnable(lambda t: t.run("g", g))
    p = RemoteRunnable(lambda t: t.run("leaf", leaf, max_restarts=0))

    def setup(token: CancelToken) -> None:
        token.run_group({"a": a, "b": b})
        token.run("p", p, restart="temporary")

    root = healthy_root(setup)
    sup = start(harness, root, backoff=Backoff(30, jitter=0))
    g.wait_incarnation(0)
    b.wait_incarnation(0).die(RuntimeError("bad disk"))
    a.wait_incarnation(1).healthy()
    g.wait_incarnation(1)
    leaf.wait_incarnation(0).die(RuntimeError("boom"))
    root.wait_incarnation(0).call(lambda t: t.spawn("job", job))
    job.wait_incarnation(0).healthy()

    def drawn(snap: Mapping[str, NodeStatus]) -> bool:
        return (
            "root.job" in snap
            and snap["root.job"].state is State.HEALTHY
            and snap["root.a"].state is State.HEALTHY
            and snap["root.a.g"].running
            and not snap["root.b"].running
            and not snap["root.p"].running
        )

    wait_snapshot(sup, drawn, what="the tree drawn below")
    text = _DURATION.sub("<t>", sup.render())
    assert text.splitlines() == [
        "root  HEALTHY  up <t>  restarts 0",
        "├─ a  HEALTHY  up <t>  restarts 1",
        "│  └─ g  NEW  up <t>  restarts 0",
        "├─ b  DEAD  restarts 0  restart in <t>  last error: RuntimeError: bad disk",
        "├─ p  DEAD  restarts 0  last error: child leaf gave up: RuntimeError: boom",
        "│  └─ leaf  DEAD  restarts 0  gave up: 1 failure within 60 s (max_restarts=0)"
        "  last error: RuntimeError: boom",
        "└─ job  HEALTHY  up <t>  restarts 0",
    ]
    ups = [float(m) for m in re.findall(r"up (\d+\.\d)s", sup.render())]
    assert len(ups) == 4 and all(0 <= up < 30 for up in ups)
    restart_in = re.search(r"restart in (\d+\.\d)s", sup.render())
    assert restart_in is not None and 20 < float(restart_in.group(1)) <= 30
