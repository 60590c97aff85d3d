"""threadsup.status.StatusServer: every route over real HTTP on loopback, and
the server's defences against slow and malicious clients."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import threadsup
from threadsup import AlreadyStarted, Backoff, CancelToken, NodeStatus, Signal, State, Supervisor
from threadsup._render import render_tree
from threadsup.status import (
    MAX_HEAD,
    ListenError,
    StatusServer,
    fetch_snapshot,
    parse_address,
    status_from_json,
    status_to_json,
    tree_json_url,
)
from threadsup.testing import (
    AtLeast,
    Harness,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_status,
    wait_until,
)

#: A backoff that keeps a DEAD node DEAD for the whole test.
NEVER_SOON = Backoff(initial=3600.0, maximum=3600.0, jitter=0.0)


class Answer(NamedTuple):
    code: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self
        return json.loads(self.body)

    @property
    def text(self) -> str:
        assert self.headers["Content-Type"] == "text/plain; charset=utf-8", self
        return self.body.decode()


def get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read())


def raw(server: StatusServer, request: bytes) -> bytes:
    """Send ``request`` as is on a fresh connection; the whole answer."""
    host, port = parse_address(server.url.removeprefix("http://"))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (up to the socket's timeout) for the server to close ``sock``."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def status_threads(port: int) -> list[str]:
    """The names of the threads of the status server on ``port``."""
    return [t.name for t in threading.enumerate() if t.name.startswith(f"threadsup-status-{port}")]


@pytest.fixture
def serve() -> Iterator[Callable[..., StatusServer]]:
    """Start status servers that the test's end closes (before the harness
    stops the supervisors)."""
    servers: list[StatusServer] = []

    def start(sup: Supervisor, **options: Any) -> StatusServer:
        server = StatusServer(sup, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def two_workers(token: CancelToken) -> None:
    token.run("db", healthy_until_cancelled)
    token.run_group({"web": healthy_until_cancelled, "cache": healthy_until_cancelled})
    token.signal(Signal.HEALTHY)
    token.wait()


def settled_tree(harness: Harness) -> Supervisor:
    sup = harness.start(two_workers)
    for dn in ("root", "root.db", "root.web", "root.cache"):
        wait_status(sup, dn, state=State.HEALTHY)
    return sup


# ------------------------------------------------------------------ routes


def test_probes_and_tree_of_a_running_tree(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    sup = settled_tree(harness)
    server = serve(sup)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    health = get(f"{server.url}/healthz")
    assert (health.code, health.json()) == (200, {"alive": True, "status": "running"})
    ready = get(f"{server.url}/readyz")
    assert (ready.code, ready.json()) == (200, {"ready": True, "not_ready": []})

    before = time.time()
    tree = get(f"{server.url}/tree.json")
    assert tree.code == 200 and tree.headers["Cache-Control"] == "no-store"
    body = tree.json()
    assert set(body) == {"time", "alive", "ready", "nodes"}
    assert before <= body["time"] <= time.time() and body["alive"] and body["ready"]
    snapshot = sup.snapshot()
    assert [node["dn"] for node in body["nodes"]] == list(snapshot)  # parents first
    fields = [field.name for field in dataclasses.fields(NodeStatus)]
    for node in body["nodes"]:
        assert list(node) == fields
        status = snapshot[node["dn"]]
        assert node["state"] == status.state.name == "HEALTHY"
        assert node["group"] == list(status.group)
        assert (node["running"], node["restarts"], node["last_error"]) == (True, 0, None)
        assert math.isclose(node["started_at"], status.started_at or 0, abs_tol=1e-3)
    web = next(node for node in body["nodes"] if node["dn"] == "root.web")
    assert web["group"] == ["root.web", "root.cache"] and web["restart"] == "permanent"


def test_the_page_is_self_contained_and_locked_down(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness))
    page = get(f"{server.url}/")
    assert page.code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    html = page.body.decode()
    # Nothing loaded from elsewhere: no src or href but data: URLs, no CSS url() or @import.
    assert not re.search(r"""\b(?:src|href)\s*=\s*(?!["']?data:)""", html)
    assert "url(" not in html and "@import" not in html and "<script src" not in html
    policy = page.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in policy and "unsafe" not in policy
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    head = get(f"{server.url}/", method="HEAD")
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(page.body))


def test_readiness_turns_from_503_to_200_as_the_tree_comes_up(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    root, db = RemoteRunnable(), RemoteRunnable()
    sup = harness.start(root)
    server = serve(sup)
    top = root.wait_incarnation(0)
    top.run("db", db)
    db.wait_incarnation(0)
    answer = get(f"{server.url}/readyz")
    assert (answer.code, answer.json()) == (503, {"ready": False, "not_ready": ["root", "root.db"]})
    top.healthy()
    wait_status(sup, "root", state=State.HEALTHY)
    assert get(f"{server.url}/readyz").json()["not_ready"] == ["root.db"]
    db.current.healthy()
    wait_status(sup, "root.db", state=State.HEALTHY)
    answer = get(f"{server.url}/readyz")
    assert (answer.code, answer.json()) == (200, {"ready": True, "not_ready": []})
    assert get(f"{server.url}/tree.json").json()["ready"] is True


def test_readyz_names_a_dead_permanent_node_but_not_a_dead_transient_one(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    def dies(token: CancelToken) -> None:
        raise ConnectionError("no database")

    def root(token: CancelToken) -> None:
        token.run("db", dies, backoff=NEVER_SOON)
        token.run("cache", dies, backoff=NEVER_SOON, restart="transient")
        token.run("web", healthy_until_cancelled)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    server = serve(sup)
    # DEAD, its thread gone and its restart due in an hour:
    wait_status(sup, "root.db", state=State.DEAD, next_restart_at=AtLeast(time.time() + 3000))
    wait_status(sup, "root.cache", state=State.DEAD)
    wait_status(sup, "root.web", state=State.HEALTHY)
    answer = get(f"{server.url}/readyz")
    assert (answer.code, answer.json()) == (503, {"ready": False, "not_ready": ["root.db"]})
    assert get(f"{server.url}/healthz").code == 200  # alive: it will restart them
    db = next(n for n in get(f"{server.url}/tree.json").json()["nodes"] if n["dn"] == "root.db")
    assert db["state"] == "DEAD" and db["last_error"] == "ConnectionError: no database"
    assert db["next_restart_at"] > time.time() + 3000


def test_healthz_before_start_while_running_and_after_stop(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    sup = harness.supervisor(two_workers)
    server = serve(sup)  # may start before the tree
    answer = get(f"{server.url}/healthz")
    assert (answer.code, answer.json()) == (503, {"alive": False, "status": "not started"})
    assert get(f"{server.url}/readyz").code == 503
    harness.track(sup).start()
    wait_until(lambda: get(f"{server.url}/healthz").code == 200, what="alive")
    assert sup.stop(10)
    answer = get(f"{server.url}/healthz")
    assert (answer.code, answer.json()) == (503, {"alive": False, "status": "stopped"})
    answer = get(f"{server.url}/readyz")
    assert answer.code == 503 and answer.json()["ready"] is False
    tree = get(f"{server.url}/tree.json").json()  # the last tree stays readable
    assert tree["alive"] is False and {n["state"] for n in tree["nodes"]} == {"CANCELLED"}


def test_healthz_is_503_once_the_root_gave_up(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    def root(token: CancelToken) -> None:
        raise ConnectionError("no database")

    sup = Supervisor(root, logger=harness.logger, max_restarts=0)
    server = serve(harness.track(sup).start())
    wait_until(lambda: get(f"{server.url}/healthz").code == 503, what="503")
    answer = get(f"{server.url}/healthz").json()
    assert answer["alive"] is False
    assert answer["status"].startswith("the supervision tree gave up and stopped: root: ")
    assert "ConnectionError: no database" in answer["status"]


def test_an_infinite_backoff_is_inf_in_the_json_and_never_in_the_render(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    def dies(token: CancelToken) -> None:
        raise ConnectionError("no database")

    def root(token: CancelToken) -> None:
        token.run("db", dies, backoff=Backoff(initial=math.inf, maximum=math.inf, jitter=0.0))
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    server = serve(sup)
    wait_status(sup, "root.db", state=State.DEAD, next_restart_at=math.inf)
    answer = get(f"{server.url}/tree.json")
    assert b'"next_restart_at":"inf"' in answer.body and b"Infinity" not in answer.body
    snapshot, wall = fetch_snapshot(server.url)
    assert snapshot["root.db"].next_restart_at == math.inf
    assert "restart never" in render_tree(snapshot, wall).splitlines()[1]


def test_a_status_round_trips_through_json_infinity_included() -> None:
    status = NodeStatus(
        "root.db",
        State.DEAD,
        False,
        3,
        "ConnectionError: no database",
        stuck_for=1.5,
        abandoned=1,
        restart="transient",
        group=("root.db", "root.cache"),
        started_at=1.0e9,
        healthy_since=1.0e9 + 1,
        next_restart_at=math.inf,
        gave_up=None,
        dynamic=True,
    )
    data = json.loads(json.dumps(status_to_json(status), allow_nan=False))
    assert data["next_restart_at"] == "inf" and data["state"] == "DEAD"
    assert status_from_json(data) == status
    assert status_from_json({**data, "added_later": 1}) == status
    bad: object
    for bad in ([], {"dn": "root"}, {**data, "state": "ASLEEP"}, {**data, "restarts": "x"}):
        with pytest.raises(ValueError, match="a node's"):
            status_from_json(bad)


def test_logs_of_a_node_oldest_first_with_the_traceback(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    # The page's logs are Supervisor.logs, the log backlog.
    def worker(token: CancelToken) -> None:
        token.logger.info("hello <b>%s</b>", "world")
        token.signal(Signal.HEALTHY)
        token.wait(0.05)
        raise ConnectionError("db <gone>")

    def root(token: CancelToken) -> None:
        token.run("worker", worker, backoff=NEVER_SOON)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    server = serve(sup)
    url = f"{server.url}/logs/root.worker"
    wait_status(sup, "root.worker", state=State.DEAD)  # in the tree (no 404), and dead
    wait_until(
        lambda: any("exception" in record for record in get(url).json()["records"]),
        what="the death's record in the backlog",
    )
    body = get(url).json()
    assert body["dn"] == "root.worker"
    records = body["records"]
    messages = [record["message"] for record in records]
    assert messages.index("hello <b>world</b>") < len(messages) - 1
    hello = records[messages.index("hello <b>world</b>")]
    assert hello["level"] == "INFO" and hello["logger"] == f"{harness.base}.root.worker"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", hello["time"])
    death = next(record for record in records if record.get("exception"))
    assert death["level"] == "ERROR"
    assert "Traceback (most recent call last)" in death["exception"]
    assert "ConnectionError: db <gone>" in death["exception"]


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/logs/root.nobody", "no node 'root.nobody' in the tree"),
        ("/logs/ROOT", "'ROOT' is not a DN"),
        ("/logs/root..db", "'root..db' is not a DN"),
        ("/logs/", "'' is not a DN"),
        ("/logs/%2e%2e/etc/passwd", "'../etc/passwd' is not a DN"),
        ("/nothing", "no page '/nothing': there are /, /tree.json"),
        ("/healthz/", "no page '/healthz/'"),
    ],
)
def test_unknown_pages_and_dns_are_404_in_one_line(
    harness: Harness, serve: Callable[..., StatusServer], path: str, says: str
) -> None:
    server = serve(settled_tree(harness))
    answer = get(server.url + path)
    assert answer.code == 404
    assert answer.text.startswith("404 Not Found: ") and answer.text.count("\n") == 1
    assert says in answer.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_methods_other_than_get_and_head_are_405(
    harness: Harness, serve: Callable[..., StatusServer], method: str
) -> None:
    sup = settled_tree(harness)
    server = serve(sup)
    answer = get(f"{server.url}/tree.json", method=method)
    assert answer.code == 405 and answer.headers["Allow"] == "GET, HEAD"
    assert answer.text == (
        f"405 Method Not Allowed: {method}: this server is read-only; use GET or HEAD\n"
    )
    assert sup.snapshot()["root.db"].state is State.HEALTHY


def test_metrics_without_prometheus_client_is_404_saying_what_to_install() -> None:
    # In a fresh interpreter where importing prometheus_client fails.
    code = """if True:
        import sys, urllib.error, urllib.request
        sys.modules["prometheus_client"] = None
        from threadsup import Supervisor
        from threadsup.testing import healthy_until_cancelled
        from threadsup.status import StatusServer
        with Supervisor(healthy_until_cancelled) as sup, StatusServer(sup) as server:
            try:
                urllib.request.urlopen(server.url + "/metrics", timeout=10)
            except urllib.error.HTTPError as error:
                print(error.code, error.headers["Content-Type"], error.read().decode(), end="")
    """
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PYTHONPATH": package_parent},
    )
    assert done.stdout == (
        "404 text/plain; charset=utf-8 404 Not Found: /metrics needs prometheus_client: "
        "pip install 'threadsup[prometheus]'\n"
    )
    assert done.stderr == ""


def test_metrics_in_the_prometheus_text_format(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.parser import text_string_to_metric_families

    server = serve(settled_tree(harness))
    answer = get(f"{server.url}/metrics")
    assert answer.code == 200 and answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.body.decode())
        for sample in family.samples
    }
    labels = {"supervisor": harness.logger.name, "dn": "root.db"}
    state = tuple(sorted({**labels, "state": "HEALTHY"}.items()))
    assert samples[("threadsup_node_state", state)] == 1.0
    assert samples[("threadsup_node_restarts_total", tuple(sorted(labels.items())))] == 0.0


# ------------------------------------------------------------------ defences


def test_slow_clients_neither_hold_up_the_page_nor_stay_past_the_timeout(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness), timeout=3.0)
    host, port = parse_address(server.url.removeprefix("http://"))
    opened = time.monotonic()
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(8)]
    try:
        for sock in idle:  # half a request, then nothing (slowloris)
            sock.sendall(b"GET /tree.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        asked = time.monotonic()
        assert get(f"{server.url}/healthz").code == 200
        assert time.monotonic() - asked < 2.5  # not after the idle ones' timeout
        for sock in idle:
            assert closed_by_server(sock)
        took = time.monotonic() - opened
        assert 2.9 <= took < 10.0, f"idle connections closed after {took:.2f} s"
    finally:
        for sock in idle:
            sock.close()


def test_a_client_trickling_its_request_is_cut_off_at_the_timeout(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness), timeout=1.0)
    host, port = parse_address(server.url.removeprefix("http://"))
    with socket.create_connection((host, port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        cut = False
        while time.monotonic() - started < 10.0:
            try:
                sock.sendall(b"X-Slow: a\r\n")  # every 0.1 s: no read ever times out
            except OSError:
                cut = True
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                cut = sock.recv(1024) == b""
            except BlockingIOError:
                pass
            except OSError:
                cut = True
            sock.setblocking(True)
            if cut:
                break
        took = time.monotonic() - started
    assert cut and 0.9 <= took < 5.0, f"cut={cut} after {took:.2f} s"


def test_connections_past_the_limit_are_answered_503_at_once(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness), max_connections=2)
    host, port = parse_address(server.url.removeprefix("http://"))
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
    try:
        answer = get(f"{server.url}/healthz")
        assert answer.code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.text == "503 Service Unavailable: too many connections; retry later\n"
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: get(f"{server.url}/healthz").code == 200, what="a free slot")


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(20)),
            b"431",
        ),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n",
            b"431",
        ),
    ],
    ids=["one-huge-header", "over-64k-in-all", "huge-request-line", "too-many-headers"],
)
def test_huge_request_heads_are_rejected(
    harness: Harness, serve: Callable[..., StatusServer], request_: bytes, status: bytes
) -> None:
    server = serve(settled_tree(harness))
    answer = raw(server, request_)
    assert answer.startswith(b"HTTP/1.0 " + status + b" "), answer[:200]
    body = answer.partition(b"\r\n\r\n")[2]
    assert body.count(b"\n") == 1 and body.startswith(status + b" ")
    assert get(f"{server.url}/healthz").code == 200


def test_a_head_just_under_the_limit_is_served(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness))
    request_line = b"GET /healthz HTTP/1.1\r\n"
    filler = MAX_HEAD - len(request_line) - len(b"X-Fill: \r\n") - len(b"\r\n")
    answer = raw(server, request_line + b"X-Fill: " + b"a" * filler + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 "), answer[:200]


def test_only_loopback_host_names_are_answered_on_loopback(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    server = serve(settled_tree(harness))
    port = server.url.rpartition(":")[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert get(f"{server.url}/healthz", headers={"Host": host}).code == 200, host
    # A page of evil.example whose name now resolves to 127.0.0.1 (DNS rebinding).
    answer = get(f"{server.url}/tree.json", headers={"Host": f"evil.example:{port}"})
    assert answer.code == 403
    assert answer.text == f"403 Forbidden: Host 'evil.example:{port}' is not a loopback address\n"


def test_close_joins_every_thread_at_once_even_with_a_client_connected(
    harness: Harness,
) -> None:
    server = StatusServer(settled_tree(harness), timeout=30.0).start()
    host, port = parse_address(server.url.removeprefix("http://"))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # its thread waits for the rest
        wait_until(lambda: len(status_threads(port)) == 2, what="its thread")
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2.0
        assert status_threads(port) == []
        assert sock.recv(1024) == b""
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=10).close()
    with pytest.raises(AlreadyStarted, match="create a new one"):
        server.start()


def test_as_a_context_manager(harness: Harness) -> None:
    sup = settled_tree(harness)
    with StatusServer(sup) as server:
        assert repr(server) == f"<StatusServer {server.url} serving>"
        assert get(f"{server.url}/healthz").code == 200
    assert repr(server) == f"<StatusServer {server.url} closed>"
    never = StatusServer(sup)
    assert repr(never) == "<StatusServer 127.0.0.1:0 not started>"
    with pytest.raises(RuntimeError, match="call start"):
        never.url  # noqa: B018
    never.close()
    with pytest.raises(AlreadyStarted):
        never.start()


def test_requests_are_logged_at_debug_never_on_stderr(
    harness: Harness, serve: Callable[..., StatusServer], capfd: pytest.CaptureFixture[str]
) -> None:
    server = serve(settled_tree(harness), timeout=0.5)
    started = harness.logs.wait_for(name=f"{harness.base}.status", levelno=logging.INFO)
    assert started.getMessage() == f"status page on {server.url}/"
    get(f"{server.url}/healthz")
    raw(server, b"NONSENSE\r\n\r\n")
    with socket.create_connection(parse_address(server.url.removeprefix("http://"))) as sock:
        assert closed_by_server(sock)  # after its timeout
    logged = [r.getMessage() for r in harness.logs.find(name=f"{harness.base}.status")]
    assert '127.0.0.1 "GET /healthz HTTP/1.1" 200 -' in logged
    assert '127.0.0.1 "NONSENSE" 400 -' in logged
    assert {r.levelno for r in harness.logs.find(name=f"{harness.base}.status")} == {
        logging.INFO,  # "status page on ..."
        logging.DEBUG,
    }
    assert capfd.readouterr().err == ""


def test_ipv6_loopback(harness: Harness, serve: Callable[..., StatusServer]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = serve(settled_tree(harness), host="::1")
    assert re.fullmatch(r"http://\[::1\]:\d+", server.url)
    assert get(f"{server.url}/healthz").code == 200


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"sup": "sup"}, TypeError, "serves a threadsup.Supervisor, not 'sup'"),
        ({"host": None}, TypeError, "host must be a str"),
        ({"host": ""}, ValueError, "host must be a name or an address"),
        ({"host": " localhost"}, ValueError, "host must be"),
        ({"port": "80"}, TypeError, "port must be an int from 0 to 65535, not '80'"),
        ({"port": True}, TypeError, "port must be an int"),
        ({"port": -1}, ValueError, "port must be from 0 .* not -1"),
        ({"port": 65536}, ValueError, "not 65536"),
        ({"timeout": 0}, ValueError, "timeout of StatusServer"),
        ({"timeout": -1.0}, ValueError, "timeout of StatusServer"),
        ({"timeout": math.inf}, ValueError, "must be finite"),
        ({"max_connections": 0}, ValueError, "max_connections must be 1 or more, not 0"),
        ({"max_connections": 2.5}, TypeError, "max_connections must be an int"),
    ],
)
def test_bad_arguments_are_clear_errors(
    harness: Harness, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    options.setdefault("sup", harness.supervisor(healthy_until_cancelled))
    with pytest.raises(error, match=message):
        StatusServer(**options)


def test_a_port_in_use_is_an_oserror_naming_the_address(harness: Harness) -> None:
    sup = harness.supervisor(healthy_until_cancelled)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatusServer(sup, port=port)
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: ") as caught:
            server.start()
    assert isinstance(caught.value, OSError)
    assert "Address already in use" in str(caught.value)
    with pytest.raises(ListenError, match=r"cannot listen on 192\.0\.2\.1:\d+: "):
        StatusServer(sup, host="192.0.2.1").start()  # not an address of this machine


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:8000", ("::1", 8000)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["8000", ":8000", "localhost:", "host:port", "h:65536", "h:-1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=f"expected HOST:PORT .* not '{re.escape(text)}'"):
        parse_address(text)


# ------------------------------------------------------------------ the client side


def test_fetch_snapshot_rebuilds_what_render_draws(
    harness: Harness, serve: Callable[..., StatusServer]
) -> None:
    def dies(token: CancelToken) -> None:
        raise ConnectionError("no database")

    def root(token: CancelToken) -> None:
        token.run("db", dies, backoff=NEVER_SOON)
        token.run("web", healthy_until_cancelled)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    server = serve(sup)
    wait_status(sup, "root.db", state=State.DEAD)
    wait_status(sup, "root.web", state=State.HEALTHY)
    assert sup.stop(10)  # a stopped tree does not change: its render is fixed
    snapshot, wall = fetch_snapshot(server.url)
    assert render_tree(snapshot, wall) == sup.render()
    assert "last error: ConnectionError: no database" in sup.render()

    # Equal but for the times, which each snapshot derives from its own clock readings.
    def untimed(statuses: Iterable[NodeStatus]) -> list[NodeStatus]:
        return [dataclasses.replace(s, started_at=None, healthy_since=None) for s in statuses]

    assert untimed(snapshot.values()) == untimed(sup.snapshot().values())
    for url in (f"{server.url}/", f"{server.url}/tree.json", server.url.removeprefix("http://")):
        assert list(fetch_snapshot(url)[0]) == list(snapshot)


def test_tree_json_url() -> None:
    assert tree_json_url("http://h:1") == "http://h:1/tree.json"
    assert tree_json_url("http://h:1/") == "http://h:1/tree.json"
    assert tree_json_url("h:1") == "http://h:1/tree.json"
    assert tree_json_url("http://h:1/status/tree.json") == "http://h:1/status/tree.json"
    assert tree_json_url("http://h:1/status/") == "http://h:1/status/tree.json"


class _NotATree(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"nodes": [{"dn": "root"}], "time": 0}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_fetch_snapshot_errors(harness: Harness, serve: Callable[..., StatusServer]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OSError, match=f"cannot reach http://127.0.0.1:{port}/tree.json: "):
        fetch_snapshot(f"http://127.0.0.1:{port}")
    server = serve(settled_tree(harness))
    with pytest.raises(OSError, match=r"/healthz/tree.json answered 404 Not Found"):
        fetch_snapshot(f"{server.url}/healthz")
    other = http.server.HTTPServer(("127.0.0.1", 0), _NotATree)
    thread = threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with pytest.raises(ValueError, match="is not a threadsup status server's tree: "):
            fetch_snapshot(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
        other.server_close()
        thread.join(10)
