"""The ready-made runnables of threadsup.support, against real sockets, servers and
child processes: serve, command and periodic."""

from __future__ import annotations

import errno
import http.client
import http.server
import logging
import math
import os
import queue
import re
import signal
import socket
import socketserver
import sys
import textwrap
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import StartFaults
from threadsup import (
    Backoff,
    CancelToken,
    CommandFailed,
    ServeError,
    Signal,
    State,
    Supervisor,
    ThreadsupError,
    command,
    periodic,
    serve,
    support,
)
from threadsup.support import _command
from threadsup.testing import AtLeast, Harness, wait_status, wait_until

#: For tests that look at a DEAD node: its restart waits a minute (the harness stops it first).
SLOW = Backoff(initial=60.0, jitter=0.0)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")

# ------------------------------------------------------------------------ helpers


def node_lines(harness: Harness, dn: str = "root") -> list[logging.LogRecord]:
    """The records a node logged itself (not the supervisor's lifecycle records)."""
    name = f"{harness.base}.{dn}"
    return [r for r in harness.logs.records if r.name == name]


def wait_record(
    harness: Harness,
    predicate: Callable[[logging.LogRecord], bool],
    what: str,
    dn: str = "root",
    timeout: float = 10.0,
) -> logging.LogRecord:
    found: list[logging.LogRecord] = []

    def check() -> bool:
        found[:] = [r for r in node_lines(harness, dn) if predicate(r)]
        return bool(found)

    wait_until(check, timeout, what)
    return found[0]


def wait_message(harness: Harness, text: str, dn: str = "root") -> logging.LogRecord:
    return wait_record(harness, lambda r: r.getMessage() == text, repr(text), dn)


def python(script: str) -> list[str]:
    """argv running ``script`` in a fresh interpreter (the child program of these tests)."""
    return [sys.executable, "-c", textwrap.dedent(script)]


def open_fds() -> dict[int, str] | None:
    """This process's open file descriptors and what each refers to, where /proc
    tells them, but for the guard's socket: the guard lives as long as the
    process, from its first program on. Compared whole, so that a failure names
    what was left open."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    fds = {}
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the descriptor the listing used, closed since
            continue
    guard = _command._programs.guard_fd
    if guard is not None:
        fds.pop(guard, None)
    return fds


def assert_fds_back_to(before: dict[int, str] | None) -> None:
    """Wait (bounded) until this process's descriptors are ``before`` again, then
    compare, so that the failure shows what was left open. The wait lets a
    descriptor another thread of the process holds for an instant (a directory
    listing, a log handler) come and go; a leaked pipe stays and fails."""
    if before is None:
        return
    try:
        wait_until(lambda: open_fds() == before, 5.0, "the descriptors to be closed")
    except AssertionError:
        assert open_fds() == before


def is_reaped(pid: int) -> bool:
    """True when ``pid`` is no child of ours any more (it was waited for)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text()


def started_pid(harness: Harness, dn: str = "root", index: int = 0) -> int:
    """The pid of the ``index``-th program a command node started, from its log."""
    wait_until(lambda: len(_started(harness, dn)) > index, 10.0, f"start {index} of a command")
    pid = _started(harness, dn)[index].pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return pid


def _started(harness: Harness, dn: str) -> list[logging.LogRecord]:
    return [r for r in node_lines(harness, dn) if r.getMessage().startswith("started ")]


# -------------------------------------------------------------------------- serve


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class CrashableServer(socketserver.TCPServer):
    """A TCP echo server whose serve_forever() raises once ``crash`` is set."""

    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.crash = threading.Event()

    def service_actions(self) -> None:
        if self.crash.is_set():
            raise RuntimeError("serve_forever crashed")


class Servers:
    """A factory of ``server_class`` instances that remembers what it built."""

    def __init__(self, make: Callable[[], socketserver.BaseServer]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._built: list[socketserver.BaseServer] = []

    def __call__(self) -> socketserver.BaseServer:
        server = self._make()
        with self._lock:
            self._built.append(server)
        return server

    @property
    def built(self) -> list[socketserver.BaseServer]:
        with self._lock:
            return list(self._built)

    def port(self, index: int = -1) -> int:
        address = self.built[index].server_address
        assert isinstance(address, tuple)
        port = address[1]
        assert isinstance(port, int)
        return port


def echo(port: int, text: bytes = b"hello\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(text)
        reply = b""
        while len(reply) < len(text):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def is_closed(server: socketserver.BaseServer) -> bool:
    sock = getattr(server, "socket", None)
    assert isinstance(sock, socket.socket)
    return sock.fileno() == -1


class HelloHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/crash":
            raise ValueError("handler crashed")
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log on stderr


def http_server() -> socketserver.BaseServer:
    return http.server.HTTPServer(("127.0.0.1", 0), HelloHandler)


def threading_http_server() -> socketserver.BaseServer:
    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), HelloHandler)


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        status: int = response.status
        return status, response.read()


def test_serve_a_tcp_server_healthy_then_cancelled_promptly(harness: Harness) -> None:
    servers = Servers(CrashableServer)
    sup = harness.start(serve(servers))
    wait_status(sup, "root", state=State.HEALTHY)
    assert echo(servers.port()) == b"hello\n"
    assert echo(servers.port(), b"two\nlines\n") == b"two\nlines\n"
    started = time.monotonic()
    assert sup.stop(10)
    took = time.monotonic() - started
    assert took < 1.0, f"stop took {took:.3f} s with poll_interval 0.1"
    status = sup.snapshot()["root"]
    assert (status.state, status.restarts, status.last_error) == (State.CANCELLED, 0, None)
    assert is_closed(servers.built[0])  # server_close() ran
    assert not [r for r in harness.logs.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("make", [http_server, threading_http_server])
def test_serve_an_http_server_under_a_name(
    harness: Harness, make: Callable[[], socketserver.BaseServer]
) -> None:
    servers = Servers(make)

    def root(token: CancelToken) -> None:
        token.run("http", serve(servers))  # the runnable does not care about its name
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.http", state=State.HEALTHY)
    assert get(servers.port(), "/a") == (200, b"hello from /a")
    conn = http.client.HTTPConnection("127.0.0.1", servers.port(), timeout=10)
    try:
        conn.request("GET", "/b")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello from /b")
    finally:
        conn.close()
    assert sup.stop(10)
    assert sup.snapshot()["root.http"].state is State.CANCELLED
    assert is_closed(servers.built[0])


def test_a_crashing_handler_is_logged_not_a_death(harness: Harness) -> None:
    servers = Servers(http_server)
    sup = harness.start(serve(servers))
    wait_status(sup, "root", state=State.HEALTHY)
    with pytest.raises(OSError):  # the connection closed without a response
        get(servers.port(), "/crash")
    record = wait_record(
        harness, lambda r: r.getMessage().startswith("error while handling"), "handler error"
    )
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    # The server goes on serving: a handler's failure is not the server's.
    assert get(servers.port(), "/after") == (200, b"hello from /after")
    status = sup.snapshot()["root"]
    assert (status.state, status.restarts, status.last_error) == (State.HEALTHY, 0, None)
    assert len(servers.built) == 1


def test_a_crash_of_serve_forever_is_a_death_and_the_factory_gives_a_new_server(
    harness: Harness,
) -> None:
    servers = Servers(CrashableServer)
    sup = harness.start(serve(servers))
    wait_status(sup, "root", state=State.HEALTHY)
    first = servers.built[0]
    assert isinstance(first, CrashableServer)
    first_port = servers.port()
    first.crash.set()
    wait_status(sup, "root", state=State.HEALTHY, restarts=1)
    assert sup.snapshot()["root"].last_error == "RuntimeError: serve_forever crashed"
    died = harness.logs.wait_for(dn="root", event="died")
    assert died.levelno == logging.ERROR and died.exc_info is not None
    assert is_closed(first)  # closed when its incarnation ended
    assert len(servers.built) == 2 and servers.built[1] is not first
    assert echo(servers.port()) == b"hello\n"  # the new server works
    with pytest.raises(OSError):  # and the old one is gone
        socket.create_connection(("127.0.0.1", first_port), timeout=10).close()


def test_a_server_instance_serves_once_then_restarts_die_naming_the_dn(
    harness: Harness,
) -> None:
    server = CrashableServer()

    def root(token: CancelToken) -> None:
        token.run("echo", serve(server))
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.echo", state=State.HEALTHY)
    address = server.server_address
    assert isinstance(address, tuple)
    assert echo(address[1]) == b"hello\n"
    server.crash.set()
    assert wait_status(sup, "root.echo", restarts=AtLeast(1))
    assert is_closed(server)
    wait_until(
        lambda: "ServeError" in (sup.snapshot()["root.echo"].last_error or ""),
        10.0,
        "the reuse error",
    )
    status = sup.snapshot()["root.echo"]
    assert status.last_error is not None
    assert status.last_error.startswith("ServeError: root.echo: ")
    assert "cannot serve again" in status.last_error and "factory" in status.last_error


def test_serve_forever_returning_without_cancellation_is_a_death(harness: Harness) -> None:
    servers = Servers(CrashableServer)
    sup = harness.start(serve(servers))
    wait_status(sup, "root", state=State.HEALTHY)
    servers.built[0].shutdown()  # someone else stops it: returns within poll_interval
    wait_status(sup, "root", state=State.HEALTHY, restarts=1)
    error = sup.snapshot()["root"].last_error
    assert error is not None and error.startswith("ServeError: root: serve_forever() of ")
    assert "was not cancelled" in error


def test_a_server_that_does_not_listen_dies_with_a_clear_error(harness: Harness) -> None:
    servers = Servers(
        lambda: socketserver.TCPServer(("127.0.0.1", 0), EchoHandler, bind_and_activate=False)
    )
    sup = harness.start(serve(servers))
    wait_status(sup, "root", restarts=AtLeast(1))
    error = sup.snapshot()["root"].last_error
    assert error is not None and "is not listening" in error
    assert all(is_closed(s) for s in servers.built[:-1])


def test_a_factory_returning_no_server_is_a_death(harness: Harness) -> None:
    sup = harness.start(serve(lambda: "not a server"), backoff=SLOW)  # type: ignore[arg-type,return-value]
    wait_status(sup, "root", state=State.DEAD)
    error = sup.snapshot()["root"].last_error
    assert error is not None
    assert error.startswith("TypeError: root: the server factory ")
    assert "not a socketserver.BaseServer" in error


def test_cancellation_racing_the_start_never_deadlocks(harness: Harness) -> None:
    # Stop at once, while the server may be anywhere between its creation and
    # serve_forever(): the stop must always finish, and every server be closed.
    servers = Servers(CrashableServer)
    for _ in range(15):
        sup = harness.supervisor(serve(servers)).start()
        assert sup.stop(10)
        assert sup.snapshot()["root"].state in (State.CANCELLED, State.NEW)
    assert all(is_closed(s) for s in servers.built)


class RecordsHandlers:
    """A server mix-in: ``entered`` receives each handler's thread as it starts."""

    entered: queue.Queue[threading.Thread]


class IdleHandler(socketserver.StreamRequestHandler):
    """Waits for a line that the client never sends: blocked on an idle connection."""

    def handle(self) -> None:
        assert isinstance(self.server, RecordsHandlers)
        self.server.entered.put(threading.current_thread())
        self.rfile.readline()


class IdleHTTPHandler(http.server.BaseHTTPRequestHandler):
    """Waits for a request line that the client never sends."""

    def handle(self) -> None:
        assert isinstance(self.server, RecordsHandlers)
        self.server.entered.put(threading.current_thread())
        super().handle()

    def log_message(self, format: str, *args: object) -> None:
        pass


class ImpatientHandler(IdleHandler):
    """An `IdleHandler` whose connection times out (a StreamRequestHandler attribute)."""

    timeout = 0.2


class IdleTCPServer(RecordsHandlers, socketserver.ThreadingTCPServer):
    def __init__(
        self,
        handler: type[IdleHandler] = IdleHandler,
        *,
        daemon_threads: bool = False,
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.daemon_threads = daemon_threads
        self.entered = queue.Queue()


class IdlePlainTCPServer(RecordsHandlers, socketserver.TCPServer):
    """No mix-in: each request is handled in the serving thread, the node's."""

    def __init__(self, handler: type[IdleHandler] = IdleHandler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.entered = queue.Queue()


class IdleHTTPServer(RecordsHandlers, http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), IdleHTTPHandler)
        self.entered = queue.Queue()


@pytest.mark.parametrize(
    ("make", "stuck_at"),
    [
        pytest.param(IdlePlainTCPServer, "self.rfile.readline()", id="TCPServer"),
        pytest.param(IdleTCPServer, "server.server_close()", id="ThreadingTCPServer"),
        pytest.param(IdleHTTPServer, None, id="ThreadingHTTPServer"),
        pytest.param(lambda: IdleTCPServer(daemon_threads=True), None, id="daemon_threads=True"),
    ],
)
def test_a_handler_blocked_on_an_idle_connection_holds_up_the_node_unless_a_daemon_thread(
    harness: Harness, make: Callable[[], socketserver.BaseServer], stuck_at: str | None
) -> None:
    """A plain TCPServer runs the handler in the node's thread, where serve_forever()
    cannot see the shutdown request; ThreadingMixIn.server_close() joins the handler
    threads that are not daemon threads: those of ThreadingTCPServer
    (daemon_threads=False), not those of ThreadingHTTPServer (daemon_threads=True),
    which outlive the node instead."""
    assert not socketserver.ThreadingTCPServer.daemon_threads
    assert http.server.ThreadingHTTPServer.daemon_threads
    servers = Servers(make)
    sup = harness.start(serve(servers), shutdown_timeout=0.2)
    wait_status(sup, "root", state=State.HEALTHY)
    server = servers.built[0]
    assert isinstance(server, RecordsHandlers)
    with socket.create_connection(("127.0.0.1", servers.port()), timeout=10):
        handler = server.entered.get(timeout=10)
        sup.cancel()
        if stuck_at is not None:  # the node cannot exit: the supervisor reports it stuck
            stuck = harness.logs.wait_for(event="stuck", dn="root")
            assert stuck_at in stuck.getMessage()
            assert sup.snapshot()["root"].running
        else:  # the node exits, its handler still blocked
            assert sup.wait(10)
            assert handler.is_alive()
    # The client has closed the connection: the handler ends, and so does the node.
    handler.join(10)
    assert not handler.is_alive()
    assert sup.wait(10)
    assert sup.snapshot()["root"].state is State.CANCELLED


@pytest.mark.parametrize("make", [IdlePlainTCPServer, IdleTCPServer])
def test_a_handler_timeout_lets_the_node_exit_while_a_client_holds_its_connection(
    harness: Harness, make: Callable[[type[IdleHandler]], socketserver.BaseServer]
) -> None:
    servers = Servers(lambda: make(ImpatientHandler))
    sup = harness.start(serve(servers))
    wait_status(sup, "root", state=State.HEALTHY)
    server = servers.built[0]
    assert isinstance(server, RecordsHandlers)
    with socket.create_connection(("127.0.0.1", servers.port()), timeout=10):
        server.entered.get(timeout=10)
        sup.cancel()
        assert sup.wait(10)  # the connection is still open
        assert sup.snapshot()["root"].state is State.CANCELLED
    # The timeout is a handler error: logged, and the connection closed.
    record = wait_record(
        harness, lambda r: r.getMessage().startswith("error while handling"), "handler timeout"
    )
    assert record.exc_info is not None and isinstance(record.exc_info[1], socket.timeout)


def test_serve_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"socketserver\.BaseServer or a zero-argument factory"):
        serve(42)  # type: ignore[arg-type]
    for bad in (0, -1.0, math.nan, -math.inf):
        with pytest.raises(ValueError, match="poll_interval"):
            serve(http_server, poll_interval=bad)
    with pytest.raises(TypeError, match="poll_interval"):
        serve(http_server, poll_interval="1")  # type: ignore[arg-type]
    assert issubclass(ServeError, ThreadsupError) and issubclass(ServeError, RuntimeError)


# ------------------------------------------------------------------------ command


@posix_only
def test_command_output_goes_line_by_line_to_the_node_logger(harness: Harness) -> None:
    before = open_fds()
    argv = python(
        r"""
        import sys
        print("out 1", flush=True)
        print("err 1", file=sys.stderr, flush=True)
        sys.stdout.write("out 2\r\n")
        sys.stdout.flush()  # before writing around the text layer
        sys.stdout.buffer.write(b"bad \xff byte\n")
        sys.stdout.write("no newline at the end")
        """
    )
    sup = harness.start(command(argv))
    wait_status(sup, "root", state=State.DONE, running=False)
    pid = started_pid(harness)
    lines = [r for r in node_lines(harness) if hasattr(r, "stream")]
    stdout = [r.getMessage() for r in lines if r.stream == "stdout"]
    stderr = [r for r in lines if r.stream == "stderr"]
    assert stdout == ["out 1", "out 2", "bad \ufffd byte", "no newline at the end"]
    assert [r.getMessage() for r in stderr] == ["err 1"]
    assert {r.levelno for r in lines if r.stream == "stdout"} == {logging.INFO}
    assert stderr[0].levelno == logging.WARNING
    assert {r.pid for r in lines} == {pid}  # type: ignore[attr-defined]
    assert is_reaped(pid)
    assert_fds_back_to(before)  # pipes closed


@posix_only
def test_command_levels_env_and_cwd(harness: Harness, tmp_path: Path) -> None:
    argv = python(
        """
        import os, sys
        print(os.environ.get("GREETING"), os.getcwd(), flush=True)
        print("diagnostics", file=sys.stderr)
        """
    )
    env = {**os.environ, "GREETING": "bonjour"}
    runnable = command(argv, env=env, cwd=tmp_path, stdout_level=logging.DEBUG, stderr_level=20)
    sup = harness.start(runnable)
    wait_status(sup, "root", state=State.DONE, running=False)
    out = wait_message(harness, f"bonjour {os.path.realpath(tmp_path)}")
    assert out.levelno == logging.DEBUG
    assert wait_message(harness, "diagnostics").levelno == logging.INFO


@posix_only
def test_a_zero_exit_is_healthy_then_done(harness: Harness) -> None:
    sup = harness.start(command(python("print('work finished')")))
    assert sup.wait(10)  # every node DONE: the supervisor ends by itself
    status = sup.snapshot()["root"]
    assert (status.state, status.restarts, status.last_error) == (State.DONE, 0, None)
    events = [r.event for r in harness.logs.records if getattr(r, "dn", None) == "root"]  # type: ignore[attr-defined]
    assert events.index("healthy") < events.index("done")
    assert wait_message(harness, "work finished")
    wait_record(harness, lambda r: r.getMessage().endswith("exited with status 0"), "exit")


@posix_only
def test_restart_always_makes_a_zero_exit_a_death(harness: Harness) -> None:
    sup = harness.start(command(python("print('once')"), zero_exit="death"))
    wait_status(sup, "root", restarts=AtLeast(2))
    error = sup.snapshot()["root"].last_error
    assert error is not None
    assert re.fullmatch(r"CommandFailed: python\S* exited with status 0; last output: once", error)


@posix_only
def test_healthy_waits_for_the_pattern(harness: Harness, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    argv = python(
        f"""
        import os, time
        print("starting", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.01)
        print("listening on port 1234", flush=True)
        time.sleep(60)
        """
    )
    sup = harness.start(command(argv, healthy=re.compile(r"listening on port \d+")))
    wait_message(harness, "starting")
    assert sup.snapshot()["root"].state is State.NEW
    gate.touch()
    wait_status(sup, "root", state=State.HEALTHY)
    assert sup.stop(10)
    assert sup.snapshot()["root"].state is State.CANCELLED


@posix_only
def test_a_non_zero_exit_is_a_death_with_the_status_and_last_lines(harness: Harness) -> None:
    argv = python(
        """
        import sys
        for i in range(1, 10):
            print(f"line {i}", flush=True)
        print("fatal: no config", file=sys.stderr, flush=True)
        sys.exit(3)
        """
    )
    sup = harness.start(command(argv, tail=3), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD)
    assert status.last_error is not None
    assert re.fullmatch(
        r"CommandFailed: python\S* exited with status 3; "
        r"last output: line 8 \| line 9 \| fatal: no config",
        status.last_error,
    ), status.last_error
    died = harness.logs.wait_for(dn="root", event="died")
    assert died.exc_info is not None
    error = died.exc_info[1]
    assert isinstance(error, CommandFailed)
    assert (error.returncode, error.signal, error.tail) == (
        3,
        None,
        ["line 8", "line 9", "fatal: no config"],
    )
    assert error.argv == argv


@posix_only
def test_the_last_error_keeps_the_newest_output_within_300_characters(
    harness: Harness,
) -> None:
    argv = python(
        """
        import sys
        for i in range(20):
            print(f"{i:02d} " + "x" * 70, flush=True)
        print("the real reason", flush=True)
        sys.exit(1)
        """
    )
    sup = harness.start(command(argv), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD)
    assert status.last_error is not None
    assert len(status.last_error) <= 300
    assert status.last_error.startswith("CommandFailed: python")
    assert " exited with status 1; last output: ..." in status.last_error
    assert status.last_error.endswith(" | the real reason")


@posix_only
def test_killed_by_a_signal(harness: Harness) -> None:
    argv = python(
        """
        import os, signal
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    sup = harness.start(command(argv), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD)
    assert status.last_error is not None
    assert re.fullmatch(
        r"CommandFailed: python\S* was killed by SIGKILL; last output: about to die",
        status.last_error,
    )
    died = harness.logs.wait_for(dn="root", event="died")
    assert died.exc_info is not None and isinstance(died.exc_info[1], CommandFailed)
    assert died.exc_info[1].signal is signal.SIGKILL
    assert is_reaped(started_pid(harness))


@posix_only
def test_cancellation_sends_sigterm_to_the_process_group(harness: Harness) -> None:
    argv = python(
        """
        import signal, sys, time
        def stop(signum, frame):
            print("got", signal.Signals(signum).name, flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    sup = harness.start(command(argv, healthy="^ready$"))
    wait_status(sup, "root", state=State.HEALTHY)
    pid = started_pid(harness)
    started = time.monotonic()
    assert sup.stop(10)
    assert time.monotonic() - started < 3.0
    assert sup.snapshot()["root"].state is State.CANCELLED
    wait_message(harness, "got SIGTERM")
    wait_record(harness, lambda r: "stopped: exited with status 0" in r.getMessage(), "stop")
    assert is_reaped(pid)


@posix_only
def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace_period(
    harness: Harness,
) -> None:
    before = open_fds()
    argv = python(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    grace = 0.3
    sup = harness.start(command(argv, healthy="ready", grace=grace))
    wait_status(sup, "root", state=State.HEALTHY)
    pid = started_pid(harness)
    started = time.monotonic()
    assert sup.stop(10)
    took = time.monotonic() - started
    assert grace <= took < grace + 3.0, took
    assert sup.snapshot()["root"].state is State.CANCELLED
    warning = wait_record(harness, lambda r: "sent SIGKILL" in r.getMessage(), "SIGKILL")
    assert warning.levelno == logging.WARNING
    wait_record(harness, lambda r: r.getMessage().endswith("was killed by SIGKILL"), "exit")
    assert is_reaped(pid)
    assert_fds_back_to(before)


@posix_only
def test_leftover_processes_of_the_group_are_killed_when_the_program_exits(
    harness: Harness,
) -> None:
    # The grandchild inherits the pipes: without the group kill, reading would never end.
    argv = python(
        """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", child.pid, flush=True)
        sys.exit(2)
        """
    )
    sup = harness.start(command(argv), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD, running=False, timeout=5.0)
    assert status.last_error is not None and "exited with status 2" in status.last_error
    record = wait_record(harness, lambda r: r.getMessage().startswith("grandchild "), "pid")
    grandchild = int(record.getMessage().split()[1])
    wait_until(lambda: process_gone(grandchild), 5.0, "the grandchild killed")
    assert is_reaped(started_pid(harness))


@posix_only
def test_a_process_escaping_the_group_cannot_hold_the_node(harness: Harness) -> None:
    # A grandchild in a session of its own keeps the pipes open: the node stops
    # reading them after a bounded wait rather than hang or leak its reader.
    argv = python(
        """
        import subprocess, sys
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
        )
        print("escaped", child.pid, flush=True)
        sys.exit(1)
        """
    )
    before = open_fds()
    sup = harness.start(command(argv), backoff=SLOW)
    escaped: int | None = None
    try:
        record = wait_record(harness, lambda r: r.getMessage().startswith("escaped "), "pid")
        escaped = int(record.getMessage().split()[1])
        status = wait_status(sup, "root", state=State.DEAD, running=False, timeout=8.0)
        assert status.last_error is not None and "exited with status 1" in status.last_error
        wait_record(harness, lambda r: "stopped reading them" in r.getMessage(), "warning")
        assert sup.stop(10)
        assert_fds_back_to(before)
    finally:
        if escaped is not None:
            try:
                os.kill(escaped, signal.SIGKILL)
            except ProcessLookupError:
                pass


@posix_only
def test_a_failing_reader_kills_and_reaps_the_program(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever goes wrong in the helper threads, the program does not outlive its run.
    def broken(self: object, stream: str, raw: bytes) -> None:
        raise UnicodeError("the reader broke")

    monkeypatch.setattr(_command._Run, "_line", broken)
    argv = python(
        """
        import time
        print("hello", flush=True)
        time.sleep(60)
        """
    )
    before = open_fds()
    sup = harness.start(command(argv), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD, running=False)
    assert status.last_error == "UnicodeError: the reader broke"
    assert is_reaped(started_pid(harness))
    assert_fds_back_to(before)


@posix_only
@pytest.mark.parametrize("role", ["waiter", "output"])
def test_a_helper_thread_that_cannot_start_kills_reaps_and_closes_everything(
    harness: Harness, start_faults: StartFaults, role: str
) -> None:
    # The program runs already when its helper threads start: a failed start is a
    # death that leaves no process, zombie or pipe behind, and no node stuck NEW.
    start_faults.rule = lambda thread: thread.name == f"root {role}"
    before = open_fds()
    sup = harness.start(command(python("import time; time.sleep(60)")), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD, running=False)
    assert start_faults.failed == [f"root {role}"]
    pid = started_pid(harness)
    assert status.last_error == (
        f"RuntimeError: root: could not start the {role} thread of "
        f"{os.path.basename(sys.executable)} (pid {pid}), so the program was killed: "
        "can't start new thread"
    )
    died = harness.logs.wait_for(dn="root", event="died")
    assert died.exc_info is not None
    cause = died.exc_info[1].__cause__ if died.exc_info[1] is not None else None
    assert isinstance(cause, RuntimeError) and str(cause) == "can't start new thread"
    assert is_reaped(pid)
    assert_fds_back_to(before)
    assert sup.stop(10)


@posix_only
def test_a_command_node_heals_once_its_helper_threads_can_start_again(
    harness: Harness, start_faults: StartFaults
) -> None:
    # Two incarnations lose their waiter thread, the next two their output thread.
    def rule(thread: threading.Thread) -> bool:
        failed = len(start_faults.failed)
        return (thread.name == "root waiter" and failed < 2) or (
            thread.name == "root output" and 2 <= failed < 4
        )

    start_faults.rule = rule
    before = open_fds()
    argv = python("import time; print('ready', flush=True); time.sleep(60)")
    sup = harness.start(command(argv, healthy="^ready$"), backoff=Backoff(initial=0.01, jitter=0))
    status = wait_status(sup, "root", state=State.HEALTHY, restarts=4)
    assert start_faults.failed == ["root waiter", "root waiter", "root output", "root output"]
    assert status.last_error is not None and "the output thread" in status.last_error
    pids = [started_pid(harness, index=i) for i in range(5)]
    assert all(is_reaped(pid) for pid in pids[:4])
    assert sup.stop(10)
    assert sup.snapshot()["root"].state is State.CANCELLED
    assert is_reaped(pids[4])
    assert_fds_back_to(before)


@posix_only
def test_a_program_that_does_not_exist_is_a_death_with_a_clear_error(
    harness: Harness, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-program")
    sup = harness.start(command([missing, "--help"]), backoff=SLOW)
    status = wait_status(sup, "root", state=State.DEAD)
    assert (
        status.last_error
        == f"FileNotFoundError: [Errno {errno.ENOENT}] No such file or directory: {missing!r}"
    )


@posix_only
def test_command_restarts_run_the_program_again(harness: Harness) -> None:
    argv = python("import sys; print('run'); sys.exit(5)")
    sup = harness.start(command(argv))
    # Three programs started (a restart count alone races the third spawn).
    pids = {started_pid(harness, index=i) for i in range(3)}
    assert sup.stop(10)
    assert len(pids) == 3
    assert all(is_reaped(pid) for pid in pids)


def test_command_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="sequence of arguments"):
        command("ls -l")  # a str is a sequence, but not of arguments
    with pytest.raises(ValueError, match="at least the program"):
        command([])
    with pytest.raises(TypeError, match="str or path-like"):
        command(["ls", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="grace"):
        command(["ls"], grace=-1)
    with pytest.raises(ValueError, match="tail"):
        command(["ls"], tail=-1)
    with pytest.raises(TypeError, match="healthy"):
        command(["ls"], healthy=re.compile(b"ready"))  # type: ignore[arg-type]
    with pytest.raises(re.error):
        command(["ls"], healthy="(unbalanced")
    with pytest.raises(ValueError, match="zero_exit"):
        command(["ls"], zero_exit="never")  # type: ignore[arg-type]
    with pytest.raises(LookupError):
        command(["ls"], encoding="no-such-codec")
    with pytest.raises(TypeError, match="stderr_level"):
        command(["ls"], stderr_level="WARNING")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"env": {"A": 1}}, TypeError, "env['A'] of command() must be a str or path-like, not 1"),
        ({"env": {"A": "x\0y"}}, ValueError, "env['A'] of command() holds a NUL character"),
        ({"env": {1: "x"}}, TypeError, "env of command(): the variable name 1 is not a str"),
        ({"env": {b"A": "x"}}, TypeError, "env of command(): the variable name b'A' is not"),
        ({"env": {"A=B": "x"}}, ValueError, "env of command(): 'A=B' is not a variable name"),
        ({"env": {"": "x"}}, ValueError, "env of command(): '' is not a variable name"),
        ({"env": {"A\0": "x"}}, ValueError, "env of command(): 'A\\x00' is not a variable"),
        ({"env": ["A=1"]}, TypeError, "env of command() must be a mapping"),
        ({"cwd": 3}, TypeError, "cwd of command() must be a str or path-like, not 3"),
        ({"cwd": b"/tmp"}, TypeError, "cwd of command() must be a str or path-like"),
        ({"cwd": "/tmp\0x"}, ValueError, "cwd of command() holds a NUL character"),
        ({"argv": ["ls", "a\0b"]}, ValueError, "argv[1] of command() holds a NUL character"),
    ],
)
def test_command_checks_env_cwd_and_argv_at_the_call(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Else every incarnation would die of it, for ever, with an error naming none of them.
    argv = kwargs.pop("argv", ["ls"])
    with pytest.raises(error) as raised:
        command(argv, **kwargs)
    assert type(raised.value) is error
    assert str(raised.value).startswith(message), str(raised.value)


def test_command_takes_any_mapping_and_paths_for_env_and_cwd(tmp_path: Path) -> None:
    command(["ls", tmp_path], env=os.environ, cwd=tmp_path)
    command(["ls"], env=types.MappingProxyType({"HOME": tmp_path}))


# ----------------------------------------------------------------------- periodic


class Calls:
    """Records the monotonic time of each call of a periodic fn."""

    def __init__(self, fn: Callable[[int, CancelToken], object] | None = None) -> None:
        self.fn = fn
        self.times: list[float] = []
        self.cond = threading.Condition()

    def __call__(self, token: CancelToken) -> None:
        with self.cond:
            self.times.append(time.monotonic())
            index = len(self.times) - 1
            self.cond.notify_all()
        if self.fn is not None:
            self.fn(index, token)

    def wait_count(self, n: int, timeout: float = 10.0) -> list[float]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.times) >= n, timeout), self.times
            return list(self.times)


def test_periodic_ticks_on_a_drift_free_grid(harness: Harness) -> None:
    interval = 0.05
    calls = Calls(lambda i, t: time.sleep(0.01))  # work that takes time must not shift the grid
    sup = harness.start(periodic(interval, calls))
    times = calls.wait_count(8)
    start = times[0]
    for k, at in enumerate(times[:8]):
        assert at >= start + k * interval - 0.01, (k, at - start)  # never early
    # Over a bounded run, no more calls than the grid allows: no bunching.
    count = len(calls.times)
    time_after = time.monotonic()
    assert count <= math.floor((time_after - start + 0.01) / interval) + 1
    assert sup.snapshot()["root"].state is State.HEALTHY


def test_periodic_skips_the_ticks_a_slow_call_missed(harness: Harness) -> None:
    interval = 0.1
    calls = Calls(lambda i, t: time.sleep(2.5 * interval) if i == 0 else None)
    harness.start(periodic(interval, calls))
    first, second, third = calls.wait_count(3)[:3]
    # Call 0 ran 0.25 s: ticks 1 and 2 are skipped, call 1 is due at tick 3 (0.3 s).
    assert second - first >= 3 * interval - 0.01
    assert third - first >= 4 * interval - 0.01
    warning = wait_record(harness, lambda r: "skipped" in r.getMessage(), "overrun warning")
    assert warning.levelno == logging.WARNING
    assert warning.skipped == 2  # type: ignore[attr-defined]


def test_periodic_is_healthy_after_the_first_success(harness: Harness) -> None:
    release = harness.gate()
    calls = Calls(lambda i, t: release.wait(10) if i == 0 else None)
    sup = harness.start(periodic(0.05, calls))
    calls.wait_count(1)
    assert sup.snapshot()["root"].state is State.NEW
    release.set()
    wait_status(sup, "root", state=State.HEALTHY)


def test_a_failing_call_is_a_death_and_restarts_on_a_fresh_schedule(harness: Harness) -> None:
    def fn(index: int, token: CancelToken) -> None:
        if index == 1:
            raise ValueError("disk full")

    calls = Calls(fn)
    sup = harness.start(periodic(0.02, calls))
    wait_status(sup, "root", restarts=1, state=State.HEALTHY)
    status = sup.snapshot()["root"]
    assert status.last_error == "ValueError: disk full"
    assert len(calls.times) >= 3


def test_cancellation_wakes_periodic_at_once(harness: Harness) -> None:
    calls = Calls()
    sup = harness.start(periodic(3600.0, calls))
    wait_status(sup, "root", state=State.HEALTHY)
    started = time.monotonic()
    assert sup.stop(10)
    assert time.monotonic() - started < 5.0  # not the hour of the next call
    assert sup.snapshot()["root"].state is State.CANCELLED
    assert len(calls.times) == 1


def test_periodic_rejects_bad_arguments() -> None:
    for bad in (0, -1, math.nan, -math.inf):
        with pytest.raises(ValueError, match="interval"):
            periodic(bad, print)
    for wrong in ("1", None, True):
        with pytest.raises(TypeError, match="interval"):
            periodic(wrong, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        periodic(1.0, "tick")  # type: ignore[arg-type]


def test_periodic_refuses_an_interval_below_its_minimum() -> None:
    # periodic(1e-9, fn) missed every tick and logged a WARNING for each call.
    assert support.MIN_INTERVAL == 0.001
    for bad in (1e-9, 0.000999):
        with pytest.raises(
            ValueError, match=r"^interval of periodic\(\) must be at least 0\.001 s"
        ):
            periodic(bad, print)
    periodic(support.MIN_INTERVAL, print)


# ------------------------------------------------------------------------- shared


def test_the_runnables_work_with_a_plain_supervisor() -> None:
    # No harness: the public API only, as the README shows it.
    ticks: list[int] = []
    servers = Servers(CrashableServer)

    def root(token: CancelToken) -> None:
        token.run("echo", serve(servers))
        token.run("tick", periodic(0.01, lambda t: ticks.append(1)))
        token.signal(Signal.HEALTHY)
        token.wait()

    logger = logging.getLogger("threadsup_test.support_plain")
    logger.addHandler(logging.NullHandler())
    with Supervisor(root, logger=logger) as sup:
        wait_status(sup, "root.echo", state=State.HEALTHY)
        wait_status(sup, "root.tick", state=State.HEALTHY)
        assert echo(servers.port()) == b"hello\n"
    assert {s.state for s in sup.snapshot().values()} == {State.CANCELLED}


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    """Every child a test started has been reaped by the end of it."""
    yield
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    assert pid == 0 or pid is None, f"an unreaped child: {pid}"
