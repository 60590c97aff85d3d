"""The public helpers of threadsup.testing fail loudly and in bounded time."""

from __future__ import annotations

import logging
import threading

import pytest

from threadsup import State
from threadsup.testing import (
    AtLeast,
    Harness,
    RecordingHandler,
    RemoteRunnable,
    capture_logs,
    no_thread_leak,
    wait_blocked,
    wait_snapshot,
    wait_status,
    wait_until,
)


def test_no_thread_leak_reports_a_thread_left_alive() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(10,), name="leaky")
    try:
        with pytest.raises(AssertionError, match="leaky"), no_thread_leak(timeout=0.1):
            thread.start()
    finally:
        release.set()
        thread.join(10)


def test_no_thread_leak_waits_for_threads_that_end() -> None:
    done = threading.Event()
    with no_thread_leak(timeout=5):
        threading.Thread(target=done.wait, args=(0.05,)).start()


def test_wait_until_times_out_with_assertion_error() -> None:
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.05, what="never")


def test_wait_blocked_finds_a_thread_at_the_call_and_times_out_elsewhere() -> None:
    release = threading.Event()
    thread = threading.Thread(target=lambda: release.wait(10), name="blocker")
    thread.start()
    try:
        assert thread.ident is not None
        wait_blocked(thread.ident, "waiter.acquire(", timeout=5)  # inside Event.wait
        with pytest.raises(AssertionError, match=r"'\.recv\('"):
            wait_blocked(thread.ident, ".recv(", timeout=0.05)
        with pytest.raises(AssertionError, match="to block at"):
            wait_blocked(0, "waiter.acquire(", timeout=0.05)  # no such thread
    finally:
        release.set()
        thread.join(10)


def test_recording_handler_waits_for_a_matching_record() -> None:
    logger = logging.getLogger("threadsup_test.helpers")
    with capture_logs(logger) as logs:
        assert isinstance(logs, RecordingHandler)
        timer = threading.Timer(0.05, lambda: logger.info("x", extra={"event": "e1"}))
        timer.start()
        assert logs.wait_for(event="e1").getMessage() == "x"
        timer.join()
        with pytest.raises(AssertionError, match="e2"):
            logs.wait_for(timeout=0.05, event="e2")


def test_at_least_compares_as_a_lower_bound() -> None:
    assert AtLeast(2) == 2 and AtLeast(2) == 3 and AtLeast(2) != 1


def test_wait_snapshot_failure_shows_the_last_snapshot(harness: Harness) -> None:
    sup = harness.start(RemoteRunnable())
    with pytest.raises(AssertionError, match="root"):
        wait_snapshot(sup, lambda s: False, timeout=0.05)
    with pytest.raises(AssertionError, match=r"root\.missing"):
        wait_status(sup, "root.missing", timeout=0.05, state=State.NEW)


def test_commands_to_an_exited_incarnation_fail_at_once(harness: Harness) -> None:
    child = RemoteRunnable()
    harness.start(RemoteRunnable(lambda t: t.run("a", child)))
    first = child.wait_incarnation(0)
    first.die()
    assert first.wait_exited(10)
    with pytest.raises(RuntimeError, match="exited"):
        first.healthy()
    assert first.outcome == "raised" and isinstance(first.error, RuntimeError)
