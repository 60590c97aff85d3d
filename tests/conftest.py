"""Shared fixtures: thread-leak check on every test, and a supervisor harness."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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
