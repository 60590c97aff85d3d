"""Lifecycle-record delivery: in causal order, past any handler, and safe to
call back into the supervisor from."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import pytest

from threadsup import Backoff, CancelToken, Signal, State
from threadsup._errors import OwnThreadError
from threadsup.testing import Harness, RemoteRunnable, wait_status, wait_until


def events_of(harness: Harness, dn: str) -> list[str]:
    """The events of ``dn``'s records in their order of delivery, the runnable's
    own records as ``"log"``."""
    own = f"{harness.base}.{dn}"
    return [
        getattr(r, "event", "log")
        for r in harness.logs.records
        if getattr(r, "dn", None) == dn or (r.name == own and not hasattr(r, "event"))
    ]


# --------------------------------------------------------------- causal order


def test_deaths_are_delivered_before_the_give_ups_they_cause(harness: Harness) -> None:
    """a dies three times (max_restarts=2): it gives up, and so does its parent p
    (max_restarts=0); the root restarts. Each record after its cause."""
    a = RemoteRunnable()

    def p(token: CancelToken) -> None:
        token.run("a", a, max_restarts=2)
        token.signal(Signal.HEALTHY)
        token.wait()

    root = RemoteRunnable(lambda t: t.run("p", p, max_restarts=0))
    sup = harness.start(root)
    for index in range(3):
        a.wait_incarnation(index).die(RuntimeError(f"a dies ({index})"))
    root.wait_incarnation(1)
    a.wait_incarnation(3)
    assert sup.wait_settled(timeout=10)
    watched = {"died", "gave_up", "restart_scheduled"}
    delivered = [
        (getattr(r, "event", None), getattr(r, "dn", None))
        for r in harness.logs.records
        if getattr(r, "event", None) in watched
    ]
    assert delivered == [
        ("died", "root.p.a"),
        ("restart_scheduled", "root.p.a"),
        ("died", "root.p.a"),
        ("restart_scheduled", "root.p.a"),
        ("died", "root.p.a"),
        ("gave_up", "root.p.a"),
        ("gave_up", "root.p"),
        ("restart_scheduled", "root"),
    ]


def test_each_incarnation_s_records_are_delivered_in_the_order_of_its_events(
    harness: Harness,
) -> None:
    """With DEBUG on, ``started`` reaches the handlers before the runnable's own
    first line, after the ``restart_scheduled`` that caused it; ``healthy``,
    ``died`` and ``restart_scheduled`` follow in that order. Many restarts in a
    row, for a race between the dispatcher and the new thread to show."""
    deaths = 300
    runs: list[int] = []
    harness.logger.propagate = False  # 300 tracebacks: keep them from pytest's capture

    def child(token: CancelToken) -> None:
        token.logger.info("first line")
        runs.append(1)
        token.signal(Signal.HEALTHY)
        if len(runs) <= deaths:
            raise RuntimeError("dies after its first line")
        token.wait()

    def root(token: CancelToken) -> None:
        token.run("a", child, backoff=Backoff(initial=0, jitter=0))
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_until(lambda: len(runs) > deaths, timeout=60, what=f"{deaths} restarts of root.a")
    assert sup.wait_settled(timeout=30)
    incarnation = ["started", "log", "healthy"]
    expected = [*incarnation, "died", "restart_scheduled"] * deaths + incarnation
    delivered = events_of(harness, "root.a")
    first = next(
        (i for i, (got, want) in enumerate(zip(delivered, expected)) if got != want),
        min(len(delivered), len(expected)),
    )
    assert delivered == expected, f"out of order from record {first}: {delivered[first:][:8]}"


# -------------------------------------------------------- handlers that raise


class HandlerEscape(BaseException):
    """Neither an `Exception` nor an exit: what only a hostile handler raises."""


class OnRecord(logging.Handler):
    """Calls ``action`` with the first record whose attributes equal ``fields``."""

    def __init__(self, action: Callable[[logging.LogRecord], None], **fields: object) -> None:
        super().__init__()
        self.action = action
        self.fields = fields
        self.called = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.called.is_set():
            return
        if all(getattr(record, k, None) == v for k, v in self.fields.items()):
            self.called.set()
            self.action(record)


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), HandlerEscape("escape")])
@pytest.mark.parametrize(
    "event",
    [
        "died",  # handed over by the dispatcher
        "started",  # handed over in the new runnable's thread, before its body
    ],
)
def test_delivery_survives_a_handler_raising_any_base_exception(
    harness: Harness, capsys: pytest.CaptureFixture[str], error: BaseException, event: str
) -> None:
    def fail(record: logging.LogRecord) -> None:
        raise error

    hostile = OnRecord(fail, event=event, dn="root.a")
    harness.logger.addHandler(hostile)  # after the harness's recorder: it still sees all
    try:
        a = RemoteRunnable()
        sup = harness.start(RemoteRunnable(lambda t: t.run("a", a)))
        a.wait_incarnation(0).die(RuntimeError("a dies"))
        a.wait_incarnation(1).healthy()
        assert hostile.called.is_set()
        # Records after the one that raised still arrive, and the tree settles.
        harness.logs.wait_for(event="healthy", dn="root.a")
        assert sup.wait_settled(timeout=10)
        assert events_of(harness, "root.a") == [
            "started",
            "died",
            "restart_scheduled",
            "started",
            "healthy",
        ]
        err = capsys.readouterr().err
        assert "--- threadsup: logging failed ---" in err
        assert type(error).__name__ in err
        # The supervisor still works.
        sup.restart("root.a")
        a.wait_incarnation(2)
        wait_status(sup, "root.a", state=State.NEW, running=True, restarts=2)
        assert sup.stop(timeout=10)
    finally:
        harness.logger.removeHandler(hostile)


# ------------------------------------------------ handlers that stop the tree


@pytest.mark.parametrize("call", ["stop", "cancel"])
def test_a_log_handler_may_stop_the_tree_as_a_runnable_would(
    harness: Harness, capsys: pytest.CaptureFixture[str], call: str
) -> None:
    """From the dispatcher thread, ``stop()`` cancels the tree before it returns
    and returns False at once (the root still lingers then); ``wait()`` raises."""
    gate = harness.gate()
    root = RemoteRunnable(linger=gate, linger_timeout=20)
    sup = harness.track(harness.supervisor(root))
    seen: dict[str, object] = {}

    def shut_down(record: logging.LogRecord) -> None:
        try:
            if call == "stop":
                seen["stop"] = sup.stop()
            else:
                sup.cancel()
            seen["cancelled"] = root.current.token.cancelled
            seen["lingering"] = not root.current.exited.is_set()
            try:
                sup.wait(timeout=0.1)
            except OwnThreadError:
                seen["wait"] = "OwnThreadError"
        except BaseException as exc:  # what went wrong, for the assertion below
            seen["error"] = repr(exc)
        finally:
            seen["thread"] = threading.current_thread().name

    handler = OnRecord(shut_down, event="healthy", dn="root")
    harness.logger.addHandler(handler)
    try:
        sup.start()
        root.wait_incarnation(0).healthy()
        wait_until(lambda: "thread" in seen, timeout=5, what="the handler to return")
        assert seen == {
            **({"stop": False} if call == "stop" else {}),
            "cancelled": True,
            "lingering": True,
            "wait": "OwnThreadError",
            "thread": "threadsup-log",
        }
        gate.set()
        assert sup.wait(timeout=10)
    finally:
        harness.logger.removeHandler(handler)
    assert "cannot join current thread" not in capsys.readouterr().err
