"""The status server: a running tree over HTTP, for people and for probes.

``StatusServer(sup).start()`` serves, from threads of its own, on loopback
unless told otherwise, and read-only:

=================  ====================================================================
``/``              a live page of the tree (one self-contained HTML file, no outside
                   resource), refreshed every second from ``/tree.json``
``/tree.json``     the snapshot: every `NodeStatus` field of every node
``/logs/<dn>``     the node's recent log records (`Supervisor.logs`)
``/healthz``       200 while the tree runs and its root has not given up, else 503
``/readyz``        200 when `Supervisor.ready`, else 503 naming the nodes not ready
``/metrics``       the Prometheus text format, with ``threadsup[prometheus]`` installed
=================  ====================================================================

Each connection gets a thread of its own, up to ``max_connections`` at once
(more are answered 503 and closed), and at most ``timeout`` seconds, however
slowly its client sends or reads: a slow or malicious client cannot hold the
page up for long. A request's head (request line and headers) is limited to
`MAX_HEAD` bytes. Handlers read the tree through `Supervisor.snapshot` and the
like, which hold the tree's lock only to copy. Requests are logged at DEBUG on
the logger ``<base>.status``, never on stderr.

Also the client side of ``python -m threadsup status URL``: `fetch_snapshot`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import http.client
import http.server
import importlib
import importlib.resources
import io
import ipaddress
import json
import logging
import math
import re
import selectors
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from types import TracebackType
from typing import Any, Callable, NamedTuple

from threadsup._errors import AlreadyStarted, ThreadsupError, UnknownNode
from threadsup._logs import JsonFormatter
from threadsup._node import NodeStatus, State
from threadsup._seconds import check_seconds, deadline_after, remaining
from threadsup._supervisor import Supervisor

#: How long a connection may last, from its accept to its close, by default.
TIMEOUT = 10.0
#: How many connections are served at once by default; more are answered 503.
MAX_CONNECTIONS = 32
#: The most bytes a request's head may take, request line and headers together
#: (`http.server` bounds each line to 64 KiB and the headers to 100, not their sum).
MAX_HEAD = 64 * 1024
#: How long `StatusServer.close` waits for its threads.
CLOSE_TIMEOUT = 5.0

#: The DNs ``/logs/<dn>`` takes: ``root`` and dotted names below it.
_DN = re.compile(r"root(?:\.[a-z0-9_]{1,64})*")
_PIP = "pip install 'threadsup[prometheus]'"
_ROUTES = "/, /tree.json, /logs/<dn>, /healthz, /readyz, /metrics"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"

_Metrics = Callable[[], tuple[bytes, str]]


class ListenError(ThreadsupError, OSError):
    """`StatusServer.start` cannot listen on its address: in use, not an
    address of this machine, or a port the process may not use."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) as ``(host, port)``; `ValueError`
    saying what is wrong otherwise. Port 0 picks a free port."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"expected HOST:PORT with a port from 0 to 65535, like 127.0.0.1:8000, not {text!r}"
        )
    return host, int(port)


class StatusServer:
    """Serves ``sup``'s status over HTTP on ``host``:``port`` (0: a free port).

    ``start`` binds and starts serving; `url` is then its base URL, such as
    ``http://127.0.0.1:8000``. ``close`` stops it. As a context manager it
    starts on entry and closes on exit. It may start before the supervisor
    and outlive it (``/healthz`` then says 503).

    ``timeout`` bounds each connection's life, ``max_connections`` how many
    are served at once. Bound to a loopback address, it answers only requests
    whose ``Host`` header names a loopback address or ``localhost`` (so that a
    web page cannot read it through DNS rebinding).
    """

    def __init__(
        self,
        sup: Supervisor,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not isinstance(sup, Supervisor):
            raise TypeError(f"StatusServer serves a threadsup.Supervisor, not {sup!r}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str such as '127.0.0.1', not {host!r}")
        if not host or host != host.strip():
            raise ValueError(f"host must be a name or an address such as '127.0.0.1', not {host!r}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int from 0 to 65535, not {port!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be from 0 (a free port) to 65535, not {port}")
        timeout = check_seconds("timeout of StatusServer()", timeout)
        if timeout == 0 or math.isinf(timeout):
            raise ValueError(f"timeout of StatusServer() must be finite and above 0, not {timeout}")
        if not isinstance(max_connections, int) or isinstance(max_connections, bool):
            raise TypeError(f"max_connections must be an int, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be 1 or more, not {max_connections}")
        self._sup = sup
        self._host = host
        self._port = port
        self._timeout = timeout
        self._max_connections = max_connections
        self._logger = logging.getLogger(f"{sup._tree.events.base.name}.status")
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._closed = False

    def __repr__(self) -> str:
        server = self._server
        where = f"{self._host}:{self._port}" if server is None else self.url
        phase = "closed" if self._closed else "not started" if server is None else "serving"
        return f"<StatusServer {where} {phase}>"

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:8000``, once started."""
        server = self._server
        if server is None:
            raise RuntimeError("the StatusServer has no URL before start(): call start() first")
        return server.url

    def start(self) -> StatusServer:
        """Listen and serve; `ListenError` (an `OSError`) naming the address
        when it cannot listen. A second call raises `AlreadyStarted`."""
        with self._lock:
            if self._server is not None or self._closed:
                raise AlreadyStarted(
                    "this StatusServer was already started; create a new one to serve again"
                )
            server = _Server(self, self._host, self._port, _metrics(self._sup))
            try:
                server.serve_in_thread()
            except BaseException:  # no thread to be had
                server.server_close()
                raise
            self._server = server
        self._logger.info("status page on %s/", self.url)
        return self

    def close(self) -> None:
        """Stop serving: close the listening socket and every connection, and
        join the server's threads (for up to `CLOSE_TIMEOUT` s; a WARNING
        names any left). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server = self._server
        if server is None:
            return
        left = server.stop(CLOSE_TIMEOUT)
        if left:
            self._logger.warning(
                "the status server closed with %d threads still running: %s",
                len(left),
                ", ".join(thread.name for thread in left),
            )
        else:
            self._logger.debug("status server %s closed", server.url)

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # What the routes say, each a status and a body.

    def _health(self) -> tuple[int, dict[str, Any]]:
        alive, status = self._sup._liveness()
        return (200 if alive else 503), {"alive": alive, "status": status}

    def _readiness(self) -> tuple[int, dict[str, Any]]:
        ready, dns = self._sup._readiness()
        return (200 if ready else 503), {"ready": ready, "not_ready": dns}

    def _tree(self) -> dict[str, Any]:
        snapshot = self._sup.snapshot()
        wall = time.time()
        alive, _ = self._sup._liveness()
        ready, _ = self._sup._readiness()
        return {
            "time": wall,
            "alive": alive,
            "ready": ready,
            "nodes": [status_to_json(status) for status in snapshot.values()],
        }

    def _logs(self, dn: str) -> dict[str, Any]:
        """`UnknownNode` for a DN not in the tree."""
        formatter = JsonFormatter(self._sup._tree.events.base.name)
        records = [json.loads(formatter.format(record)) for record in self._sup.logs(dn)]
        return {"dn": dn, "records": records}


# ------------------------------------------------------------------ the JSON of a status


def status_to_json(status: NodeStatus) -> dict[str, Any]:
    """``status`` as JSON can hold it: every field by name, the state by its
    name, the group as a list, and an infinite time (a restart that will never
    come) as the string ``"inf"``."""
    return {
        field.name: _to_json(getattr(status, field.name)) for field in dataclasses.fields(status)
    }


def _to_json(value: object) -> object:
    if isinstance(value, State):
        return value.name
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no infinity; JavaScript's JSON.parse rejects Infinity
    return value


_FIELDS = {field.name: field for field in dataclasses.fields(NodeStatus)}
_NONE = type(None)
_TIME = (float, int, _NONE)
#: What JSON gives each field, for `status_from_json` (a field missing here is
#: taken as it comes).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "dn": (str,),
    "state": (str,),
    "running": (bool,),
    "restarts": (int,),
    "last_error": (str, _NONE),
    "stuck_for": _TIME,
    "abandoned": (int,),
    "restart": (str,),
    "group": (list,),
    "started_at": _TIME,
    "healthy_since": _TIME,
    "next_restart_at": _TIME,
    "gave_up": (str, _NONE),
    "dynamic": (bool,),
}


def status_from_json(data: object) -> NodeStatus:
    """The `NodeStatus` that `status_to_json` wrote; `ValueError` when ``data``
    is not one. Fields it does not know (from a newer threadsup) are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"a node's status is a JSON object, not {data!r}")
    values: dict[str, Any] = {}
    for name, field in _FIELDS.items():
        if name not in data:
            if field.default is dataclasses.MISSING:
                raise ValueError(f"a node's status has a {name!r}, but not {data!r}")
            continue
        value = data[name]
        kinds = _JSON_TYPES.get(name, (object,))
        if isinstance(value, str) and float in kinds:
            value = _float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"a node's {name!r} cannot be {value!r}: {data!r}")
        values[name] = value
    if values["state"] not in State.__members__:
        raise ValueError(f"a node's 'state' cannot be {values['state']!r}: {data!r}")
    values["state"] = State[values["state"]]
    values["group"] = tuple(values.get("group", ()))
    return NodeStatus(**values)


def _float(text: str) -> float | str:
    """``text`` as a float (``"inf"``), or as it is for the caller to reject."""
    try:
        return float(text)
    except ValueError:
        return text


def fetch_snapshot(url: str, timeout: float = 5.0) -> tuple[dict[str, NodeStatus], float]:
    """The snapshot a status server at ``url`` (its base URL, or its
    ``/tree.json``) serves, and the server's `time.time` when it took it: what
    ``python -m threadsup status`` draws. `OSError` when it cannot be had,
    `ValueError` when the answer is not a tree."""
    tree_url = tree_json_url(url)
    try:
        with urllib.request.urlopen(tree_url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise OSError(f"{tree_url} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {tree_url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise OSError(f"cannot read {tree_url}: {exc or type(exc).__name__}") from None
    try:
        tree = json.loads(body)
        nodes = [status_from_json(node) for node in tree["nodes"]]
        wall = float(tree["time"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{tree_url} is not a threadsup status server's tree: {exc}") from None
    return {status.dn: status for status in nodes}, wall


def tree_json_url(url: str) -> str:
    """``url``'s ``/tree.json``: ``http://`` is assumed without a scheme."""
    if "://" not in url:
        url = f"http://{url}"
    if urllib.parse.urlsplit(url).path.endswith("/tree.json"):
        return url
    return url.rstrip("/") + "/tree.json"


# ------------------------------------------------------------------ metrics


def _metrics(sup: Supervisor) -> _Metrics | None:
    """What /metrics serves, or ``None`` without prometheus_client."""
    # Imported by name: prometheus_client is an optional extra, and its
    # threadsup collector imports it.
    try:
        prometheus_client = importlib.import_module("prometheus_client")
        collector = importlib.import_module("threadsup.prometheus")
    except ImportError:
        return None
    registry = prometheus_client.CollectorRegistry()
    collector.register(sup, registry)

    def exposition() -> tuple[bytes, str]:
        body: bytes = prometheus_client.generate_latest(registry)
        return body, str(prometheus_client.CONTENT_TYPE_LATEST)

    return exposition


# ------------------------------------------------------------------ the page


@functools.cache
def _page() -> tuple[bytes, str]:
    """The page, and its Content-Security-Policy: nothing but its own inline
    style and script (by their hashes) and requests to this server."""
    html = importlib.resources.files("threadsup").joinpath("status.html").read_text("utf-8")

    def hashes(tag: str) -> str:
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
            for body in re.findall(f"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html.encode(), policy


# ------------------------------------------------------------------ HTTP


class _Head(io.BufferedIOBase):
    """A request's head read through a budget of bytes: past it, the line read
    raises `http.client.LineTooLong`, which `http.server` answers with 431."""

    def __init__(self, raw: io.BufferedIOBase, budget: int) -> None:
        super().__init__()
        self._raw = raw
        self._left = budget

    def readline(self, size: int | None = -1) -> bytes:
        asked = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        line = self._raw.readline(asked)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"request head over {MAX_HEAD} bytes")
        return line


class _Response(NamedTuple):
    code: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(code: int, value: object) -> _Response:
    return _Response(
        code, _JSON, json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    )


def _error(code: int, explain: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    """One line of text: ``404 Not Found: no node 'root.x' in the tree``."""
    line = f"{code} {HTTPStatus(code).phrase}: {explain}\n"
    return _Response(code, _TEXT, line.encode(errors="replace"), headers)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection: one request (HTTP/1.0), then the connection closes."""

    server: _Server
    raw_requestline: bytes  # set by handle_one_request; typeshed omits it
    server_version = "threadsup"
    sys_version = ""

    def parse_request(self) -> bool:
        raw = self.rfile
        self.rfile = _Head(raw, MAX_HEAD - len(self.raw_requestline))
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = raw
        if self.command not in ("GET", "HEAD"):
            self._send(
                _error(
                    405,
                    f"{self.command}: this server is read-only; use GET or HEAD",
                    (("Allow", "GET, HEAD"),),
                )
            )
            return False
        host = self.headers.get("Host")
        if host is not None and not self.server.host_allowed(host):
            self._send(_error(403, f"Host {host!r} is not a loopback address"))
            return False
        return True

    def do_GET(self) -> None:
        self._send(self._respond())

    def do_HEAD(self) -> None:
        self._send(self._respond())

    def _respond(self) -> _Response:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        status = self.server.status
        try:
            if path == "/":
                page, policy = _page()
                return _Response(
                    200, "text/html; charset=utf-8", page, (("Content-Security-Policy", policy),)
                )
            if path == "/healthz":
                return _json(*status._health())
            if path == "/readyz":
                return _json(*status._readiness())
            if path == "/tree.json":
                return _json(200, status._tree())
            if path.startswith("/logs/"):
                return self._logs(path[len("/logs/") :])
            if path == "/metrics":
                return self._metrics()
            return _error(404, f"no page {path!r}: there are {_ROUTES}")
        except Exception:
            status._logger.exception("the status server failed on %s %s", self.command, self.path)
            return _error(500, "the status server failed: see its log")

    def _logs(self, dn: str) -> _Response:
        if _DN.fullmatch(dn) is None:
            return _error(404, f"{dn!r} is not a DN such as root.db")
        try:
            return _json(200, self.server.status._logs(dn))
        except UnknownNode:
            return _error(404, f"no node {dn!r} in the tree")

    def _metrics(self) -> _Response:
        metrics = self.server.metrics
        if metrics is None:
            return _error(404, f"/metrics needs prometheus_client: {_PIP}")
        body, content_type = metrics()
        return _Response(200, content_type, body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """For `http.server`'s own errors (a bad request line, a head too long):
        one line of text instead of its HTML page."""
        self.close_connection = True
        self._send(_error(code, explain or message or HTTPStatus(code).description))

    def _send(self, response: _Response) -> None:
        self.send_response(response.code)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.status._logger.debug("%s %s", self.address_string(), format % args)


class _Server(http.server.HTTPServer):
    """An HTTP server with a thread per connection, which it bounds, times out
    and joins (`socketserver.ThreadingMixIn` does none of these), and a loop
    that sleeps until a connection or a deadline comes (`serve_forever` wakes
    every half second): no CPU while nobody looks, and an immediate `stop`."""

    #: The listen backlog (socketserver's 5 drops the connections of a burst,
    #: whose clients then retry only a second later).
    request_queue_size = 128

    def __init__(
        self, status: StatusServer, host: str, port: int, metrics: _Metrics | None
    ) -> None:
        self.status = status
        self.metrics = metrics
        self.address_family = _family(host)
        # Binds in server_bind, below: first the socket, so that it can be closed.
        super().__init__((host, port), _Handler, bind_and_activate=False)
        try:
            try:
                self.server_bind()
                self.server_activate()
            except OSError as exc:
                raise ListenError(
                    f"the status server cannot listen on {_netloc(host, port)}: "
                    f"{exc.strerror or exc}"
                ) from exc
            self._wake_receive, self._wake_send = socket.socketpair()
        except BaseException:
            self.socket.close()
            raise
        bound_port: int = self.socket.getsockname()[1]
        self.url = f"http://{_netloc(host, bound_port)}"
        self._allowed_hosts = _loopback_hosts(host, bound_port)
        self._name = f"threadsup-status-{bound_port}"
        self._slots = threading.BoundedSemaphore(status._max_connections)
        self._lock = threading.Lock()
        #: Open connections, and when each must be over (`time.monotonic`);
        #: infinity once shut down for being late.
        self._deadlines: dict[socket.socket, float] = {}
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)

    def server_bind(self) -> None:
        # Not HTTPServer's: it looks up the host's fully qualified name, which can
        # wait on DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)

    def host_allowed(self, host: str) -> bool:
        return self._allowed_hosts is None or host.lower() in self._allowed_hosts

    def serve_in_thread(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_receive, selectors.EVENT_READ)
            while True:
                events = selector.select(self._until_next_deadline())
                if self._stopping:
                    return
                if any(key.fileobj is self.socket for key, _ in events):
                    try:
                        request, address = self.socket.accept()
                    except OSError:  # the client gave up meanwhile
                        pass
                    else:
                        self.process_request(request, address)
                self._reap()

    def _until_next_deadline(self) -> float | None:
        with self._lock:
            next_deadline = min(self._deadlines.values(), default=math.inf)
        if next_deadline == math.inf:
            return None
        return max(0.0, next_deadline - time.monotonic())

    def _reap(self) -> None:
        """Shut down the connections past their deadline: their threads, woken
        from whatever read or write held them, end."""
        now = time.monotonic()
        with self._lock:
            for sock, deadline in self._deadlines.items():
                if deadline <= now:
                    _shutdown(sock)
                    self._deadlines[sock] = math.inf

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        request.settimeout(self.status._timeout)
        thread = threading.Thread(
            target=self._connection,
            args=(request, client_address),
            name=f"{self._name}-client",
            daemon=True,
        )
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)
            self._deadlines[request] = time.monotonic() + self.status._timeout
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the client gets nothing
            self.status._logger.warning(
                "the status server cannot start a thread for a connection", exc_info=True
            )
            with self._lock:
                self._threads.discard(thread)
            self._end(request)

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 at once, without a thread: the server is at its limit."""
        body = b"503 Service Unavailable: too many connections; retry later\n"
        head = (
            f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: {_TEXT}\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\n\r\n"
        )
        try:
            request.setblocking(False)
            # Read what the client sent: closing a socket with unread input
            # resets the connection, and the client might lose the answer.
            while len(request.recv(MAX_HEAD)) == MAX_HEAD:
                pass
        except OSError:  # nothing more to read now
            pass
        try:
            request.send(head.encode() + body)  # a new socket's buffer takes it whole
        except OSError:
            pass
        self.status._logger.debug(
            "refused a connection: %d connections open already", self.status._max_connections
        )
        self.shutdown_request(request)

    def _connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._end(request)

    def _end(self, request: socket.socket) -> None:
        # Under the lock: `_reap` must never shut down a socket closed meanwhile,
        # whose descriptor another thread may have been given.
        with self._lock:
            del self._deadlines[request]
            self.shutdown_request(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log, not print (`socketserver` prints to stderr): a client that went
        away, or was cut off at its deadline, is routine."""
        self.status._logger.debug("the connection from %s failed", client_address, exc_info=True)

    def stop(self, timeout: float) -> list[threading.Thread]:
        """Stop the loop, close the listening socket and every connection, and
        join the threads; those still alive after ``timeout`` s."""
        self._stopping = True
        try:
            self._wake_send.send(b"\0")
        except OSError:  # full: the loop is awake already
            pass
        until = deadline_after(timeout)
        if self._thread.is_alive():
            self._thread.join(remaining(until))
        self.server_close()
        with self._lock:
            for sock in self._deadlines:
                _shutdown(sock)
            threads = list(self._threads)
        for thread in threads:
            thread.join(remaining(until))
        return [thread for thread in [self._thread, *threads] if thread.is_alive()]

    def server_close(self) -> None:
        super().server_close()
        self._wake_receive.close()
        self._wake_send.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # the client closed it already
        pass


def _family(host: str) -> socket.AddressFamily:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name: IPv4, as http.server does
        return socket.AF_INET
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _bracketed(host: str) -> str:
    """``host`` as a URL holds it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _netloc(host: str, port: int) -> str:
    return f"{_bracketed(host)}:{port}"


def _loopback_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` headers a server bound to ``host`` answers: for a loopback
    address, only loopback names; otherwise any (``None``)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    names = ("localhost", "127.0.0.1", "[::1]", _bracketed(host).lower())
    return frozenset(name for base in names for name in (base, f"{base}:{port}"))
