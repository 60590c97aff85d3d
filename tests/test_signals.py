"""Signals: HEALTHY only from NEW, DONE only from HEALTHY, and nothing else."""

from __future__ import annotations

import pytest

from threadsup import Signal, State
from threadsup._errors import InvalidSignal
from threadsup.testing import Harness, RemoteRunnable, wait_status


def test_healthy_from_new_then_done_from_healthy(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    wait_status(sup, "root", state=State.NEW)
    inc.healthy()
    wait_status(sup, "root", state=State.HEALTHY, running=True)
    inc.done()
    wait_status(sup, "root", state=State.DONE, running=True)


@pytest.mark.parametrize(
    "before, bad",
    [
        pytest.param([], Signal.DONE, id="done-from-new"),
        pytest.param([Signal.HEALTHY], Signal.HEALTHY, id="healthy-twice"),
        pytest.param([Signal.HEALTHY, Signal.DONE], Signal.DONE, id="done-twice"),
        pytest.param([Signal.HEALTHY, Signal.DONE], Signal.HEALTHY, id="healthy-after-done"),
    ],
)
def test_out_of_order_signal_raises_runtime_error_and_changes_nothing(
    harness: Harness, before: list[Signal], bad: Signal
) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    for sig in before:
        inc.signal(sig)
    expected = {0: State.NEW, 1: State.HEALTHY, 2: State.DONE}[len(before)]
    wait_status(sup, "root", state=expected)
    with pytest.raises(RuntimeError) as err:
        inc.signal(bad)
    assert isinstance(err.value, InvalidSignal)
    assert sup.wait_settled(timeout=10)
    status = sup.snapshot()["root"]
    assert (status.state, status.running, status.last_error) == (expected, True, None)


@pytest.mark.parametrize("value", ["HEALTHY", None, 0, State.HEALTHY], ids=repr)
def test_a_value_that_is_not_a_signal_raises_type_error(harness: Harness, value: object) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    with pytest.raises(TypeError):
        inc.call(lambda t: t.signal(value))  # type: ignore[arg-type]
    assert sup.wait_settled(timeout=10)
    assert sup.snapshot()["root"].state is State.NEW
    inc.healthy()  # still NEW: the bad call changed nothing
    wait_status(sup, "root", state=State.HEALTHY)


def test_an_escaped_out_of_order_signal_kills_the_runnable(harness: Harness) -> None:
    child = RemoteRunnable()
    sup = harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    inc = child.wait_incarnation(0)
    inc.exit_with(lambda t: t.signal(Signal.DONE))
    child.wait_incarnation(1)
    status = wait_status(sup, "root.a", restarts=1)
    assert status.last_error is not None
    assert status.last_error.startswith("InvalidSignal")
    assert isinstance(inc.error, InvalidSignal)
