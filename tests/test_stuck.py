"""Runnables that do not stop: the ``stuck`` warning and
``NodeStatus.stuck_for``, a stuck subtree holding back only itself, ``on_stuck``
``"abandon"`` and ``"interrupt"`` (which reaches a pure-Python loop, not a thread
blocked in C), ``stop()`` naming what did not stop, and interpreter exit.

Every stuck runnable here ignores its cancellation only until an event that the
harness sets before it stops the supervisors, so no test leaves a thread behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import threadsup
from threadsup import Cancelled, CancelToken, Signal, State, Supervisor
from threadsup.testing import (
    Harness,
    RemoteRunnable,
    wait_snapshot,
    wait_status,
    wait_until,
)

#: Bound of every wait for something that should happen at once.
SOON = 5.0


def ignore_cancellation_until(release: threading.Event) -> None:
    """What a stuck runnable does; its name must show in the stuck warning's stack."""
    release.wait(30)


class Stubborn:
    """Signals HEALTHY, waits for cancellation, then ignores it until ``release`` is set
    (and raises ``then_raise``, if given). Later incarnations behave."""

    def __init__(self, release: threading.Event, then_raise: BaseException | None = None) -> None:
        self.release = release
        self.then_raise = then_raise
        self.calls = 0
        self.cancel_seen = threading.Event()
        self.exited = threading.Event()
        self.cancel_seen_at = 0.0

    def __call__(self, token: CancelToken) -> None:
        self.calls += 1
        token.signal(Signal.HEALTHY)
        if self.calls > 1:
            token.wait()
            return
        try:
            token.wait()
            self.cancel_seen_at = time.monotonic()
            self.cancel_seen.set()
            ignore_cancellation_until(self.release)
            if self.then_raise is not None:
                raise self.then_raise
        finally:
            self.exited.set()


def parent_of(dn_name: str, runnable: Any, **policy: Any) -> RemoteRunnable:
    """A root that runs ``runnable`` as its child ``dn_name``, with ``policy`` keywords."""
    return RemoteRunnable(lambda t: t.run(dn_name, runnable, **policy))


def stuck_records(harness: Harness, dn: str) -> list[logging.LogRecord]:
    return harness.logs.find(event="stuck", dn=dn)


# -------------------------------------------------------------------- the warning


def test_a_stuck_child_is_reported_with_its_dn_age_and_stack(harness: Harness) -> None:
    release = harness.gate()
    stubborn = Stubborn(release)
    sup = harness.start(parent_of("stubborn", stubborn, shutdown_timeout=0.2))
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    t0 = time.monotonic()
    sup.cancel()
    record = harness.logs.wait_for(SOON, event="stuck", dn="root.stubborn")
    assert time.monotonic() - t0 >= 0.2
    assert record.levelno == logging.WARNING
    cancelled_for: float = record.__dict__["cancelled_for"]
    assert 0.2 <= cancelled_for < 0.2 + SOON
    assert record.__dict__["on_stuck"] == "wait"
    message = record.getMessage()
    assert "root.stubborn" in message
    assert f"{cancelled_for:.1f} s" in message
    assert "ignore_cancellation_until" in message  # the stack of its thread
    assert "release.wait(30)" in message
    release.set()
    assert sup.wait(SOON)
    assert sup.snapshot()["root.stubborn"].state is State.CANCELLED


def test_the_supervisors_shutdown_timeout_is_the_default_and_a_child_may_override_it(
    harness: Harness,
) -> None:
    release = harness.gate()
    quick, patient = Stubborn(release), Stubborn(release)

    def root(token: CancelToken) -> None:
        token.run("quick", quick)  # the supervisor's shutdown_timeout: 0.2 s
        token.run("patient", patient, shutdown_timeout=30)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root, shutdown_timeout=0.2)
    wait_status(sup, "root.patient", state=State.HEALTHY)
    wait_status(sup, "root.quick", state=State.HEALTHY)
    sup.cancel()
    harness.logs.wait_for(SOON, event="stuck", dn="root.quick")
    time.sleep(0.3)  # long enough for a wrong timeout to show; not synchronisation
    assert stuck_records(harness, "root.patient") == []
    snap = sup.snapshot()
    assert snap["root.quick"].stuck
    assert not snap["root.patient"].stuck
    assert snap["root.patient"].stuck_for is None


def test_a_runnable_that_exits_in_time_is_never_reported(harness: Harness) -> None:
    def slow_to_stop(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.wait()
        time.sleep(0.1)  # within its shutdown timeout

    sup = harness.start(parent_of("slow", slow_to_stop, shutdown_timeout=0.4))
    wait_status(sup, "root.slow", state=State.HEALTHY)
    sup.cancel()
    assert sup.wait(SOON)
    time.sleep(0.4)  # past the shutdown timeout: a stale check must not report it
    assert stuck_records(harness, "root.slow") == []


@pytest.mark.slow
def test_the_warning_repeats_at_doubling_intervals_while_stuck(harness: Harness) -> None:
    # processor.STUCK_REPEAT_MIN: the repeats come max(shutdown_timeout, 1 s) apart, then
    # twice that, and so on.
    release = harness.gate()
    sup = harness.start(parent_of("stubborn", Stubborn(release), shutdown_timeout=0.1))
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    sup.cancel()
    wait_until(lambda: len(stuck_records(harness, "root.stubborn")) >= 2, 5.0, "a repeat")
    ages = [r.__dict__["cancelled_for"] for r in stuck_records(harness, "root.stubborn")]
    # Each bound rules out the next interval: 0.1 s, then 1 s (not 0.1), then 2 s.
    assert 0.1 <= ages[0] < 0.9
    assert 0.9 <= ages[1] - ages[0] < 1.9, f"first repeat after {ages[1] - ages[0]:.2f} s"
    wait_until(lambda: len(stuck_records(harness, "root.stubborn")) >= 3, 5.0, "a 2nd repeat")
    ages = [r.__dict__["cancelled_for"] for r in stuck_records(harness, "root.stubborn")]
    assert 1.9 <= ages[2] - ages[1] < 3.9, f"second repeat after {ages[2] - ages[1]:.2f} s"
    assert all(r.levelno == logging.WARNING for r in stuck_records(harness, "root.stubborn"))


def test_snapshot_shows_stuck_for_growing_then_none_once_it_exits(harness: Harness) -> None:
    release = harness.gate()
    stubborn = Stubborn(release)
    sup = harness.start(parent_of("stubborn", stubborn, shutdown_timeout=0.5))
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    sup.cancel()
    assert stubborn.cancel_seen.wait(SOON)
    early = sup.snapshot()["root.stubborn"]
    assert early.running
    assert early.stuck_for is None  # cancelled, but its shutdown timeout has not passed
    assert not early.stuck
    first = wait_snapshot(sup, lambda s: s["root.stubborn"].stuck, SOON)["root.stubborn"]
    assert first.stuck_for is not None
    assert 0.5 <= first.stuck_for < 0.5 + SOON
    assert first.running
    later = wait_snapshot(
        sup,
        lambda s: (s["root.stubborn"].stuck_for or 0) >= (first.stuck_for or 0) + 0.2,
        SOON,
    )["root.stubborn"]
    assert later.stuck
    release.set()
    assert sup.wait(SOON)
    final = sup.snapshot()["root.stubborn"]
    assert final.stuck_for is None
    assert not final.stuck
    assert not final.running
    assert final.state is State.CANCELLED


# -------------------------------------------------------------- only its subtree


def test_a_stuck_runnable_holds_back_only_its_own_subtree(harness: Harness) -> None:
    release = harness.gate()
    stubborn = Stubborn(release)
    sub = RemoteRunnable(lambda t: t.run("stubborn", stubborn, shutdown_timeout=0.2))
    other = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run("sub", sub)
        token.run("other", other)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.sub.stubborn", state=State.HEALTHY)
    other.wait_incarnation(0)
    sub.wait_incarnation(0).die(RuntimeError("sub fails"))  # cancels root.sub.stubborn
    harness.logs.wait_for(SOON, event="stuck", dn="root.sub.stubborn")

    # The rest of the tree lives on: root.other dies and comes back meanwhile.
    other.wait_incarnation(0).die(RuntimeError("other fails"))
    other.wait_incarnation(1)
    t0 = time.monotonic()
    assert sup.wait_settled(SOON)
    snap = sup.snapshot()
    assert time.monotonic() - t0 < 2.0  # the processor is not held up
    assert snap["root.other"].restarts == 1
    assert snap["root.other"].running
    assert snap["root"].state is State.HEALTHY

    # root.sub waits for its stuck child: no restart, however long.
    assert snap["root.sub"].state is State.DEAD
    assert snap["root.sub"].restarts == 0
    assert not snap["root.sub"].running
    assert snap["root.sub.stubborn"].stuck
    assert sub.count == 1

    release.set()
    sub.wait_incarnation(1)  # it exits: the subtree restarts, with a new child
    status = wait_status(sup, "root.sub.stubborn", state=State.HEALTHY)
    assert status.restarts == 0  # a new node: the old one was discarded with its parent
    assert status.stuck_for is None
    assert stubborn.calls == 2


# ---------------------------------------------------------------------- abandon


def test_abandon_restarts_the_subtree_and_leaves_the_old_thread_detached(
    harness: Harness,
) -> None:
    release = harness.gate()
    # The abandoned thread raises when it ends at last: that must change nothing.
    stubborn = Stubborn(release, then_raise=RuntimeError("late failure"))
    trigger = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run_group(
            {"stubborn": stubborn, "trigger": trigger},
            shutdown_timeout=0.2,
            on_stuck="abandon",
        )
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    trigger.wait_incarnation(0).die(RuntimeError("trigger fails"))
    record = harness.logs.wait_for(SOON, event="stuck", dn="root.stubborn")
    assert record.__dict__["on_stuck"] == "abandon"
    status = wait_status(sup, "root.stubborn", state=State.HEALTHY, restarts=1, abandoned=1)
    assert status.running  # the new incarnation
    assert status.stuck_for is None
    assert not stubborn.exited.is_set()  # the old thread still runs, detached
    assert stubborn.calls == 2
    trigger.wait_incarnation(1)
    assert sup.wait_settled(SOON)
    before = sup.snapshot()

    release.set()  # the old thread ends (raising)
    assert stubborn.exited.wait(SOON)
    harness.logs.wait_for(SOON, event="abandoned_exited", dn="root.stubborn")
    wait_status(sup, "root.stubborn", abandoned=0)
    assert sup.wait_settled(SOON)
    after = sup.snapshot()
    for dn in before:
        assert after[dn].state is before[dn].state, dn
        assert after[dn].restarts == before[dn].restarts, dn
        assert after[dn].last_error == before[dn].last_error, dn
        assert after[dn].running == before[dn].running, dn
    assert after["root.stubborn"].last_error is None  # its late failure is not a death
    assert harness.logs.find(event="died", dn="root.stubborn") == []
    assert stubborn.calls == 2
    assert trigger.count == 2


def test_a_snapshot_shows_the_restart_and_the_abandoned_thread_together(
    harness: Harness,
) -> None:
    # One snapshot is one moment: the new incarnation (restarts == 1) never shows up
    # without the abandoned thread it replaced (abandoned == 1).
    for attempt in range(3):
        release = harness.gate()
        stubborn = Stubborn(release)
        trigger = RemoteRunnable()

        def root(
            token: CancelToken, stubborn: Stubborn = stubborn, trigger: RemoteRunnable = trigger
        ) -> None:
            token.run_group(
                {"stubborn": stubborn, "trigger": trigger},
                shutdown_timeout=0.05,
                on_stuck="abandon",
            )
            token.signal(Signal.HEALTHY)
            token.wait()

        sup = harness.start(root)
        wait_status(sup, "root.stubborn", state=State.HEALTHY)
        trigger.wait_incarnation(0).die(RuntimeError("trigger fails"))
        deadline = time.monotonic() + SOON
        while True:
            status = sup.snapshot()["root.stubborn"]
            if status.restarts == 1:
                break
            assert time.monotonic() < deadline, "root.stubborn was not restarted"
            time.sleep(0.0005)
        assert status.abandoned == 1, f"attempt {attempt}: restarted, yet no abandoned thread"
        release.set()
        assert sup.stop(SOON)


def test_stop_counts_an_abandoned_thread_as_not_stopped(harness: Harness) -> None:
    release = harness.gate()
    stubborn = Stubborn(release)
    trigger = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run_group(
            {"stubborn": stubborn, "trigger": trigger},
            shutdown_timeout=0.1,
            on_stuck="abandon",
        )
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    trigger.wait_incarnation(0).die(RuntimeError("trigger fails"))
    wait_status(sup, "root.stubborn", restarts=1, abandoned=1)
    assert sup.stop(0.3) is False
    record = harness.logs.wait_for(SOON, event="stop_timed_out")
    assert any("abandoned" in entry for entry in record.__dict__["running"])
    assert "root.stubborn" in record.getMessage()
    release.set()
    assert sup.stop(SOON) is True
    assert sup.snapshot()["root.stubborn"].abandoned == 0


# -------------------------------------------------------------------- interrupt


def test_interrupt_stops_a_pure_python_loop(harness: Harness) -> None:
    release = harness.gate()
    caught: list[BaseException] = []
    entered = threading.Event()

    def spinner(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.wait()
        entered.set()
        n = 0
        try:
            while True:  # pure Python: ignores the token, never blocks in C
                n += 1
                if n % 100_000 == 0 and release.is_set():
                    return
        except BaseException as exc:
            caught.append(exc)
            raise

    sup = harness.start(parent_of("spinner", spinner, shutdown_timeout=0.2, on_stuck="interrupt"))
    wait_status(sup, "root.spinner", state=State.HEALTHY)
    t0 = time.monotonic()
    sup.cancel()
    record = harness.logs.wait_for(SOON, event="stuck", dn="root.spinner")
    assert record.__dict__["on_stuck"] == "interrupt"
    assert sup.wait(SOON)
    assert time.monotonic() - t0 < 0.2 + SOON
    assert len(caught) == 1
    assert isinstance(caught[0], Cancelled)
    status = sup.snapshot()["root.spinner"]
    assert status.state is State.CANCELLED
    assert not status.running


@pytest.mark.slow
def test_interrupt_does_not_reach_a_thread_blocked_in_time_sleep(harness: Harness) -> None:
    release = harness.gate()
    times: dict[str, float] = {}
    caught: list[BaseException] = []

    def sleeper(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.wait()
        times["sleep"] = time.monotonic()
        try:
            time.sleep(1.5)  # in C: the interrupt waits for it to return
            n = 0
            while not release.is_set():  # then Python again: the interrupt lands here
                n += 1
        except BaseException as exc:
            times["caught"] = time.monotonic()
            caught.append(exc)
            raise

    sup = harness.start(parent_of("sleeper", sleeper, shutdown_timeout=0.2, on_stuck="interrupt"))
    wait_status(sup, "root.sleeper", state=State.HEALTHY)
    sup.cancel()
    record = harness.logs.wait_for(SOON, event="stuck", dn="root.sleeper")
    assert record.__dict__["on_stuck"] == "interrupt"
    assert "time.sleep(1.5)" in record.getMessage()  # its stack: in the sleep
    assert sup.snapshot()["root.sleeper"].running  # interrupted, yet still asleep
    assert sup.wait(SOON)
    assert isinstance(caught[0], Cancelled)
    slept = times["caught"] - times["sleep"]
    assert slept >= 1.5 - 0.01, f"interrupted {1.5 - slept:.2f} s into the sleep"
    assert slept < 1.5 + 0.5, f"interrupted only {slept - 1.5:.2f} s after the sleep returned"
    assert sup.snapshot()["root.sleeper"].state is State.CANCELLED


# ------------------------------------------------------------------------- stop


def test_stop_returns_false_and_names_the_stuck_dn(harness: Harness) -> None:
    release = harness.gate()
    sup = harness.start(parent_of("stubborn", Stubborn(release)), shutdown_timeout=0.1)
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
    t0 = time.monotonic()
    assert sup.stop(0.5) is False
    assert 0.5 <= time.monotonic() - t0 < 0.5 + SOON
    record = harness.logs.wait_for(SOON, event="stop_timed_out")
    assert record.levelno == logging.WARNING
    running: list[str] = record.__dict__["running"]
    assert any(entry.startswith("root.stubborn (stuck") for entry in running), running
    assert "root.stubborn" in record.getMessage()
    release.set()
    assert sup.stop(SOON) is True


def test_leaving_with_on_a_stuck_runnable_is_bounded_and_does_not_raise(
    harness: Harness,
) -> None:
    release = harness.gate()
    sup = harness.track(
        harness.supervisor(parent_of("stubborn", Stubborn(release)), shutdown_timeout=0.3)
    )
    with sup:
        wait_status(sup, "root.stubborn", state=State.HEALTHY)
        t0 = time.monotonic()
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SOON
    record = harness.logs.wait_for(SOON, event="stop_timed_out")
    assert any(entry.startswith("root.stubborn") for entry in record.__dict__["running"])
    release.set()
    assert sup.wait(SOON)


@pytest.mark.parametrize(
    "start",
    [
        "sup = Supervisor(root, shutdown_timeout=3.0).start()",
        "Supervisor(root, shutdown_timeout=3.0).start()",
    ],
    ids=["kept", "dropped"],
)
@pytest.mark.slow
def test_interpreter_exit_with_a_stuck_runnable_is_bounded_by_shutdown_timeout(
    tmp_path: Path, start: str
) -> None:
    # The exit hook cancels the tree, waits up to shutdown_timeout for it, then lets
    # the interpreter end (runnable threads are daemons), whether or not the program
    # kept a reference to its supervisor.
    script = textwrap.dedent(
        """
        import threading
        import time

        from threadsup import Signal, Supervisor

        ready = threading.Event()


        def stuck(token):
            token.signal(Signal.HEALTHY)
            ready.set()
            token.wait()
            print("cancelled", flush=True)
            time.sleep(60)  # ignores its cancellation, blocked in C


        def root(token):
            token.run("stuck", stuck)
            token.signal(Signal.HEALTHY)
            token.wait()


        START
        assert ready.wait(10)
        # When the script ends (the exit hook runs after it): CLOCK_MONOTONIC is
        # the machine's, so the test can time the exit from here.
        print("ready", time.monotonic(), flush=True)
        # the script ends without stopping its supervisor
        """
    ).replace("START", start)
    env = dict(os.environ)
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            # All of it at once: `communicate` reads the pipe itself, and would
            # miss what a `readline` before it had buffered.
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    ready, *rest = stdout.splitlines()
    assert proc.returncode == 0 and ready.startswith("ready "), stderr
    took = time.monotonic() - float(ready.split()[1])
    assert rest == ["cancelled"], (
        f"the exit hook did not cancel the tree (exit after {took:.2f} s); stderr:\n{stderr}"
    )
    assert 2.9 <= took < 3.0 + 10.0, f"exit took {took:.2f} s"  # not the runnable's 60 s


# ------------------------------------------------------------------ bad arguments


BAD_POLICIES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"on_stuck": "kill"}, ValueError),
    ({"on_stuck": None}, ValueError),
    ({"on_stuck": "WAIT"}, ValueError),
    ({"shutdown_timeout": "1"}, TypeError),
    ({"shutdown_timeout": True}, TypeError),
    ({"shutdown_timeout": -1}, ValueError),
    ({"shutdown_timeout": float("nan")}, ValueError),
    ({"shutdown_timeout": -float("inf")}, ValueError),
]


@pytest.mark.parametrize(("policy", "error"), BAD_POLICIES, ids=[repr(p) for p, _ in BAD_POLICIES])
def test_a_bad_policy_raises_in_the_caller_and_creates_nothing(
    harness: Harness, policy: dict[str, Any], error: type[Exception]
) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    child = RemoteRunnable()
    with pytest.raises(error):
        inc.call(lambda t: t.run("child", child, **policy))
    with pytest.raises(error):
        inc.call(lambda t: t.run_group({"a": child, "b": child}, **policy))
    assert sup.wait_settled(SOON)
    assert list(sup.snapshot()) == ["root"]
    assert child.count == 0
    inc.call(lambda t: t.run("child", child, shutdown_timeout=1, on_stuck="abandon"))
    child.wait_incarnation(0)  # the name is still free, and good values are taken


def test_a_bad_supervisor_shutdown_timeout_raises() -> None:
    bad: Any
    for bad, error in (("1", TypeError), (-1, ValueError), (float("nan"), ValueError)):
        with pytest.raises(error):
            Supervisor(RemoteRunnable(), shutdown_timeout=bad)
