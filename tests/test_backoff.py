"""Backoff: growth, cap, jitter, reset by HEALTHY/DONE, and pending restarts.

Ports the Go TestBackoff: delays are measured between an incarnation's exit and
the next one's start (lower bounds only, the machine may be slow), and read
exactly from the ``restart_scheduled`` records' ``delay``.
"""

from __future__ import annotations

import time

import pytest

from threadsup import Backoff, Signal, State, Supervisor
from threadsup.testing import Harness, RemoteRunnable, wait_status


def scheduled_delays(harness: Harness, dn: str) -> list[float]:
    records = harness.logs.find(event="restart_scheduled", dn=dn)
    return [float(r.__dict__["delay"]) for r in records]


def die_repeatedly(rc: RemoteRunnable, times: int, start: int = 0) -> list[float]:
    """Kill incarnations start..start+times-1 at once; return the measured delays."""
    delays = []
    for i in range(start, start + times):
        inc = rc.wait_incarnation(i)
        inc.die()
        nxt = rc.wait_incarnation(i + 1)
        assert inc.exited_at is not None
        delays.append(nxt.started_at - inc.exited_at)
    return delays


def start_child(harness: Harness, backoff: Backoff) -> tuple[Supervisor, RemoteRunnable]:
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)), backoff=backoff)
    return sup, child


@pytest.mark.slow
def test_delay_grows_by_the_multiplier_up_to_the_maximum(harness: Harness) -> None:
    _, child = start_child(harness, Backoff(initial=0.05, multiplier=3, maximum=0.5, jitter=0))
    expected = [0.05, 0.15, 0.45, 0.5, 0.5]
    measured = die_repeatedly(child, len(expected))
    for got, want in zip(measured, expected):
        assert got >= want * 0.9, (measured, expected)
    assert measured[-1] < 1.5, "not capped: uncapped it would be 4.05 s"
    assert scheduled_delays(harness, "root.a") == pytest.approx(expected)


@pytest.mark.parametrize(
    "signals",
    [
        pytest.param([Signal.HEALTHY], id="healthy"),
        pytest.param([Signal.HEALTHY, Signal.DONE], id="done"),
    ],
)
def test_healthy_and_done_reset_the_backoff(harness: Harness, signals: list[Signal]) -> None:
    _, child = start_child(harness, Backoff(initial=0.05, multiplier=6, maximum=5, jitter=0))
    measured = die_repeatedly(child, 2)  # 0.05 then 0.3; the next would be 1.8
    assert measured[1] >= 0.27
    inc = child.wait_incarnation(2)
    for sig in signals:
        inc.signal(sig)
    inc.die()
    nxt = child.wait_incarnation(3)
    assert inc.exited_at is not None
    assert nxt.started_at - inc.exited_at < 1.0, "backoff was not reset"
    assert scheduled_delays(harness, "root.a") == pytest.approx([0.05, 0.3, 0.05])


def test_jitter_randomises_each_delay_within_its_band(harness: Harness) -> None:
    _, child = start_child(harness, Backoff(initial=0.2, multiplier=1, maximum=1, jitter=0.5))
    measured = die_repeatedly(child, 4)
    assert all(d >= 0.09 for d in measured), measured
    logged = scheduled_delays(harness, "root.a")
    assert len(logged) == 4
    assert all(0.1 - 1e-9 <= d <= 0.3 + 1e-9 for d in logged), logged
    assert len(set(logged)) > 1, "jitter gave four identical delays"


def test_stop_while_a_restart_is_pending_returns_at_once(harness: Harness) -> None:
    sup, child = start_child(harness, Backoff(initial=5.0, jitter=0))
    child.wait_incarnation(0).die()
    wait_status(sup, "root.a", state=State.DEAD, running=False)
    t0 = time.monotonic()
    assert sup.stop(timeout=10)
    assert time.monotonic() - t0 < 4.0
    assert child.count == 1


def test_wait_settled_waits_out_a_pending_restart(harness: Harness) -> None:
    sup, child = start_child(harness, Backoff(initial=0.3, jitter=0))
    child.wait_incarnation(0).die()
    wait_status(sup, "root.a", state=State.DEAD, running=False)
    assert sup.wait_settled(timeout=10)
    assert child.count == 2
