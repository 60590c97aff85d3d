"""The processor's periodic calls: functions run on the processor thread itself
at a period, which the systemd notifier's checks and watchdog pings use."""

from __future__ import annotations

import itertools
import logging
import threading

from threadsup import Supervisor
from threadsup.testing import DEFAULT_TIMEOUT, Harness, RemoteRunnable, wait_until


def _counting(sup: Supervisor, calls: int) -> threading.Event:
    """Count calls of a periodic function on ``sup``'s processor, every 10 ms,
    and wait for ``calls`` of them; the event is set by then."""
    counter = itertools.count(1)
    reached = threading.Event()

    def tick() -> None:
        if next(counter) >= calls:
            reached.set()

    disarm = sup._every(0.01, tick)
    try:
        assert reached.wait(DEFAULT_TIMEOUT)
    finally:
        disarm()
    return reached


def test_a_periodic_call_runs_on_the_processor_until_disarmed(harness: Harness) -> None:
    sup = harness.start(RemoteRunnable())
    threads: list[threading.Thread] = []
    disarm = sup._every(0.01, lambda: threads.append(threading.current_thread()))
    wait_until(lambda: len(threads) >= 5, what="5 periodic calls")
    assert sup.wait_settled(timeout=10)  # it never keeps the tree from settling
    disarm()
    calls = len(threads)
    _counting(sup, 5)  # later calls of another periodic function
    assert len(threads) <= calls + 1  # one may have been under way at the disarm
    assert set(threads) == {sup._processor.thread}


def test_a_periodic_call_that_raises_is_logged_once(harness: Harness) -> None:
    sup = harness.start(RemoteRunnable())
    calls = itertools.count(1)
    three = threading.Event()

    def broken() -> None:
        if next(calls) >= 3:
            three.set()
        raise RuntimeError("broken check")

    sup._every(0.01, broken)
    assert three.wait(DEFAULT_TIMEOUT)
    record = harness.logs.wait_for(event="periodic_failed")
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and "broken check" in str(record.exc_info[1])
    assert sup.stop(timeout=10)  # the processor went on; stop delivers every record
    assert sup._processor.failure is None
    assert len(harness.logs.find(event="periodic_failed")) == 1
