"""systemd's notify protocol: a `Notifier` sending to a real unix datagram socket
that the test binds as systemd would, for a tree of real runnables; and the
processor's periodic calls that drive it.

Which messages went out while something held is told by markers: datagrams the
test sends to the same socket, which queues them in order with the notifier's.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from threadsup import CancelToken, Supervisor
from threadsup.systemd import MIN_PING_INTERVAL, STATUS_INTERVAL, Notifier
from threadsup.testing import (
    DEFAULT_TIMEOUT,
    Harness,
    RemoteRunnable,
    healthy_until_cancelled,
    run_each,
    wait_blocked,
    wait_until,
)

_markers = itertools.count()


class Listener:
    """A notify socket as systemd binds it, read on a thread of its own."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(address)
        self._socket.settimeout(0.05)
        #: Every datagram received, in order, with when (`time.monotonic`).
        self._received: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="test-notify-listener")
        self._thread.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._socket.recv(65536)
            except socket.timeout:
                continue
            with self._cond:
                self._received.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def messages(self, start: int = 0) -> list[str]:
        with self._cond:
            return [message for _, message in self._received[start:]]

    def wait_for(self, message: str, start: int = 0, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait until ``message`` is received at index ``start`` or later; its index."""

        def find() -> int | None:
            for index in range(start, len(self._received)):
                if self._received[index][1] == message:
                    return index
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                raise AssertionError(
                    f"no {message!r} within {timeout} s; received: {self.messages(start)}"
                )
            index = find()
            assert index is not None
            return index

    def arrival(self, index: int) -> float:
        with self._cond:
            return self._received[index][0]

    def mark(self) -> int:
        """Queue a marker after what was sent so far; its index once received."""
        marker = f"TEST_MARK={next(_markers)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(marker.encode(), self.address)
        return self.wait_for(marker)

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes: shorten the test name"
    listening = Listener(path)
    try:
        yield listening
    finally:
        listening.close()


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers to close at the end of the test, whatever happens."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.close()


def attached(
    harness: Harness,
    notifiers: list[Notifier],
    environ: Mapping[str, str],
    root: RemoteRunnable,
) -> tuple[Notifier, Supervisor]:
    """A notifier from ``environ``, attached to a started supervisor of ``root``."""
    notifier = Notifier.from_environment(environ, logger=harness.logger)
    assert notifier is not None
    notifiers.append(notifier)
    sup = harness.track(harness.supervisor(root))
    notifier.attach(sup)
    sup.start()
    return notifier, sup


def count(messages: list[str], message: str) -> int:
    return sum(1 for m in messages if m == message)


# ------------------------------------------------------------------- READY, STATUS


@pytest.mark.slow
def test_ready_once_the_tree_is_ready_and_only_once(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    db = RemoteRunnable()
    root = RemoteRunnable(run_each(db=db))
    _, sup = attached(harness, notifiers, {"NOTIFY_SOCKET": listener.address}, root)
    root.wait_incarnation(0).healthy()
    db0 = db.wait_incarnation(0)
    listener.wait_for("STATUS=2 nodes: 1 HEALTHY, 1 NEW (root.db)")
    assert not any("READY" in m for m in listener.messages())
    db0.healthy()
    healthy_at = time.monotonic()
    ready = listener.wait_for("READY=1\nSTATUS=2 nodes: 2 HEALTHY")
    latency = listener.arrival(ready) - healthy_at
    assert latency < 1.0, f"READY came {latency:.3f} s after the tree was ready"
    db0.die()  # the tree is not ready for a while, then again: no second READY
    db.wait_incarnation(1)
    new = listener.wait_for("STATUS=2 nodes: 1 HEALTHY, 1 NEW (root.db)", ready)
    db.current.healthy()
    listener.wait_for("STATUS=2 nodes: 2 HEALTHY", new)
    assert count(listener.messages(), "READY=1\nSTATUS=2 nodes: 2 HEALTHY") == 1
    assert not any("READY" in m for m in listener.messages(ready + 1))
    assert sup.wait_settled(timeout=10)  # the notifier's checks never keep it from settling


def _spawn(name: str, token: CancelToken) -> str:
    return token.spawn(name, healthy_until_cancelled)


@pytest.mark.slow
def test_status_is_rate_limited_and_the_latest_goes_out(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    root = RemoteRunnable()
    _, sup = attached(harness, notifiers, {"NOTIFY_SOCKET": listener.address}, root)
    root0 = root.wait_incarnation(0)
    root0.healthy()
    listener.wait_for("READY=1\nSTATUS=1 node: 1 HEALTHY")
    first = listener.mark()
    began = time.monotonic()
    for n in range(100):  # a new summary every 20 ms or so, for 2 s: one a check
        root0.call(functools.partial(_spawn, f"c{n}"))
        threading.Event().wait(0.02)
    elapsed = time.monotonic() - began
    last = listener.mark()
    statuses = [m for m in listener.messages(first)[: last - first] if m.startswith("STATUS=")]
    # At most one per STATUS_INTERVAL, and one more for the window's edges.
    assert 2 <= len(statuses) <= elapsed / STATUS_INTERVAL + 2, (elapsed, statuses)
    expected = "101 nodes: 101 HEALTHY"
    wait_until(lambda: sup.summary() == expected, what=expected)
    listener.wait_for(f"STATUS={expected}", last)


# --------------------------------------------------------------------- WATCHDOG


def test_watchdog_pings_at_half_the_period(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}
    notifier, _ = attached(harness, notifiers, environ, RemoteRunnable())
    assert notifier.watchdog == 0.1
    start = listener.mark()
    pings = [listener.wait_for("WATCHDOG=1", start)]
    for _ in range(10):
        pings.append(listener.wait_for("WATCHDOG=1", pings[-1] + 1))
    elapsed = listener.arrival(pings[-1]) - listener.arrival(pings[0])
    assert 0.6 <= elapsed <= 3.0, f"10 ping periods took {elapsed:.3f} s, not about 1 s"


def test_no_ping_while_the_processor_is_held_up(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}
    _, sup = attached(harness, notifiers, environ, RemoteRunnable())
    listener.wait_for("WATCHDOG=1")
    with sup._tree.lock:
        wait_blocked(sup._processor.thread.ident or 0, "with self._tree.lock")
        first = listener.mark()  # after every ping sent before the processor blocked
        threading.Event().wait(0.6)  # the window in which no ping may go out
        last = listener.mark()
    assert listener.messages(first + 1)[: last - first - 1] == []
    listener.wait_for("WATCHDOG=1", last)  # and they resume


def test_no_ping_for_another_processs_watchdog(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    environ = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "20000",
        "WATCHDOG_PID": str(os.getppid()),
    }
    root = RemoteRunnable()
    notifier, _ = attached(harness, notifiers, environ, root)
    assert notifier.watchdog is None
    root.wait_incarnation(0).healthy()
    ready = listener.wait_for("READY=1\nSTATUS=1 node: 1 HEALTHY")
    threading.Event().wait(0.3)  # 30 ping periods, had the watchdog been ours
    last = listener.mark()
    assert "WATCHDOG=1" not in listener.messages(ready)[: last - ready]


def test_no_ping_once_the_processor_ended(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "20000"}
    _, sup = attached(harness, notifiers, environ, RemoteRunnable())
    listener.wait_for("WATCHDOG=1")
    assert sup.stop(timeout=10)
    first = listener.mark()
    threading.Event().wait(0.2)  # 20 ping periods
    last = listener.mark()
    assert listener.messages(first + 1)[: last - first - 1] == []


# --------------------------------------------------------------------- STOPPING


def test_stopping_extends_the_stop_timeout_and_stops_ready(
    harness: Harness, listener: Listener, notifiers: list[Notifier]
) -> None:
    root = RemoteRunnable()
    notifier, _ = attached(harness, notifiers, {"NOTIFY_SOCKET": listener.address}, root)
    listener.wait_for("STATUS=1 node: 1 NEW (root)")
    notifier.stopping(2.5)
    listener.wait_for("STOPPING=1\nEXTEND_TIMEOUT_USEC=3500000")
    root.wait_incarnation(0).healthy()  # ready now, but the service is stopping
    listener.wait_for("STATUS=stopping: 1 node: 1 HEALTHY")
    notifier.stopping(math.inf)  # no extension for ever
    listener.wait_for("STOPPING=1")
    assert not any("READY" in m for m in listener.messages())
    with pytest.raises(ValueError, match=r"timeout of Notifier\.stopping"):
        notifier.stopping(-1)
    with pytest.raises(TypeError, match=r"timeout of Notifier\.stopping"):
        notifier.stopping("5")  # type: ignore[arg-type]


# ------------------------------------------------------------------ environment


def test_an_abstract_socket_name(harness: Harness, notifiers: list[Notifier]) -> None:
    name = f"threadsup-test-{os.getpid()}-{id(notifiers)}"
    abstract = Listener("\0" + name)
    try:
        root = RemoteRunnable()
        notifier, _ = attached(harness, notifiers, {"NOTIFY_SOCKET": "@" + name}, root)
        assert notifier.address == "\0" + name
        root.wait_incarnation(0).healthy()
        abstract.wait_for("READY=1\nSTATUS=1 node: 1 HEALTHY")
    finally:
        abstract.close()


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}],
)
def test_outside_systemd_there_is_no_notifier(harness: Harness, environ: Mapping[str, str]) -> None:
    assert Notifier.from_environment(environ, logger=harness.logger) is None
    assert harness.logs.records == []


def test_a_relative_socket_path_is_refused_with_a_warning(harness: Harness) -> None:
    environ = {"NOTIFY_SOCKET": "run/notify"}
    assert Notifier.from_environment(environ, logger=harness.logger) is None
    [record] = harness.logs.records
    assert record.levelno == logging.WARNING
    assert record.name == f"{harness.base}.supervisor"
    assert "NOTIFY_SOCKET='run/notify'" in record.getMessage()


@pytest.mark.parametrize(
    ("usec", "pid", "blamed"),
    [
        ("", None, "WATCHDOG_USEC=''"),
        ("abc", None, "WATCHDOG_USEC='abc'"),
        ("0", None, "WATCHDOG_USEC='0'"),
        ("-200000", None, "WATCHDOG_USEC='-200000'"),
        ("0.5", None, "WATCHDOG_USEC='0.5'"),
        ("200000", "me", "WATCHDOG_PID='me'"),
        ("200000", "0", "WATCHDOG_PID='0'"),
    ],
)
def test_bad_watchdog_values_mean_no_watchdog_with_a_warning(
    harness: Harness, notifiers: list[Notifier], usec: str, pid: str | None, blamed: str
) -> None:
    environ = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        environ["WATCHDOG_PID"] = pid
    notifier = Notifier.from_environment(environ, logger=harness.logger)
    assert notifier is not None
    notifiers.append(notifier)
    assert notifier.watchdog is None
    [record] = harness.logs.records
    assert record.levelno == logging.WARNING
    assert blamed in record.getMessage()


def test_the_ping_period_has_a_floor(notifiers: list[Notifier]) -> None:
    environ = {
        "NOTIFY_SOCKET": "/run/notify",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = Notifier.from_environment(environ)
    assert notifier is not None
    notifiers.append(notifier)
    assert notifier.watchdog == MIN_PING_INTERVAL


# ------------------------------------------------------------------ send failures


def _gone(tmp_path: Path) -> str:
    return str(tmp_path / "absent")  # ENOENT


def _closed(tmp_path: Path) -> str:
    path = str(tmp_path / "closed")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(path)
    return path  # the file stays, nobody listens: ECONNREFUSED


@pytest.mark.parametrize("nobody", [_gone, _closed])
def test_nobody_listening_is_one_warning_and_the_tree_works(
    harness: Harness, notifiers: list[Notifier], tmp_path: Path, nobody: object
) -> None:
    assert callable(nobody)
    path = nobody(tmp_path)
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}
    a = RemoteRunnable()
    root = RemoteRunnable(run_each(a=a))
    notifier, sup = attached(harness, notifiers, environ, root)
    root.wait_incarnation(0).healthy()
    a.wait_incarnation(0).healthy()
    record = harness.logs.wait_for(event="notify_failed")
    assert (record.levelno, record.name) == (logging.WARNING, f"{harness.base}.supervisor")
    assert path in record.getMessage()
    a.current.die()  # the tree goes on as before
    a.wait_incarnation(1).healthy()
    calls = _counting(sup, 20)  # the pings have failed about as often meanwhile
    notifier.stopping(1.0)
    notifier.close()
    notifier.close()  # idempotent
    assert sup.stop(timeout=10)  # which delivers every record
    assert calls.is_set()
    assert len(harness.logs.find(event="notify_failed")) == 1


def test_a_failure_before_attach_is_one_warning(harness: Harness, tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path}, logger=harness.logger)
    assert notifier is not None
    try:
        notifier.stopping(1.0)
        notifier.stopping(1.0)
    finally:
        notifier.close()
    [record] = harness.logs.records
    assert (record.levelno, record.name) == (logging.WARNING, f"{harness.base}.supervisor")
    assert path in record.getMessage() and f"[Errno {errno.ENOENT}]" in record.getMessage()


def test_a_full_socket_never_blocks_and_ready_goes_out_later(
    harness: Harness, notifiers: list[Notifier], tmp_path: Path
) -> None:
    path = str(tmp_path / "full")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as flood,
    ):
        systemd.bind(path)
        flood.setblocking(False)
        sent = 0
        while True:  # until systemd's queue is full
            try:
                flood.sendto(b"FLOOD=1", path)
            except BlockingIOError:
                break
            sent += 1
        root = RemoteRunnable()
        _, sup = attached(harness, notifiers, {"NOTIFY_SOCKET": path}, root)
        root.wait_incarnation(0).healthy()
        harness.logs.wait_for(event="notify_failed")
        assert sup.ready()
        systemd.settimeout(DEFAULT_TIMEOUT)
        received = [systemd.recv(65536).decode() for _ in range(sent)]
        assert received == ["FLOOD=1"] * sent
        assert systemd.recv(65536).decode() == "READY=1\nSTATUS=1 node: 1 HEALTHY"


def test_attach_misuse(harness: Harness, notifiers: list[Notifier]) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/notify"})
    assert notifier is not None
    notifiers.append(notifier)
    with pytest.raises(TypeError, match="attach"):
        notifier.attach("sup")  # type: ignore[arg-type]
    sup = harness.supervisor(RemoteRunnable())
    notifier.attach(sup)
    with pytest.raises(RuntimeError, match="already attached"):
        notifier.attach(harness.supervisor(RemoteRunnable()))
    closed = Notifier.from_environment({"NOTIFY_SOCKET": "/run/notify"})
    assert closed is not None
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.attach(sup)


# ------------------------------------------------------ the processor's periodic calls


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
