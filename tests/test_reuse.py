"""Thread reuse: ``Supervisor(reuse_threads=True)`` and per child ``reuse_thread``.

A runnable's thread that ended its incarnation cleanly parks, bounded in number
(``parked_threads``) and in idle time (``park_timeout``), and is handed the next
incarnation or spawned child that reuses threads. Abandoned and interrupted
threads never park. Every parked thread ends with the tree.
"""

from __future__ import annotations

import contextvars
import logging
import math
import queue
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable

import pytest

from conftest import StartFaults
from threadsup import (
    Backoff,
    Cancelled,
    CancelToken,
    Runnable,
    Signal,
    State,
    Supervisor,
)
from threadsup._park import PARK_TIMEOUT, PARKED_NAME, PARKED_THREADS, Worker
from threadsup._policy import ChildPolicy
from threadsup.testing import Harness, wait_status, wait_until

#: Bound of every wait here.
SOON = 10.0
#: A DEAD node waits for `Supervisor.restart`: the test decides when it restarts.
NEVER = Backoff(initial=math.inf, maximum=math.inf, jitter=0)
#: For trees that log thousands of records: only warnings, kept nowhere.
QUIET = logging.getLogger("threadsup_test_reuse_quiet")
QUIET.setLevel(logging.WARNING)
QUIET.propagate = False


def workers(sup: Supervisor) -> list[threading.Thread]:
    """The live reusable threads of ``sup``'s tree."""
    return [t for t in threading.enumerate() if isinstance(t, Worker) and t.tree is sup._tree]


def parked(sup: Supervisor) -> list[threading.Thread]:
    return [t for t in workers(sup) if t.name == PARKED_NAME]


def wait_parked(sup: Supervisor, count: int) -> list[threading.Thread]:
    wait_until(lambda: len(parked(sup)) == count, SOON, f"{count} parked threads")
    return parked(sup)


class Jobs:
    """A root that spawns, on request, a child per job, and records the thread
    every child ran on; a job is the child's body, given its token."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, Callable[[CancelToken], None], Any]] = queue.Queue()
        self.threads: dict[str, threading.Thread] = {}
        self.names: dict[str, str] = {}

    def root(self, token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        while True:
            name, body, options = token.get(self.requests)
            token.spawn(name, self._child(name, body), **options)

    def _child(self, name: str, body: Callable[[CancelToken], None]) -> Runnable:
        def child(token: CancelToken) -> None:
            thread = threading.current_thread()
            self.threads[name] = thread
            self.names[name] = thread.name
            body(token)

        return child

    def spawn(self, name: str, body: Callable[[CancelToken], None], **options: Any) -> None:
        self.requests.put((name, body, options))

    def run(self, sup: Supervisor, name: str, body: Callable[[CancelToken], None]) -> None:
        """Spawn ``name`` and wait until it has left the tree."""
        self.spawn(name, body)
        wait_until(lambda: name in self.threads, SOON, f"{name} ran")
        wait_until(lambda: f"root.{name}" not in sup.snapshot(), SOON, f"{name} left")


def parent_of(name: str, runnable: Runnable, **policy: Any) -> Runnable:
    """A root that runs ``runnable`` as its child ``name``, with ``policy``
    keywords, signals HEALTHY and waits for cancellation."""

    def root(token: CancelToken) -> None:
        token.run(name, runnable, **policy)
        token.signal(Signal.HEALTHY)
        token.wait()

    return root


def nothing(token: CancelToken) -> None:
    pass


def waits_for(gate: threading.Event) -> Callable[[CancelToken], None]:
    def body(token: CancelToken) -> None:
        token.wait_for(gate)

    return body


# ------------------------------------------------------------------- parking


def test_a_child_runs_on_the_thread_its_predecessor_parked(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", nothing)
    (thread,) = wait_parked(sup, 1)
    assert thread is jobs.threads["first"]
    for name in ("second", "third"):
        jobs.run(sup, name, nothing)
        assert jobs.threads[name] is thread
        wait_parked(sup, 1)
    # Renamed to the DN it runs, and to a name of its own while parked.
    assert jobs.names == {"first": "root.first", "second": "root.second", "third": "root.third"}
    assert thread.name == PARKED_NAME


def test_parked_threads_use_no_cpu_and_block_on_their_own_lock(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", nothing)
    (thread,) = wait_parked(sup, 1)
    assert thread.ident is not None
    frames = sys._current_frames()
    stack = []
    frame: FrameType | None = frames[thread.ident]
    while frame is not None:
        stack.append(frame.f_code.co_name)
        frame = frame.f_back
    assert stack[:3] == ["_acquire", "wait_in_turns", "park"], stack


def test_without_reuse_every_incarnation_gets_a_thread_of_its_own(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root)
    jobs.run(sup, "first", nothing)
    jobs.run(sup, "second", nothing)
    assert jobs.threads["first"] is not jobs.threads["second"]
    assert not isinstance(jobs.threads["first"], Worker) and not workers(sup)


def test_reuse_survives_a_restart_with_a_new_token(harness: Harness) -> None:
    seen: list[tuple[threading.Thread, CancelToken]] = []

    def flaky(token: CancelToken) -> None:
        seen.append((threading.current_thread(), token))
        token.signal(Signal.HEALTHY)
        raise RuntimeError("flaky fails")

    root = parent_of("flaky", flaky, backoff=NEVER)
    sup = harness.start(root, reuse_threads=True)
    wait_status(sup, "root.flaky", state=State.DEAD, restarts=0, running=False)
    (thread,) = wait_parked(sup, 1)
    sup.restart("root.flaky")
    wait_status(sup, "root.flaky", state=State.DEAD, restarts=1, running=False)
    assert [t for t, _ in seen] == [thread, thread]
    assert seen[0][1] is not seen[1][1] and seen[0][1].cancelled


def test_a_group_sibling_restarts_on_a_parked_thread(harness: Harness) -> None:
    """b dies, a is cancelled: a's next incarnation takes a parked thread, no new one."""
    jobs = Jobs()
    started: dict[str, list[threading.Thread]] = {"a": [], "b": []}
    fail = threading.Event()

    def a(token: CancelToken) -> None:
        started["a"].append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        token.wait()

    def b(token: CancelToken) -> None:
        started["b"].append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        if token.wait_for(fail) and not token.cancelled:
            fail.clear()
            raise RuntimeError("b fails")
        token.wait()

    def root(token: CancelToken) -> None:
        token.run_group({"a": a, "b": b}, backoff=NEVER)
        jobs.root(token)

    sup = harness.start(root, reuse_threads=True)
    wait_status(sup, "root.a", state=State.HEALTHY)
    jobs.run(sup, "spare", nothing)
    (spare,) = wait_parked(sup, 1)
    known = {spare, *started["a"], *started["b"]}
    fail.set()
    wait_status(sup, "root.a", state=State.HEALTHY, restarts=1)
    assert started["a"][1] in known
    assert started["a"][1].name == "root.a"


def test_threads_parked_are_bounded(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True, parked_threads=2)
    gate = harness.gate()
    for index in range(5):
        jobs.spawn(f"c{index}", waits_for(gate))
    wait_until(lambda: len(jobs.threads) == 5, SOON, "five children running")
    ran_on = set(jobs.threads.values())
    assert len(ran_on) == 5
    gate.set()
    wait_parked(sup, 2)

    # The root runs on a worker too; of the children's, three have ended.
    def children() -> list[threading.Thread]:
        return [t for t in workers(sup) if t.name != "root"]

    wait_until(lambda: len(children()) == 2, SOON, "the three others ended")
    assert set(children()) <= ran_on


def test_no_thread_parks_with_parked_threads_0(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True, parked_threads=0)
    jobs.run(sup, "first", nothing)
    thread = jobs.threads["first"]
    thread.join(SOON)
    assert not thread.is_alive()


def test_a_parked_thread_ends_after_its_idle_time(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True, park_timeout=0.3)
    jobs.run(sup, "first", nothing)
    (thread,) = wait_parked(sup, 1)
    parked_at = time.monotonic()
    thread.join(SOON)
    assert not thread.is_alive()
    assert time.monotonic() - parked_at >= 0.2  # it stayed parked first
    # The next child gets a thread of its own.
    jobs.run(sup, "second", nothing)
    assert jobs.threads["second"] is not thread


def test_the_defaults() -> None:
    assert PARKED_THREADS == 32 and PARK_TIMEOUT == 30.0
    assert ChildPolicy().reuse_thread is None


# ------------------------------------------------------- per child, and checks


def test_a_child_can_opt_out_of_and_into_reuse(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", nothing)
    (thread,) = wait_parked(sup, 1)
    jobs.spawn("own", nothing, reuse_thread=False)
    wait_until(lambda: "own" in jobs.threads, SOON, "own ran")
    assert jobs.threads["own"] is not thread and not isinstance(jobs.threads["own"], Worker)
    assert parked(sup) == [thread]

    other = Jobs()
    plain = harness.start(other.root)  # reuse off, but this child opts in
    other.spawn("opted", nothing, reuse_thread=True)
    wait_until(lambda: "opted" in other.threads, SOON, "opted ran")
    assert wait_parked(plain, 1) == [other.threads["opted"]]


@pytest.mark.parametrize("method", ["run", "run_group", "spawn"])
def test_reuse_thread_is_checked_where_it_is_given(harness: Harness, method: str) -> None:
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()

    def root(token: CancelToken) -> None:
        try:
            if method == "run_group":
                token.run_group({"c": nothing}, reuse_thread="yes")  # type: ignore[arg-type]
            else:
                getattr(token, method)("c", nothing, reuse_thread=1)
        except TypeError as exc:
            errors.put(exc)
        token.signal(Signal.HEALTHY)
        token.wait()

    harness.start(root)
    message = str(errors.get(timeout=SOON))
    assert f"reuse_thread of {method}() on root" in message
    assert "True, False or None" in message


def test_the_supervisor_checks_its_reuse_keywords() -> None:
    with pytest.raises(TypeError, match="reuse_threads of Supervisor"):
        Supervisor(nothing, reuse_threads=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parked_threads of Supervisor"):
        Supervisor(nothing, parked_threads=-1)
    with pytest.raises(TypeError, match="parked_threads of Supervisor"):
        Supervisor(nothing, parked_threads=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="park_timeout of Supervisor"):
        Supervisor(nothing, park_timeout=0)


def test_a_child_policy_is_built_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        ChildPolicy(1.0)  # type: ignore[misc]
    policy = ChildPolicy(shutdown_timeout=1.0, reuse_thread=True)
    assert policy.shutdown_timeout == 1.0 and policy.reuse_thread is True
    assert policy == ChildPolicy(shutdown_timeout=1.0, reuse_thread=True)
    with pytest.raises(AttributeError):
        policy.reuse_thread = False  # type: ignore[misc]


# ----------------------------------------------------- thread-local data survives


def test_thread_local_data_survives_from_one_incarnation_to_the_next(
    harness: Harness,
) -> None:
    """Documented: the thread is not part of a runnable's identity."""
    local = threading.local()
    found: dict[str, object] = {}

    def remember(name: str) -> Callable[[CancelToken], None]:
        def body(token: CancelToken) -> None:
            found[name] = getattr(local, "value", None)
            local.value = token.dn

        return body

    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", remember("first"))
    wait_parked(sup, 1)
    jobs.run(sup, "second", remember("second"))
    assert found == {"first": None, "second": "root.first"}

    fresh = Jobs()
    plain = harness.start(fresh.root)
    fresh.run(plain, "first", remember("fresh_first"))
    fresh.run(plain, "second", remember("fresh_second"))
    assert found["fresh_second"] is None


def test_context_variables_do_not_survive_from_one_incarnation_to_the_next(
    harness: Harness,
) -> None:
    """Each incarnation starts in an empty context, as on a thread of its own."""
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable")
    found: dict[str, object] = {}

    def remember(name: str) -> Callable[[CancelToken], None]:
        def body(token: CancelToken) -> None:
            found[name] = variable.get(None)
            variable.set(token.dn)

        return body

    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", remember("first"))
    (thread,) = wait_parked(sup, 1)
    jobs.run(sup, "second", remember("second"))
    assert jobs.threads["second"] is thread
    assert found == {"first": None, "second": None}


# --------------------------------------------------------- interrupt and abandon


def test_an_interrupted_thread_never_parks(harness: Harness) -> None:
    """The interrupt was aimed at one incarnation: the thread it was sent to ends,
    so that nothing pending in it can land in another incarnation."""
    runs: list[threading.Thread] = []
    caught: list[BaseException] = []

    def spinner(token: CancelToken) -> None:
        runs.append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        if len(runs) > 1:
            token.wait()
            return
        token.wait()
        try:
            while True:  # pure Python, ignoring its token: only an interrupt ends it
                pass
        except BaseException as exc:
            caught.append(exc)
            raise

    root = parent_of("spinner", spinner, shutdown_timeout=0.2, on_stuck="interrupt")
    sup = harness.start(root, reuse_threads=True)
    wait_status(sup, "root.spinner", state=State.HEALTHY)
    sup.restart("root.spinner")
    harness.logs.wait_for(SOON, event="stuck", dn="root.spinner")
    wait_status(sup, "root.spinner", state=State.HEALTHY, restarts=1)
    assert len(caught) == 1 and isinstance(caught[0], Cancelled)
    interrupted = runs[0]
    interrupted.join(SOON)
    assert not interrupted.is_alive()
    assert runs[1] is not interrupted
    assert not parked(sup)


def test_an_abandoned_thread_never_parks(harness: Harness) -> None:
    release = harness.gate()
    runs: list[threading.Thread] = []

    def stubborn(token: CancelToken) -> None:
        runs.append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        if len(runs) == 1:
            release.wait(SOON)  # ignores its token: abandoned
        else:
            token.wait()

    root = parent_of("stubborn", stubborn, shutdown_timeout=0.1, on_stuck="abandon")
    sup = harness.start(root, reuse_threads=True)
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    sup.restart("root.stubborn")
    wait_status(sup, "root.stubborn", state=State.HEALTHY, restarts=1, abandoned=1)
    abandoned = runs[0]
    assert runs[1] is not abandoned
    release.set()
    abandoned.join(SOON)
    assert not abandoned.is_alive()
    wait_status(sup, "root.stubborn", abandoned=0)
    assert not parked(sup)


def test_a_thread_stuck_but_waited_for_parks_once_it_exits(harness: Harness) -> None:
    release = threading.Event()
    runs: list[threading.Thread] = []

    def slow(token: CancelToken) -> None:
        runs.append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        if len(runs) == 1:
            release.wait(SOON)
        else:
            token.wait()

    root = parent_of("slow", slow, shutdown_timeout=0.05)  # on_stuck="wait"
    sup = harness.start(root, reuse_threads=True)
    wait_status(sup, "root.slow", state=State.HEALTHY)
    sup.restart("root.slow")
    harness.logs.wait_for(SOON, event="stuck", dn="root.slow")
    release.set()
    wait_status(sup, "root.slow", state=State.HEALTHY, restarts=1)
    assert runs[1] is runs[0]  # it exited cleanly: its thread parked, and was handed the restart


# ----------------------------------------------------------------------- stop


def test_stop_ends_every_parked_thread_before_it_returns(harness: Harness) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    gate = harness.gate()
    for index in range(4):
        jobs.spawn(f"c{index}", waits_for(gate))
    wait_until(lambda: len(jobs.threads) == 4, SOON, "four children running")
    gate.set()
    wait_parked(sup, 4)
    threads = workers(sup)
    assert sup.stop(SOON) is True
    assert not [t.name for t in threads if t.is_alive()]
    assert not workers(sup)


def test_stop_while_children_churn_leaves_no_thread(harness: Harness) -> None:
    """Stop lands while threads park, expire and are handed children."""

    def spawner(spawned: threading.Event) -> Runnable:
        def root(token: CancelToken) -> None:
            token.signal(Signal.HEALTHY)
            for index in range(2_000):
                token.spawn(f"c{index}", nothing)
                if index == 50:
                    spawned.set()
            token.wait()

        return root

    for _ in range(3):
        spawned = threading.Event()
        sup = Supervisor(
            spawner(spawned), logger=QUIET, reuse_threads=True, parked_threads=4, park_timeout=0.01
        )
        sup.start()
        try:
            assert spawned.wait(SOON)
        finally:
            # Thousands of short threads on a loaded machine: a generous bound.
            assert sup.stop(3 * SOON) is True
        assert not workers(sup)


def test_stop_during_a_runnable_that_ends_as_the_loop_closes(harness: Harness) -> None:
    """A runnable still ending when the loop closes the park ends, and is joined."""
    entered = threading.Event()
    runs: list[threading.Thread] = []

    def lingering(token: CancelToken) -> None:
        runs.append(threading.current_thread())
        token.signal(Signal.HEALTHY)
        entered.set()
        token.wait()
        time.sleep(0.05)  # ends after its cancellation, while the tree stops

    root = parent_of("lingering", lingering)
    sup = harness.start(root, reuse_threads=True)
    assert entered.wait(SOON)
    assert sup.stop(SOON) is True
    assert not runs[0].is_alive()


# ------------------------------------------------------------------- failures


def test_a_thread_that_cannot_start_is_a_death_with_reuse_on(
    harness: Harness, start_faults: StartFaults
) -> None:
    start_faults.rule = lambda thread: thread.name == "root.c"

    root = parent_of("c", lambda token: token.wait(), backoff=NEVER)
    sup = harness.start(root, reuse_threads=True)
    status = wait_status(sup, "root.c", state=State.DEAD, running=False)
    assert status.last_error == "RuntimeError: can't start new thread"
    start_faults.rule = lambda thread: False
    sup.restart("root.c")
    wait_status(sup, "root.c", state=State.NEW, running=True, restarts=1)


def test_a_parked_thread_needs_no_start(harness: Harness, start_faults: StartFaults) -> None:
    jobs = Jobs()
    sup = harness.start(jobs.root, reuse_threads=True)
    jobs.run(sup, "first", nothing)
    (thread,) = wait_parked(sup, 1)
    start_faults.rule = lambda thread: True  # no thread can start any more
    jobs.run(sup, "second", nothing)
    assert jobs.threads["second"] is thread
    assert not start_faults.failed
