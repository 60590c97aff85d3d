"""Shared fixtures: thread-leak check on every test, a supervisor harness, and
``Thread.start`` failing on demand."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Callable

import pytest

from threadsup.testing import Harness, check_no_new_threads

#: Bound of the wait for a test's threads to end after it.
LEAK_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads it started alive after a bounded wait.

    Autouse fixtures are set up first, so this one is torn down last, after the
    harness has stopped the test's supervisors.
    """
    before = set(threading.enumerate())
    yield
    check_no_new_threads(before, LEAK_TIMEOUT)


@pytest.fixture
def harness() -> Iterator[Harness]:
    """Supervisors on an isolated, recorded logger; stopped (and asserted) at the end."""
    h = Harness()
    try:
        yield h
    finally:
        h.close()


class StartFaults:
    """Makes ``threading.Thread.start`` raise "can't start new thread" on demand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.original = threading.Thread.start
        self.lock = threading.Lock()
        #: Which starts to fail: returns True to fail this thread's start.
        self.rule: Callable[[threading.Thread], bool] = lambda thread: False
        self.failed: list[str] = []
        faults = self

        def start(thread: threading.Thread) -> None:
            with faults.lock:
                fail = faults.rule(thread)
                if fail:
                    faults.failed.append(thread.name)
            if fail:
                raise RuntimeError("can't start new thread")
            faults.original(thread)

        monkeypatch.setattr(threading.Thread, "start", start)


@pytest.fixture
def start_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[StartFaults]:
    faults = StartFaults(monkeypatch)
    try:
        yield faults
    finally:
        faults.rule = lambda thread: False
