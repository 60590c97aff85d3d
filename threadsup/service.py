"""Running a tree as a service: `run`, its signals and its exit statuses.

A daemon's whole main is ``sys.exit(threadsup.run(root))``. `run` owns the
main thread and the process's signals while the tree runs:

* SIGTERM and SIGINT stop the tree, within ``shutdown_timeout`` in total; a
  second one during the stop exits at once.
* SIGHUP restarts the whole tree: the usual "reload your configuration".
* SIGUSR1 logs the tree and the stack of every runnable thread.

The main thread waits on a socket that the signals wake: `signal.set_wakeup_fd`
writes each signal's number there, from whichever thread the kernel delivered
it to. (Waiting on a queue or a lock would not do: a signal delivered to
another thread does not interrupt the main thread's wait, and Python runs
handlers only in the main thread.) The processor writes a zero byte there when
a stop begins and when its loop ends. So no handler runs supervisor code in
the middle of whatever the main thread was doing.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any, Callable, Union

from threadsup import _logs
from threadsup._errors import GaveUp, NotMainThread, ProcessorFailed
from threadsup._logs import LogFormat, configure_logging
from threadsup._seconds import remaining, turn
from threadsup._supervisor import Supervisor, _skip_at_exit
from threadsup._token import Runnable
from threadsup.support import kill_programs
from threadsup.systemd import Notifier


class ExitStatus(enum.IntEnum):
    """The statuses `run` returns, and what a service manager should do with each.

    A second SIGTERM or SIGINT during a stop exits at once with ``128 + the
    signal's number`` (143 for SIGTERM, 130 for SIGINT), as a shell reports a
    death by that signal.
    """

    #: Stopped by a signal (or `Supervisor.cancel`) with every thread ended in
    #: time, or finished: every node DONE. Nothing to do.
    OK = 0
    #: The root gave up: failures exceeded its restart intensity. Restart the
    #: process (systemd's ``Restart=on-failure`` and Kubernetes do).
    GAVE_UP = 1
    #: A usage error of the command line: fix the command.
    USAGE = 2
    #: The stop ran out of time with runnable threads still running (their DNs
    #: and stacks are logged). Under a stop, nothing; otherwise restart.
    STOP_TIMED_OUT = 3
    #: threadsup's own processor failed: a bug in threadsup. Restart the
    #: process, and report the logged traceback.
    PROCESSOR_FAILED = 4


#: Signals that stop the tree; a second one during the stop exits at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The signal that restarts the whole tree (absent on Windows).
RESTART_SIGNAL: signal.Signals | None = getattr(signal, "SIGHUP", None)
#: The signal that logs the tree and every runnable's stack (absent on Windows).
DUMP_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)

#: Written when a stop begins or the tree's loop ends, beside the signals' numbers.
_PHASE = b"\0"

_Handler = Union[Callable[[int, Union[FrameType, None]], Any], int, None]


def run(
    root: Runnable,
    *,
    log_format: LogFormat | None = None,
    log_level: int | str | None = None,
    status: str | None = None,
    **options: Any,
) -> int:
    """Run ``root`` as a service until it stops; return the exit status.

    Builds a `Supervisor` from ``options`` (its keywords), then does what
    `run_supervisor` says. Call it from the main thread, as
    ``sys.exit(threadsup.run(root))``.
    """
    _require_main_thread("run()")
    return run_supervisor(
        Supervisor(root, **options), log_format=log_format, log_level=log_level, status=status
    )


def run_supervisor(
    sup: Supervisor,
    *,
    log_format: LogFormat | None = None,
    log_level: int | str | None = None,
    status: str | None = None,
) -> int:
    """Start ``sup`` (built by the caller, not started) and run it as a service.

    Installs the handlers of SIGTERM, SIGINT, SIGHUP and SIGUSR1, runs the
    tree until it stops or finishes, restores the previous handlers and returns
    an `ExitStatus` (or ``128 + signal`` after a second stop signal). Child
    programs of `threadsup.command` are killed on the way out, whatever the
    path. With ``NOTIFY_SOCKET`` set (systemd's ``Type=notify``), it speaks
    the notify protocol: see `threadsup.systemd`.

    Logging: ``log_format`` (``"text"`` or ``"json"``) and ``log_level``
    configure the whole process's logging with `configure_logging`. With
    neither, logging is left as the program set it, except that a program
    that configured none gets text records at INFO on stderr.

    ``status="HOST:PORT"`` serves the tree's status page and probes there
    (`threadsup.status.StatusServer`) from before the tree starts until the
    run ends, and logs its URL at INFO. A bad address raises `ValueError`, one
    it cannot listen on `threadsup.status.ListenError` (an `OSError`), before
    anything starts.
    """
    _require_main_thread("run_supervisor()")
    server = None
    if status is not None:
        # Imported here: most services need no HTTP server, nor its import time.
        from threadsup.status import StatusServer, parse_address

        server = StatusServer(sup, *parse_address(status))
    if log_format is not None or log_level is not None:
        configure_logging(logging.INFO if log_level is None else log_level, log_format or "text")
    elif not logging.getLogger().handlers:
        configure_logging(logging.INFO, "text")
    try:
        if server is not None:
            server.start()
        with _Wakeup() as wakeup:
            return _Service(sup, wakeup).run()
    finally:
        if server is not None:
            server.close()
        kill_programs()  # a no-op once the tree has stopped its programs itself


class _Service:
    """One run of a supervisor as a service; lives in the main thread."""

    def __init__(self, sup: Supervisor, wakeup: _Wakeup) -> None:
        self.sup = sup
        self.processor = sup._processor
        self.events = sup._tree.events
        self.wakeup = wakeup
        #: The stop signal that started the stop, once one came.
        self.stop_signal: signal.Signals | None = None
        #: When the stop must be over (`time.monotonic`); ``None`` until a stop
        #: begins, and with an infinite ``shutdown_timeout``.
        self.deadline: float | None = None
        self.stopping = False
        self.notifier = Notifier.from_environment(logger=self.events.base)

    def run(self) -> int:
        if self.notifier is not None:
            self.notifier.attach(self.sup)
        self.processor.on_phase(self.wakeup.phase)
        try:
            self._log(
                logging.INFO,
                _logs.SERVICE_STARTED,
                "running the tree (pid %d): SIGTERM or SIGINT stops it, SIGHUP restarts it, "
                "SIGUSR1 logs its threads' stacks",
                os.getpid(),
                pid=os.getpid(),
            )
            self.sup.start()
            return self._supervise()
        finally:
            if self.notifier is not None:
                self.notifier.close()

    def _supervise(self) -> int:
        while True:
            for signum in self.wakeup.wait(turn(self.deadline)):
                status = self._on_signal(signum)
                if status is not None:
                    return status
            if self.processor.ended.is_set():
                return self._ended()
            if self.processor.stop_asked_at is not None:
                self._begin_stop()  # the tree asked for it: cancel(), or the root gave up
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return self._timed_out()

    def _on_signal(self, signum: signal.Signals) -> int | None:
        """Act on a signal; the exit status if the service must end now."""
        if signum in STOP_SIGNALS:
            if self.stop_signal is not None:
                return self._exit_at_once(signum)
            self.stop_signal = signum
            self._log(
                logging.INFO,
                _logs.STOP_SIGNAL,
                "%s received: stopping the tree (within %.1f s)",
                signum.name,
                self.sup.shutdown_timeout,
                signal=signum.name,
            )
            self._begin_stop()
            self.sup.cancel()
        elif signum == RESTART_SIGNAL:
            self._restart(signum)
        elif signum == DUMP_SIGNAL:
            self._log(
                logging.WARNING,
                _logs.THREAD_DUMP,
                "%s received: the tree and its threads' stacks:\n%s",
                signum.name,
                self.sup.thread_dump(),
                signal=signum.name,
            )
        return None

    def _begin_stop(self) -> None:
        """A stop began, asked by a signal or by the tree (cancelled, gave up):
        it has ``shutdown_timeout`` from then to end."""
        if self.stopping:
            return
        self.stopping = True
        began = self.processor.stop_asked_at or time.monotonic()
        timeout = self.sup.shutdown_timeout
        self.deadline = None if math.isinf(timeout) else began + timeout
        if self.notifier is not None:
            self.notifier.stopping(timeout)

    def _restart(self, signum: signal.Signals) -> None:
        if self.stopping:
            self._log(
                logging.INFO,
                _logs.RESTART_SIGNAL,
                "%s received while stopping: not restarting",
                signum.name,
                signal=signum.name,
            )
            return
        self._log(
            logging.INFO,
            _logs.RESTART_SIGNAL,
            "%s received: restarting the tree",
            signum.name,
            signal=signum.name,
        )
        self.sup.restart("root")

    def _ended(self) -> int:
        """The tree's loop ended: join what is left, then say how it went."""
        # Finished by itself (no stop), its threads are ending: give them the timeout.
        wait_for = remaining(self.deadline) if self.stopping else self.sup.shutdown_timeout
        try:
            stopped = self.sup.wait(wait_for)
        except GaveUp as exc:
            self._log(logging.ERROR, _logs.SERVICE_EXIT, "exiting with status 1: %s", exc, status=1)
            return ExitStatus.GAVE_UP
        except ProcessorFailed as exc:
            self._log(
                logging.CRITICAL, _logs.SERVICE_EXIT, "exiting with status 4: %s", exc, status=4
            )
            return ExitStatus.PROCESSOR_FAILED
        if not stopped:
            return self._timed_out()
        began = self.processor.stop_asked_at
        if began is None:
            self._log(logging.INFO, _logs.SERVICE_EXIT, "the tree finished: every node is DONE")
        else:
            took = time.monotonic() - began
            self._log(
                logging.INFO,
                _logs.SERVICE_EXIT,
                "the tree stopped in %.3f s: every thread ended",
                took,
                took=took,
            )
        return ExitStatus.OK

    def _timed_out(self) -> int:
        """The stop ran out of time: name the runnables left, with their
        stacks, and leave them (daemon threads do not hold the process)."""
        self.sup._report_unstopped(self.sup.shutdown_timeout)
        self._log(
            logging.WARNING,
            _logs.THREAD_DUMP,
            "the stacks of the runnable threads still running:\n%s",
            self.sup.thread_dump(running_only=True),
        )
        _skip_at_exit(self.processor)
        if self.processor.gave_up is not None:
            return ExitStatus.GAVE_UP
        return ExitStatus.STOP_TIMED_OUT

    def _exit_at_once(self, signum: signal.Signals) -> int:
        status = 128 + int(signum)
        with self.sup._tree.lock:
            running = [dn for dn, _ in self.processor.runnable_threads()]
        killed = kill_programs()
        self._log(
            logging.WARNING,
            _logs.SERVICE_EXIT,
            "%s received during the stop: exiting at once with status %d; "
            "killed %d child programs; still running: %s",
            signum.name,
            status,
            killed,
            ", ".join(running) or "nothing",
            signal=signum.name,
            status=status,
            running=running,
        )
        _skip_at_exit(self.processor)
        return status

    def _log(self, level: int, event: str, msg: str, *args: object, **fields: Any) -> None:
        # "now": the process may exit right after, before the dispatcher's turn.
        self.events.emit(level, event, "root", msg, *args, delivery="now", **fields)


class _Wakeup:
    """The socket the main thread waits on, which the handled signals (through
    `signal.set_wakeup_fd`) and the processor's phases write to. A context
    manager: it installs the handlers on entry and restores them on exit."""

    def __init__(self) -> None:
        self._receive, self._send = socket.socketpair()
        for sock in (self._receive, self._send):
            sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._receive, selectors.EVENT_READ)
        self._previous: dict[signal.Signals, _Handler] = {}
        self._previous_fd = -1

    def __enter__(self) -> _Wakeup:
        try:
            self._previous_fd = signal.set_wakeup_fd(self._send.fileno(), warn_on_full_buffer=False)
            for signum in (*STOP_SIGNALS, RESTART_SIGNAL, DUMP_SIGNAL):
                if signum is not None:
                    # The handler does nothing: the signal's byte on the socket is the news.
                    self._previous[signum] = signal.signal(signum, _ignore)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        signal.set_wakeup_fd(self._previous_fd)
        self._selector.close()
        self._receive.close()
        self._send.close()

    def phase(self) -> None:
        """From the processor: a stop began, or the loop ended."""
        try:
            self._send.send(_PHASE)
        except OSError:  # full (the main thread will look anyway) or closed (it is gone)
            pass

    def wait(self, timeout: float | None) -> list[signal.Signals]:
        """Wait up to ``timeout`` s for a signal or a phase; the signals received."""
        self._selector.select(timeout)
        received = b""
        while True:
            try:
                chunk = self._receive.recv(4096)
            except BlockingIOError:
                break
            received += chunk
        return [signal.Signals(byte) for byte in received if byte != _PHASE[0]]


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of the signals `run` handles: see `_Wakeup`."""


def _require_main_thread(call: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise NotMainThread(
            f"{call} installs signal handlers, which only the main thread can do, but was "
            f"called from {threading.current_thread().name}: call it from the main thread, "
            "or run a Supervisor yourself (with Supervisor(root) as sup: sup.wait())"
        )
