"""systemd's notify protocol (``Type=notify``), spoken without libsystemd.

A `Notifier` tells systemd when the tree is ready (``READY=1``), what it looks
like (``STATUS=``), that the process is alive (``WATCHDOG=1``) and that it is
stopping (``STOPPING=1``). Each message is one datagram on the unix socket named
by ``NOTIFY_SOCKET``, sent without blocking: a message systemd cannot take now
is not waited for, and no failure to send ever reaches the supervisor.

The watchdog pings and the ready and status checks run on the supervisor's
processor thread, so a processor that is held up (say, waiting for the tree
lock) stops the pings, and systemd restarts the service.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Callable

from threadsup import _logs
from threadsup._seconds import check_seconds
from threadsup._supervisor import Supervisor

#: How often the processor looks whether the tree became ready or changed:
#: READY goes out at most this long after the tree is.
CHECK_INTERVAL = 0.1
#: At most one STATUS per this many seconds; the latest goes out in the end.
STATUS_INTERVAL = 0.5
#: The summary is computed again this often even when no runnable started,
#: exited or signalled, for what changes without that (a node getting stuck).
REFRESH_INTERVAL = 2.0
#: The shortest watchdog ping period, whatever WATCHDOG_USEC says: a shorter
#: one would keep the processor busy pinging.
MIN_PING_INTERVAL = 0.01
#: Added to the stop timeout in EXTEND_TIMEOUT_USEC, for the process to exit
#: once the tree has stopped.
STOP_MARGIN = 1.0
#: EXTEND_TIMEOUT_USEC is an unsigned 64-bit number of microseconds; its largest
#: value means "infinity" to systemd.
_MAX_USEC = 2**64 - 2


class Notifier:
    """Sends sd_notify messages for one `Supervisor`; see `from_environment`.

    ``address`` is the socket's address (a path, or ``"\\0name"`` for an
    abstract one); ``watchdog`` the ping period in seconds, or ``None``;
    ``logger`` the base logger, whose ``<base>.supervisor`` logger gets the
    warnings until `attach` hands them to the supervisor's.
    """

    def __init__(
        self,
        address: str,
        watchdog: float | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.address = address
        self.watchdog = None if watchdog is None else max(watchdog, MIN_PING_INTERVAL)
        base = logger if logger is not None else logging.getLogger("threadsup")
        self._logger = logging.getLogger(f"{base.name}.supervisor")
        self._socket: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        #: Guards `_socket`: sends come from the processor and from `stopping`.
        self._lock = threading.Lock()
        self._sup: Supervisor | None = None
        self._disarms: list[Callable[[], None]] = []
        self._warned = False
        self._stopping = False
        # The processor thread's own, from here on.
        self._ready_sent = False
        #: What the last summary was computed for: the tree's activity, stopping.
        self._seen: tuple[float, bool] | None = None
        self._refresh_at = 0.0
        #: Once READY is out, the summary is computed no sooner than this.
        self._next_look = 0.0
        self._status = ""
        self._sent_status = ""
        self._status_sent_at = -math.inf

    def __repr__(self) -> str:
        return f"<Notifier {self.address!r} watchdog={self.watchdog}>"

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        logger: logging.Logger | None = None,
    ) -> Notifier | None:
        """A notifier for the socket ``NOTIFY_SOCKET`` names, or ``None`` when it
        is unset or empty (not run by systemd) or unusable.

        With ``WATCHDOG_USEC`` a positive integer, and ``WATCHDOG_PID`` unset or
        this process's id, it pings every half of that period. Bad values are
        ignored with a WARNING on ``<base>.supervisor`` (``logger`` is the base,
        ``threadsup`` by default); this never raises.
        """
        base = logger if logger is not None else logging.getLogger("threadsup")
        warn = logging.getLogger(f"{base.name}.supervisor").warning
        name = environ.get("NOTIFY_SOCKET", "")
        if not name:
            return None
        if name.startswith("@"):
            address = "\0" + name[1:]
        elif name.startswith("/"):
            address = name
        else:
            warn(
                "NOTIFY_SOCKET=%r is neither a path nor an abstract name (@name): "
                "systemd notifications are off",
                name,
            )
            return None
        watchdog = _watchdog_period(environ, warn)
        try:
            return cls(address, watchdog, logger=base)
        except OSError as exc:  # no descriptor to be had, say
            warn("cannot create the notify socket (%s): systemd notifications are off", exc)
            return None

    def attach(self, sup: Supervisor) -> None:
        """Start notifying for ``sup`` (best before `Supervisor.start`): READY
        once the tree is first ready, STATUS as its summary changes, and the
        watchdog pings, all from its processor thread until that ends or
        `close`. A notifier serves one supervisor: a second call raises
        `RuntimeError`."""
        if not isinstance(sup, Supervisor):
            raise TypeError(f"attach() takes a threadsup.Supervisor, not {sup!r}")
        if self._sup is not None:
            raise RuntimeError(f"{self!r} is already attached to {self._sup!r}")
        if self._socket is None:
            raise RuntimeError(f"{self!r} is closed: create another one")
        self._sup = sup
        self._disarms.append(sup._every(CHECK_INTERVAL, self._check))
        if self.watchdog is not None:
            self._disarms.append(sup._every(self.watchdog, self._ping))

    def stopping(self, timeout: float) -> None:
        """Tell systemd the service is stopping and may take ``timeout`` seconds
        (plus `STOP_MARGIN`) to: STOPPING=1 and EXTEND_TIMEOUT_USEC, which only
        ever extends systemd's stop timeout. With an infinite ``timeout`` no
        extension is asked for. READY is not sent after this."""
        seconds = check_seconds("timeout of Notifier.stopping()", timeout)
        self._stopping = True
        message = "STOPPING=1"
        if seconds != math.inf:
            message += f"\nEXTEND_TIMEOUT_USEC={min(int((seconds + STOP_MARGIN) * 1e6), _MAX_USEC)}"
        self._send(message)

    def close(self) -> None:
        """Stop notifying and close the socket; idempotent."""
        for disarm in self._disarms:
            disarm()
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    # The processor thread.

    def _ping(self) -> None:
        self._send("WATCHDOG=1")

    def _check(self) -> None:
        """READY once the tree is first ready; STATUS when its summary changed,
        at most once per `STATUS_INTERVAL`."""
        sup = self._sup
        assert sup is not None
        now = time.monotonic()
        if self._ready_sent and now < self._next_look:
            return  # a STATUS waits anyway: no walk of the tree meanwhile
        # Taken before looking: a change meanwhile is seen at the next check.
        seen = (sup._activity(), self._stopping)
        ready = False
        if seen != self._seen or now >= self._refresh_at:
            self._seen = seen
            self._refresh_at = now + REFRESH_INTERVAL
            self._next_look = now + STATUS_INTERVAL
            self._status = ("stopping: " if self._stopping else "") + sup.summary()
            ready = not self._ready_sent and not self._stopping and sup.ready()
        lines = ["READY=1"] if ready else []
        status_due = self._status != self._sent_status and (
            ready or now - self._status_sent_at >= STATUS_INTERVAL
        )
        if status_due:
            lines.append(f"STATUS={self._status}")
        if lines and self._send("\n".join(lines)):
            self._ready_sent = self._ready_sent or ready
            if status_due:
                self._sent_status, self._status_sent_at = self._status, now
        elif ready:
            self._seen = None  # not sent: look again at the next check

    # Any thread.

    def _send(self, message: str) -> bool:
        """Send one datagram without blocking; ``False`` when it was not sent."""
        with self._lock:
            if self._socket is None:
                return False
            try:
                self._socket.sendto(message.encode(), self.address)
                return True
            except OSError as exc:
                failure = exc
                warn, self._warned = not self._warned, True
        if warn:
            self._warn(failure)
        return False

    def _warn(self, failure: OSError) -> None:
        msg = "cannot notify systemd on %r (%s); going on, and later failures are not logged"
        if self._sup is not None:
            self._sup._emit(logging.WARNING, _logs.NOTIFY_FAILED, msg, self.address, failure)
        else:
            self._logger.warning(msg, self.address, failure)


def _watchdog_period(environ: Mapping[str, str], warn: Callable[..., None]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds when the watchdog is this process's."""
    usec = environ.get("WATCHDOG_USEC")
    if usec is None:
        return None
    period = _positive_int(usec)
    if period is None:
        warn("WATCHDOG_USEC=%r is not a positive integer: no watchdog pings", usec)
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is None:
        return period / 2e6
    owner = _positive_int(pid)
    if owner is None:
        warn("WATCHDOG_PID=%r is not a process id: no watchdog pings", pid)
        return None
    # Another's: inherited from the service's main process, which pings itself.
    return period / 2e6 if owner == os.getpid() else None


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None
