"""Lifecycle records (event, dn, level, logger) and JSON logging."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from threadsup import Backoff, CancelToken, Signal, Supervisor, configure_json_logging
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    RemoteRunnable,
    group_root,
    wait_until,
)


@pytest.fixture
def lifecycle(harness: Harness) -> Harness:
    """root runs the group {a, b}: a becomes healthy, b dies once, a (cancelled) and
    b restart, then a's second incarnation becomes healthy, done and returns."""
    a, b = RemoteRunnable(), RemoteRunnable()
    harness.start(group_root({"a": a, "b": b}), backoff=Backoff(initial=0.05, jitter=0))
    a.wait_incarnation(0).healthy()
    b.wait_incarnation(0).die(ValueError("b fails"))
    a1 = a.wait_incarnation(1)
    b.wait_incarnation(1)
    a1.healthy()
    a1.done()
    a1.finish()
    return harness


@pytest.mark.parametrize(
    "event, dn, level",
    [
        ("started", "root.a", logging.DEBUG),
        ("healthy", "root.a", logging.DEBUG),
        ("done", "root.a", logging.INFO),
        ("cancelled", "root.a", logging.DEBUG),
        ("restart_scheduled", "root.b", logging.INFO),
    ],
)
def test_supervisor_records_carry_event_and_dn(
    lifecycle: Harness, event: str, dn: str, level: int
) -> None:
    record = lifecycle.logs.wait_for(event=event, dn=dn)
    assert record.name == f"{lifecycle.base}.supervisor"
    assert record.levelno == level


def test_restart_scheduled_carries_the_delay_in_seconds(lifecycle: Harness) -> None:
    record = lifecycle.logs.wait_for(event="restart_scheduled", dn="root.b")
    assert float(record.__dict__["delay"]) == pytest.approx(0.05)


def test_started_is_logged_for_every_incarnation(lifecycle: Harness) -> None:
    wait_until(
        lambda: len(lifecycle.logs.find(event="started", dn="root.b")) == 2,
        what="two started records for root.b",
    )


def test_died_is_logged_at_error_on_the_node_logger_with_the_traceback(
    harness: Harness,
) -> None:
    child = RemoteRunnable()
    harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    error = ValueError("with traceback")
    child.wait_incarnation(0).die(error)
    record = harness.logs.wait_for(event="died", dn="root.a")
    assert record.name == f"{harness.base}.root.a"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is error
    assert record.exc_info[2] is not None


def test_a_runnable_logs_through_its_token_logger(harness: Harness) -> None:
    def root(token: CancelToken) -> None:
        token.logger.info("hello from %s", token.dn)
        token.signal(Signal.HEALTHY)
        token.wait()

    harness.start(root)
    record = harness.logs.wait_for(msg="hello from %s")
    assert record.name == f"{harness.base}.root"
    assert record.getMessage() == "hello from root"


# --------------------------------------------------------------------------- JSON


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def json_stream(harness: Harness) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_json_logging(logging.DEBUG, stream=stream, logger=harness.logger)
    assert isinstance(handler, logging.Handler)
    assert handler in harness.logger.handlers
    try:
        yield stream
    finally:
        harness.logger.removeHandler(handler)
        harness.logger.propagate = True


def test_json_logging_writes_one_object_per_line_with_dn_and_event(
    harness: Harness, json_stream: io.StringIO
) -> None:
    child = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run("a", child)
        token.logger.warning("plain record")
        token.signal(Signal.HEALTHY)
        token.wait()

    harness.start(root)
    child.wait_incarnation(0).die(ValueError("json death"))
    child.wait_incarnation(1)
    harness.logs.wait_for(event="restart_scheduled", dn="root.a")

    def have_all() -> bool:
        events = {(d.get("event"), d.get("dn")) for d in _json_lines(json_stream)}
        return {("started", "root.a"), ("died", "root.a"), ("log", "root")} <= events

    wait_until(have_all, what="started, died and log lines in the JSON output")
    lines = _json_lines(json_stream)
    for line in lines:
        assert "dn" in line and "event" in line, line
    plain = [d for d in lines if d["event"] == "log"]
    assert any("plain record" in json.dumps(d) for d in plain)
    died = [d for d in lines if d["event"] == "died"]
    assert "json death" in json.dumps(died[0])


def test_json_logging_defaults_to_the_threadsup_logger_and_the_level() -> None:
    base = logging.getLogger("threadsup")
    old_level, old_propagate = base.level, base.propagate
    stream = io.StringIO()
    handler = configure_json_logging(stream=stream)  # level=INFO
    try:
        assert handler in base.handlers

        def child(token: CancelToken) -> None:
            token.logger.debug("too detailed")
            token.logger.warning("worth saying")
            token.signal(Signal.HEALTHY)
            token.signal(Signal.DONE)

        with Supervisor(group_root({"a": child}), backoff=FAST_BACKOFF) as sup:
            assert sup.wait(timeout=10)
            wait_until(
                lambda: any(d.get("event") == "done" for d in _json_lines(stream)),
                what="an INFO done line",
            )
            wait_until(
                lambda: any(
                    d.get("event") == "log" and d.get("dn") == "root.a" for d in _json_lines(stream)
                ),
                what="the runnable's warning",
            )
        text = stream.getvalue()
        assert "too detailed" not in text
        assert '"started"' not in text  # DEBUG
    finally:
        base.removeHandler(handler)
        base.setLevel(old_level)
        base.propagate = old_propagate


def test_wait_settled_waits_for_records_on_their_way_to_the_handlers() -> None:
    """A slow handler: the tree settles only once the death's record has reached it."""
    handled: list[str] = []

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            threading.Event().wait(0.2)  # a handler slower than the 50 ms settle window
            handled.append(str(getattr(record, "event", "")))

    logger = logging.getLogger("threadsup_test.slow_handler")
    logger.propagate = False
    slow = Slow()
    logger.addHandler(slow)
    runs: list[int] = []

    def root(token: CancelToken) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run dies")
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = Supervisor(root, logger=logger, backoff=Backoff(initial=0))
    try:
        sup.start()
        assert sup.wait_settled(timeout=10)
        assert "died" in handled
    finally:
        assert sup.stop(timeout=10)
        logger.removeHandler(slow)
