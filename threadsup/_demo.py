"""``python -m threadsup demo``: a live supervision tree over blocking I/O.

The tree, on embedded defaults (no setup, loopback only)::

    root
      root.table              prints this tree every second; stops it after --duration
      root.echo               TCP echo server: a socketserver run by threadsup.serve
      root.client             talks to the echo server every half second
      root.job                a child process run by threadsup.command: prints a line
                              every half second, exits with status 3 on its third
      root.flaky              fails every few seconds: restarts with growing backoff
      root.pipeline
        root.pipeline.producer  } one group sharing a queue: when the producer
        root.pipeline.consumer  } fails, the consumer is cancelled, both restart

Every second root.table prints the tree from `Supervisor.snapshot` as a table.
The tree runs as a service (`threadsup.service.run_supervisor`) until Ctrl-C,
SIGTERM or ``--duration`` seconds, then stops, and the demo says how long the
shutdown took.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import shutil
import socket
import socketserver
import sys
import threading
import time
from typing import TextIO

from threadsup import Backoff, CancelToken, Runnable, Signal, Supervisor, command, serve
from threadsup._render import LAST_ERROR, RESTARTS, STATE, render
from threadsup.service import ExitStatus, run_supervisor

#: Restarts visible within seconds (the library default starts at 0.5 s too,
#: but grows to a minute).
DEMO_BACKOFF = Backoff(initial=0.5, multiplier=1.5, maximum=4.0, jitter=0.2)
#: Bound on the final `Supervisor.stop`.
SHUTDOWN_TIMEOUT = 5.0
#: The demo's base logger: node loggers are ``threadsup.demo.<dn>``.
LOGGER_NAME = "threadsup.demo"
#: The columns of the table the demo prints, after the DN.
TABLE = (STATE, RESTARTS, LAST_ERROR)

PING_INTERVAL = 0.5  # client: one echo round trip every half second
FLAKY_UPTIME = 1.0  # flaky: fails this long after each start
PRODUCE_INTERVAL = 0.25  # producer: one item every quarter second...
PRODUCER_FAILS_AT = 5  # ...and fails on the 5th of each incarnation
#: How often the echo server's serve_forever() looks for a shutdown request: the
#: bound on how long stopping it takes.
ECHO_POLL_INTERVAL = 0.05
#: The program root.job runs (``sys.executable -u -c JOB_SCRIPT``): it says it is
#: ready, prints a line every half second, and fails on its third batch.
JOB_SCRIPT = """\
import os, sys, time
print(f"job ready (pid {os.getpid()})", flush=True)
for batch in range(1, 4):
    time.sleep(0.5)
    print(f"processed batch {batch}", flush=True)
print("lost the database connection", file=sys.stderr, flush=True)
sys.exit(3)
"""


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked in ``sock.accept()`` or ``sock.recv()``.

    ``close()`` from another thread does not wake it on Linux; ``shutdown``
    does. The socket may be closed already when a late cancel arrives.
    """
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _EchoHandler(socketserver.BaseRequestHandler):
    """Echoes what it receives until the client closes its end."""

    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    """One thread per connection; `server_close` joins them (``block_on_close``)."""

    daemon_threads = True
    allow_reuse_address = True


class Demo:
    """The demo's runnables and the state they share (the server's port, counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._port: int | None = None
        self.round_trips = 0
        self.consumed = 0

    def root(self, table: Runnable, token: CancelToken) -> None:
        token.run("table", table)
        token.run("echo", serve(self.echo_server, poll_interval=ECHO_POLL_INTERVAL))
        token.run("client", self.client)
        token.run("job", command([sys.executable, "-u", "-c", JOB_SCRIPT], healthy="ready"))
        token.run("flaky", self.flaky)
        token.run("pipeline", self.pipeline)
        token.signal(Signal.HEALTHY)
        token.wait()  # the children do the work; return once cancelled

    def echo_server(self) -> socketserver.BaseServer:
        """A fresh echo server for each incarnation of root.echo, on an ephemeral port."""
        server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
        with self._lock:
            self._port = server.server_address[1]
        return server

    def client(self, token: CancelToken) -> None:
        while True:  # the server publishes its ephemeral port once it listens
            with self._lock:
                port = self._port
            if port is not None:
                break
            if token.wait(0.05):
                return
        with socket.create_connection(("127.0.0.1", port)) as conn:
            token.on_cancel(functools.partial(_shutdown, conn))
            token.signal(Signal.HEALTHY)
            count = 0
            while not token.wait(PING_INTERVAL):
                count += 1
                message = f"ping {count}\n".encode()
                conn.sendall(message)
                reply = b""
                while len(reply) < len(message):
                    chunk = conn.recv(len(message) - len(reply))
                    if not chunk:  # cancelled (shutdown) or server gone
                        token.raise_if_cancelled()
                        raise ConnectionError("echo server closed the connection")
                    reply += chunk
                if reply != message:
                    raise ConnectionError(f"echo mismatch: {reply!r}")
                with self._lock:
                    self.round_trips += 1

    def flaky(self, token: CancelToken) -> None:
        # Never gets HEALTHY, so its backoff keeps growing: 0.5 s, 0.75 s, ...
        if not token.wait(FLAKY_UPTIME):
            raise ConnectionError("upstream refused the handshake")

    def pipeline(self, token: CancelToken) -> None:
        items: queue.Queue[int | None] = queue.Queue()
        token.run_group(
            {
                "producer": functools.partial(self.producer, items),
                "consumer": functools.partial(self.consumer, items),
            }
        )
        token.signal(Signal.HEALTHY)
        token.wait()

    def producer(self, items: queue.Queue[int | None], token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        count = 0
        while not token.wait(PRODUCE_INTERVAL):
            count += 1
            if count == PRODUCER_FAILS_AT:
                raise ConnectionResetError(f"source lost at item {count}")
            items.put(count)

    def consumer(self, items: queue.Queue[int | None], token: CancelToken) -> None:
        token.on_cancel(functools.partial(items.put, None))  # wakes the blocking get()
        token.signal(Signal.HEALTHY)
        while True:
            item = items.get()  # blocks; the on_cancel callback wakes it
            if item is None:
                if token.cancelled:
                    return
                continue  # the wake-up of an earlier incarnation
            with self._lock:
                self.consumed += 1

    def counters(self) -> str:
        with self._lock:
            return f"echo round trips: {self.round_trips}, items consumed: {self.consumed}"


def _quiet_logger() -> logging.Logger:
    """The demo's base logger, silent unless the application configured logging.

    Deaths are ERROR records with a traceback; the table shows them already,
    so without this they would flood the terminal.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


def run_demo(
    duration: float | None = None,
    out: TextIO | None = None,
    *,
    interval: float = 1.0,
    width: int | None = None,
) -> int:
    """Run the demo tree as a service (`threadsup.service.run_supervisor`),
    printing a table every ``interval`` seconds.

    Runs until ``duration`` seconds have passed (forever when ``None``) or
    until SIGINT or SIGTERM, then stops the tree. Returns the exit status of
    `run_supervisor`: 0 when every thread stopped within `SHUTDOWN_TIMEOUT`.
    Call it from the main thread.
    """
    out = sys.stdout if out is None else out
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    demo = Demo()
    started = time.monotonic()
    stopping: list[float] = []  # when the tree was asked to stop

    def show(title: str) -> None:
        elapsed = time.monotonic() - started
        out.write(f"\n[{elapsed:6.1f}s] {title}\n{render(sup.snapshot(), TABLE, width=width)}\n")
        out.flush()

    def table(token: CancelToken) -> None:
        """root.table: prints the tree, and stops it once ``duration`` has passed."""

        def stop_began() -> None:
            stopping.append(time.monotonic())
            out.write("\nstopping...\n")
            out.flush()

        token.on_cancel(stop_began)
        token.signal(Signal.HEALTHY)
        deadline = math.inf if duration is None else started + duration
        next_table = started
        while not token.wait(max(min(next_table, deadline) - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                sup.cancel()  # the stop begins here; returning now is no death
                return
            show(demo.counters())
            next_table += interval

    sup = Supervisor(
        functools.partial(demo.root, table),
        logger=_quiet_logger(),
        backoff=DEMO_BACKOFF,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    out.write("threadsup demo: a supervision tree over blocking I/O (Ctrl-C to stop)\n")
    out.flush()
    status = run_supervisor(sup)
    took = (time.monotonic() - (stopping[0] if stopping else started)) * 1000
    show("after shutdown")
    if status == ExitStatus.OK:
        out.write(f"\nshutdown took {took:.1f} ms: every thread stopped\n")
    else:
        out.write(f"\nshutdown ended after {took:.1f} ms with exit status {status}\n")
    out.flush()
    return status
