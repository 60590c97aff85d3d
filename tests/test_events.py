"""`Supervisor.subscribe` and `threadsup.Event`: one event per lifecycle record,
in order, delivered on threads of their own that no subscriber can harm the
tree from."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

import pytest

from threadsup import (
    Backoff,
    CancelToken,
    Event,
    OwnThreadError,
    Signal,
    State,
    Supervisor,
)
from threadsup._events import DELIVERY_GRACE
from threadsup.testing import (
    DEFAULT_TIMEOUT,
    FAST_BACKOFF,
    Harness,
    RecordingHandler,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_status,
    wait_until,
)

#: Deaths in the restart storm.
DEATHS = 200
#: The queue of the subscriber that blocks through the storm.
BLOCKED_QUEUE = 50
#: Backoff of the storm: 1 ms, every time.
STORM_BACKOFF = Backoff(initial=0.001, multiplier=1, jitter=0)


class Recorder:
    """A subscriber that keeps every event and waits (bounded) for one."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def kinds(self, dn: str) -> list[str]:
        return [event.kind for event in self.events if event.dn == dn]

    def wait_for(self, kind: str, dn: str, timeout: float = DEFAULT_TIMEOUT, nth: int = 1) -> Event:
        """The ``nth`` event of ``kind`` on ``dn``; `AssertionError` after ``timeout`` s."""

        def found() -> Event | None:
            matching = [e for e in self._events if e.kind == kind and e.dn == dn]
            return matching[nth - 1] if len(matching) >= nth else None

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout):
                seen = [(e.kind, e.dn) for e in self._events]
                raise AssertionError(
                    f"no {kind} event #{nth} on {dn} after {timeout} s; seen: {seen}"
                )
            event = found()
        assert event is not None
        return event


def lifecycle(harness: Harness) -> list[logging.LogRecord]:
    """The lifecycle records the harness's handler got, in order."""
    return [record for record in harness.logs.records if hasattr(record, "event")]


def supervisor(harness: Harness, root: Callable[[CancelToken], None]) -> Supervisor:
    """A supervisor on the harness's logger, not started yet, stopped by the harness."""
    return harness.track(Supervisor(root, logger=harness.logger, backoff=FAST_BACKOFF))


def child_root(
    child: Callable[[CancelToken], None], **policy: object
) -> Callable[[CancelToken], None]:
    """A root that runs ``child`` as ``a`` and stays HEALTHY until cancelled."""

    def root(token: CancelToken) -> None:
        token.run("a", child, **policy)  # type: ignore[arg-type]
        token.signal(Signal.HEALTHY)
        token.wait()

    return root


# --------------------------------------------------------------- the storm


def test_events_match_the_records_one_for_one_through_a_restart_storm(harness: Harness) -> None:
    """root.a dies 200 times, 1 ms apart. A recording subscriber sees every
    event, in order, one per lifecycle record and with its time; one that
    raises on every event is called for all of them and reported once; one that
    blocks through the storm loses what its queue cannot hold, and says how
    many once it catches up. The tree restarts all along and stops in time."""
    harness.logger.propagate = False  # 200 tracebacks: keep them from pytest's capture
    runs: list[int] = []

    def child(token: CancelToken) -> None:
        runs.append(1)
        if len(runs) <= DEATHS:
            raise RuntimeError("storm")
        token.signal(Signal.HEALTHY)
        token.wait()

    recorder, raised, blocked = Recorder(), Recorder(), Recorder()
    gate = harness.gate()

    def raiser(event: Event) -> None:
        raised(event)
        raise ValueError("a subscriber's bug")

    def blocker(event: Event) -> None:
        blocked(event)
        gate.wait(DEFAULT_TIMEOUT * 3)

    sup = supervisor(harness, child_root(child, backoff=STORM_BACKOFF))
    sup.subscribe(recorder, max_queued=100_000)
    sup.subscribe(raiser, max_queued=100_000)
    sup.subscribe(blocker, max_queued=BLOCKED_QUEUE)
    sup.start()
    wait_status(sup, "root.a", timeout=60, state=State.HEALTHY, restarts=DEATHS)
    recorder.wait_for("healthy", "root.a", timeout=30)
    assert len(blocked.events) == 1  # still in its first call

    gate.set()
    report = harness.logs.wait_for(event="events_dropped", timeout=30)
    assert report.levelno == logging.WARNING
    began = time.monotonic()
    assert sup.stop(timeout=10)
    assert time.monotonic() - began < 5

    records = lifecycle(harness)
    events = recorder.events
    assert [(e.kind, e.dn, e.at) for e in events] == [
        (r.event, r.dn, r.created)  # type: ignore[attr-defined]
        for r in records
    ]
    kinds = recorder.kinds("root.a")
    storm = ["started", "died", "restart_scheduled"] * DEATHS
    assert kinds == [*storm, "started", "healthy", "cancelled"]
    deaths = [e for e in events if e.kind == "died"]
    assert [e.restarts for e in deaths] == list(range(DEATHS))
    assert {(e.state, e.error) for e in deaths} == {(State.DEAD, "RuntimeError: storm")}

    assert raised.events == events  # every one, though each call raised
    failures = [r for r in records if r.event == "subscriber_failed"]  # type: ignore[attr-defined]
    assert len(failures) == 1  # rate-limited: one report a minute
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is ValueError
    kept = [getattr(record, "event", None) for record in sup.logs("root")]
    assert {"subscriber_failed", "events_dropped"} <= set(kept)  # the supervisor's, the root's

    drops = [r for r in records if r.event == "events_dropped"]  # type: ignore[attr-defined]
    dropped = sum(r.dropped for r in drops)  # type: ignore[attr-defined]
    assert drops[0].dropped >= DEATHS  # type: ignore[attr-defined]
    assert len(blocked.events) + dropped == len(events)
    assert blocked.events == [e for e in events if e in blocked.events]  # in order, none twice


# ------------------------------------------------------------------ fields


def test_an_event_says_what_happened_to_which_node_and_its_state_then(harness: Harness) -> None:
    a = RemoteRunnable()
    recorder = Recorder()
    sup = supervisor(harness, child_root(a))
    sup.subscribe(recorder)
    before = time.time()
    sup.start()
    a.wait_incarnation(0).healthy()
    healthy = recorder.wait_for("healthy", "root.a")
    a.current.die(RuntimeError("boom\non two lines"))
    died = recorder.wait_for("died", "root.a")
    a.wait_incarnation(1)
    assert sup.wait_settled(timeout=10)
    after = time.time()

    assert isinstance(died, Event)
    assert (died.kind, died.dn, died.state, died.restarts) == ("died", "root.a", State.DEAD, 0)
    assert died.error == "RuntimeError: boom on two lines"  # NodeStatus.last_error's form
    assert before <= healthy.at <= died.at <= after
    assert (healthy.state, healthy.error) == (State.HEALTHY, None)
    started = [e for e in recorder.events if e.kind == "started" and e.dn == "root.a"]
    assert [(e.state, e.restarts, e.error) for e in started] == [
        (State.NEW, 0, None),
        (State.NEW, 1, None),  # the death is the died event's, not the restart's
    ]
    scheduled = recorder.wait_for("restart_scheduled", "root.a")
    assert (scheduled.state, scheduled.restarts) == (State.DEAD, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        died.kind = "healthy"  # type: ignore[misc]


def test_a_failing_callback_s_event_carries_its_error(harness: Harness) -> None:
    def child(token: CancelToken) -> None:
        token.on_cancel(lambda: int("x"))
        healthy_until_cancelled(token)

    recorder = Recorder()
    sup = supervisor(harness, child_root(child))
    sup.subscribe(recorder)
    sup.start()
    wait_status(sup, "root.a", state=State.HEALTHY)
    sup.restart("root.a")
    failed = recorder.wait_for("callback_failed", "root.a")
    assert failed.error is not None and failed.error.startswith("ValueError: invalid literal")


def test_events_do_not_depend_on_log_levels() -> None:
    """With the base logger at WARNING, no DEBUG record reaches a handler, yet
    the subscriber gets ``started`` and ``healthy``."""
    logger = logging.getLogger("threadsup_test.events_levels")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    handler = RecordingHandler()
    logger.addHandler(handler)
    recorder = Recorder()
    sup = Supervisor(child_root(healthy_until_cancelled), logger=logger, backoff=FAST_BACKOFF)
    try:
        sup.subscribe(recorder)
        sup.start()
        recorder.wait_for("healthy", "root.a")
        recorder.wait_for("healthy", "root")
    finally:
        assert sup.stop(timeout=10)
        logger.removeHandler(handler)
    assert handler.records == []
    assert recorder.kinds("root.a") == ["started", "healthy", "cancelled"]
    assert recorder.kinds("root") == ["started", "healthy", "cancelled"]


def test_removed_is_the_event_of_a_spawned_child_leaving_the_tree(harness: Harness) -> None:
    """Removed with `Supervisor.remove`, or dropped once a temporary child ends:
    the child, and its own children, each get ``removed``."""
    root = RemoteRunnable()
    recorder = Recorder()
    sup = supervisor(harness, root)
    sup.subscribe(recorder)
    sup.start()
    root.wait_incarnation(0)

    def parent(token: CancelToken) -> None:
        token.run("inner", healthy_until_cancelled)
        healthy_until_cancelled(token)

    root.current.call(lambda t: t.spawn("kept", parent))
    wait_status(sup, "root.kept.inner", state=State.HEALTHY)
    assert sup.remove("root.kept", timeout=10)
    removed = [recorder.wait_for("removed", dn) for dn in ("root.kept", "root.kept.inner")]
    assert removed[0].state is State.CANCELLED
    root.current.call(lambda t: t.spawn("once", lambda t: None))
    assert recorder.wait_for("removed", "root.once").state is State.DONE
    assert recorder.kinds("root.once") == ["started", "exited", "removed"]
    assert [r.dn for r in harness.logs.find(event="removed")] == [  # type: ignore[attr-defined]
        "root.kept",
        "root.kept.inner",
        "root.once",
    ]


# ---------------------------------------------------------- subscriptions


def test_unsubscribe_stops_delivery_and_ends_the_thread(harness: Harness) -> None:
    a = RemoteRunnable()
    first, second = Recorder(), Recorder()
    sup = supervisor(harness, child_root(a))
    unsubscribe = sup.subscribe(first)
    sup.subscribe(second)
    sup.start()
    a.wait_incarnation(0).healthy()
    first.wait_for("healthy", "root.a")
    threads = {t.name for t in threading.enumerate() if t.name.startswith("threadsup-subscriber")}
    assert len(threads) == 2
    unsubscribe()
    unsubscribe()  # idempotent
    seen = len(first.events)
    a.current.die()
    a.wait_incarnation(1).healthy()
    second.wait_for("healthy", "root.a", nth=2)
    assert len(first.events) == seen

    def subscriber_threads() -> int:
        return len([t for t in threading.enumerate() if t.name in threads])

    wait_until(lambda: subscriber_threads() == 1, what="the unsubscribed one's thread to end")


def test_a_callback_may_unsubscribe_itself(harness: Harness) -> None:
    got: list[Event] = []
    unsubscribe: list[Callable[[], None]] = []
    later = Recorder()

    def once(event: Event) -> None:
        got.append(event)
        unsubscribe[0]()

    a = RemoteRunnable()
    sup = supervisor(harness, child_root(a))
    unsubscribe.append(sup.subscribe(once))
    sup.subscribe(later)
    sup.start()
    a.wait_incarnation(0).healthy()
    later.wait_for("healthy", "root.a")
    assert sup.stop(timeout=10)
    assert [e.kind for e in got] == ["started"]


def test_a_callback_is_a_thread_of_the_tree(harness: Harness) -> None:
    """From a callback, wait() would wait for itself: it raises, as from a runnable."""
    outcome: list[BaseException] = []
    seen = threading.Event()

    def callback(event: Event) -> None:
        if event.kind == "healthy" and not seen.is_set():
            try:
                sup.wait(0)
            except OwnThreadError as exc:
                outcome.append(exc)
            seen.set()

    sup = supervisor(harness, child_root(healthy_until_cancelled))
    sup.subscribe(callback)
    sup.start()
    assert seen.wait(DEFAULT_TIMEOUT)
    assert len(outcome) == 1


def test_a_blocked_subscriber_is_abandoned_at_stop(harness: Harness) -> None:
    gate = harness.gate()
    calls = Recorder()

    def stuck(event: Event) -> None:
        calls(event)
        gate.wait(DEFAULT_TIMEOUT * 3)

    sup = supervisor(harness, child_root(healthy_until_cancelled))
    sup.subscribe(stuck)
    sup.start()
    calls.wait_for("started", "root")
    wait_status(sup, "root.a", state=State.HEALTHY)
    began = time.monotonic()
    assert sup.stop(timeout=10)
    assert time.monotonic() - began < DELIVERY_GRACE + 3
    record = harness.logs.wait_for(event="subscriber_abandoned")
    assert record.levelno == logging.WARNING
    assert record.undelivered > 0  # type: ignore[attr-defined]
    assert "stuck" in record.getMessage()
    gate.set()  # its thread ends now, delivering nothing more
    assert len(calls.events) == 1


def test_subscribing_to_a_stopped_tree_delivers_nothing(harness: Harness) -> None:
    sup = supervisor(harness, child_root(healthy_until_cancelled))
    sup.start()
    wait_status(sup, "root.a", state=State.HEALTHY)
    assert sup.stop(timeout=10)
    before = set(threading.enumerate())
    got: list[Event] = []
    unsubscribe = sup.subscribe(got.append)
    assert set(threading.enumerate()) <= before
    unsubscribe()
    assert got == []


def test_subscribe_rejects_what_is_not_a_callback(harness: Harness) -> None:
    sup = supervisor(harness, healthy_until_cancelled)
    with pytest.raises(TypeError, match=r"subscribe\(\) takes a callable.* not 42"):
        sup.subscribe(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_queued of subscribe"):
        sup.subscribe(print, max_queued=True)
    with pytest.raises(TypeError, match="max_queued of subscribe"):
        sup.subscribe(print, max_queued=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_queued of subscribe\(\) must be an int >= 1"):
        sup.subscribe(print, max_queued=0)


def test_records_dropped_for_slow_handlers_make_no_events_either(harness: Harness) -> None:
    """While a handler blocks, lifecycle records past `EventLog.MAX_PENDING` are
    dropped: their events with them, so that records and events still agree;
    ``records_dropped`` is both."""
    harness.logger.setLevel(logging.INFO)  # DEBUG records would wait for the handler
    harness.logger.propagate = False  # 100 tracebacks
    gate = harness.gate()
    blocking = BlockOnce(gate)
    harness.logger.addHandler(blocking)
    runs: list[int] = []

    def child(token: CancelToken) -> None:
        runs.append(1)
        if len(runs) <= 100:
            raise RuntimeError("storm")
        healthy_until_cancelled(token)

    recorder = Recorder()
    sup = supervisor(harness, child_root(child, backoff=STORM_BACKOFF))
    sup._tree.events.MAX_PENDING = 50
    sup.subscribe(recorder, max_queued=100_000)
    try:
        sup.start()
        assert blocking.entered.wait(DEFAULT_TIMEOUT)
        wait_status(sup, "root.a", timeout=60, state=State.HEALTHY, restarts=100)
        gate.set()
        dropped = harness.logs.wait_for(event="records_dropped")
        assert sup.stop(timeout=10)
    finally:
        harness.logger.removeHandler(blocking)
    assert dropped.dropped > 0  # type: ignore[attr-defined]
    handled = {"died", "restart_scheduled", "records_dropped", "done"}
    assert [(e.kind, e.dn, e.at) for e in recorder.events if e.kind in handled] == [
        (r.event, r.dn, r.created)  # type: ignore[attr-defined]
        for r in lifecycle(harness)
    ]
    assert len([e for e in recorder.events if e.kind == "died"]) < 100


class BlockOnce(logging.Handler):
    """Blocks the thread handing it its first record until ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.entered = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(DEFAULT_TIMEOUT * 3)
