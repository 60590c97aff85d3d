"""Time values: one rule for every number of seconds a caller passes,
checked first thing in the call, and no value that reaches a blocking call can
kill the processor or a runnable.

The rule: not an ``int``/``float`` (or a ``bool``) is a `TypeError`; NaN or a
negative is a `ValueError` (0 too for intervals); infinity means for ever; a
huge finite value is waited in turns. Absolute deadlines may lie in the past.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import itertools
import math
import queue
import socketserver
import sys
import textwrap
import threading
import time
import urllib.request
from typing import Any, Callable, NamedTuple

import pytest

from threadsup import (
    Backoff,
    CancelToken,
    State,
    Supervisor,
    command,
    periodic,
    serve,
    support,
)
from threadsup._processor import _StuckCheck
from threadsup._token import ScopedToken
from threadsup.testing import (
    Harness,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_blocked,
    wait_status,
)

#: A woken call or a prompt stop must be done well within this, even on 2 busy cores.
PROMPT = 2.0
#: Where a thread blocks in `CancelToken.wait`, ``get``, ``put`` and ``wait_for``.
IN_WAIT = "waiter.acquire("
#: Far beyond what any platform's blocking call takes as a timeout.
HUGE = [1e10, 1e300, 10**400, math.inf]


# ------------------------------------------------------------------------- helpers


class Tree(NamedTuple):
    sup: Supervisor
    token: CancelToken


@pytest.fixture
def tree(harness: Harness) -> Tree:
    """A running root, still NEW (so run_group is allowed), with a spawned child ``s``."""
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    token.spawn("s", healthy_until_cancelled)
    wait_status(sup, "root.s", state=State.HEALTHY)
    return Tree(sup, token)


def assert_alive(sup: Supervisor) -> None:
    assert sup._processor.failure is None
    assert not sup._processor.ended.is_set()


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


def http_server() -> socketserver.BaseServer:
    return http.server.HTTPServer(("127.0.0.1", 0), Hello)


def full_queue() -> queue.Queue[int]:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    q.put(0)
    return q


def in_thread(
    pool: concurrent.futures.Executor, call: Callable[[], object]
) -> concurrent.futures.Future[object]:
    """Start ``call`` on ``pool``; return its future once it blocks in a wait."""
    ident: list[int] = []
    started = threading.Event()

    def run() -> object:
        ident.append(threading.get_ident())
        started.set()
        return call()

    future = pool.submit(run)
    assert started.wait(10)
    wait_blocked(ident[0], IN_WAIT)
    return future


# ----------------------------------------------------- bad values, every public call


class Call(NamedTuple):
    #: What the message must name.
    name: str
    #: ``seconds``, ``timeout`` (None allowed), ``interval`` (0 refused) or ``instant``.
    kind: str
    call: Callable[[Tree, Any], object]


def _child_policy(method: str, keyword: str) -> Callable[[Tree, Any], object]:
    def call(tree: Tree, value: Any) -> None:
        kwargs = {keyword: value}
        if method == "run":
            tree.token.run("c", healthy_until_cancelled, **kwargs)
        elif method == "run_group":
            tree.token.run_group({"c": healthy_until_cancelled}, **kwargs)
        else:
            tree.token.spawn("c", healthy_until_cancelled, **kwargs)

    return call


CALLS: dict[str, Call] = {
    "Supervisor(shutdown_timeout)": Call(
        "shutdown_timeout of Supervisor()",
        "seconds",
        lambda t, v: Supervisor(healthy_until_cancelled, shutdown_timeout=v),
    ),
    "Supervisor(within)": Call(
        "within of Supervisor()",
        "interval",
        lambda t, v: Supervisor(healthy_until_cancelled, within=v),
    ),
    "Backoff(initial)": Call("Backoff.initial", "seconds", lambda t, v: Backoff(initial=v)),
    "Backoff(maximum)": Call("Backoff.maximum", "seconds", lambda t, v: Backoff(maximum=v)),
    "Backoff(stable)": Call("Backoff.stable", "seconds", lambda t, v: Backoff(stable=v)),
    **{
        f"{method}({keyword})": Call(
            f"{keyword} of {method}() on root", kind, _child_policy(method, keyword)
        )
        for method in ("run", "run_group", "spawn")
        for keyword, kind in (("shutdown_timeout", "timeout"), ("within", "interval"))
    },
    "token.wait": Call("timeout of wait() on root", "timeout", lambda t, v: t.token.wait(v)),
    "token.get": Call(
        "timeout of get() on root", "timeout", lambda t, v: t.token.get(queue.Queue(), v)
    ),
    "token.put": Call(
        "timeout of put() on root", "timeout", lambda t, v: t.token.put(full_queue(), 1, v)
    ),
    "token.wait_for(event)": Call(
        "timeout of wait_for() on root",
        "timeout",
        lambda t, v: t.token.wait_for(threading.Event(), v),
    ),
    "token.wait_for(token)": Call(
        "timeout of wait_for() on root",
        "timeout",
        lambda t, v: t.token.wait_for(t.token, v),
    ),
    "token.fail_after": Call(
        "seconds of fail_after() on root", "seconds", lambda t, v: t.token.fail_after(v)
    ),
    "token.move_on_after": Call(
        "seconds of move_on_after() on root", "seconds", lambda t, v: t.token.move_on_after(v)
    ),
    "token.fail_at": Call(
        "deadline of fail_at() on root", "instant", lambda t, v: t.token.fail_at(v)
    ),
    "token.move_on_at": Call(
        "deadline of move_on_at() on root", "instant", lambda t, v: t.token.move_on_at(v)
    ),
    "sup.stop": Call("timeout of stop()", "timeout", lambda t, v: t.sup.stop(v)),
    "sup.wait": Call("timeout of wait()", "timeout", lambda t, v: t.sup.wait(v)),
    "sup.wait_settled": Call(
        "timeout of wait_settled()", "timeout", lambda t, v: t.sup.wait_settled(v)
    ),
    "sup.remove": Call(
        "timeout of remove('root.s')", "timeout", lambda t, v: t.sup.remove("root.s", v)
    ),
    "periodic": Call("interval of periodic()", "interval", lambda t, v: periodic(v, print)),
    "serve": Call(
        "poll_interval of serve()", "interval", lambda t, v: serve(http_server, poll_interval=v)
    ),
    "command": Call("grace of command()", "seconds", lambda t, v: command(["true"], grace=v)),
}

NOT_A_NUMBER: list[tuple[Any, type[Exception]]] = [("1", TypeError), (True, TypeError)]
REFUSED: dict[str, list[tuple[Any, type[Exception]]]] = {
    "timeout": [*NOT_A_NUMBER, (math.nan, ValueError), (-1, ValueError), (-math.inf, ValueError)],
    "instant": [*NOT_A_NUMBER, (None, TypeError), (math.nan, ValueError)],
}
REFUSED["seconds"] = [*REFUSED["timeout"], (None, TypeError)]
REFUSED["interval"] = [*REFUSED["seconds"], (0, ValueError)]

CASES = [
    pytest.param(call, value, error, id=f"{name}-{value!r}")
    for name, call in CALLS.items()
    for value, error in REFUSED[call.kind]
]


@pytest.mark.parametrize(("call", "value", "error"), CASES)
def test_a_bad_time_value_raises_in_the_caller_and_changes_nothing(
    tree: Tree, call: Call, value: Any, error: type[Exception]
) -> None:
    sup, token = tree
    callbacks = dict(token._callbacks or {})
    before = sup.snapshot()
    with pytest.raises(error) as raised:
        call.call(tree, value)
    assert type(raised.value) is error
    assert call.name in str(raised.value), str(raised.value)
    # Nothing changed: no cancellation, no waiter or callback left on the token,
    # no child created, and the tree runs on.
    assert not token.cancelled
    assert not token._waiters
    assert (token._callbacks or {}) == callbacks
    assert sup.wait_settled(10)
    after = sup.snapshot()
    assert list(after) == list(before) == ["root", "root.s"]
    assert all(status.running and status.restarts == 0 for status in after.values())
    assert_alive(sup)
    assert sup.stop(10)


def test_infinity_is_taken_wherever_it_means_for_ever(tree: Tree) -> None:
    inf = math.inf
    Supervisor(healthy_until_cancelled, shutdown_timeout=inf, within=inf)
    Backoff(initial=inf, maximum=inf, stable=inf)
    periodic(inf, print)
    serve(http_server, poll_interval=inf)
    command(["true"], grace=inf)
    tree.token.spawn("t", healthy_until_cancelled, shutdown_timeout=inf, within=inf)
    wait_status(tree.sup, "root.t", state=State.HEALTHY)
    assert tree.sup.remove("root.t", timeout=inf)


# ------------------------------------------------ item 1: the processor never dies


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("move_on_after", math.inf),
        ("fail_after", math.inf),
        ("fail_after", 1e10),
        ("move_on_after", 1e300),
        ("fail_at", math.inf),
        ("move_on_at", 1e300),
    ],
    ids=lambda param: repr(param) if isinstance(param, float) else param,
)
def test_a_far_deadline_never_expires_and_leaves_the_processor_alive(
    harness: Harness, method: str, value: float
) -> None:
    scopes: list[ScopedToken] = []
    entered = threading.Event()

    def root(token: CancelToken) -> None:
        with getattr(token, method)(value) as scoped:
            scopes.append(scoped)
            entered.set()
            scoped.wait()

    sup = harness.start(root)
    assert entered.wait(10)
    # The timer's request is queued before the settle request: once settled, the
    # processor has computed its next wait with the far deadline in its heap.
    assert sup.wait_settled(10)
    assert_alive(sup)
    (scoped,) = scopes
    assert not scoped.cancelled and not scoped.expired
    if value == math.inf:
        assert scoped.deadline is None  # no timer at all
    assert sup.stop(10)
    assert sup.snapshot()["root"].state is State.CANCELLED
    assert not scoped.expired


@pytest.mark.parametrize("where", ["supervisor", "child"])
@pytest.mark.parametrize("shutdown_timeout", [1e10, math.inf])
def test_a_huge_shutdown_timeout_leaves_the_processor_alive_when_a_member_dies(
    harness: Harness, where: str, shutdown_timeout: float
) -> None:
    gate = harness.gate()
    a, b = RemoteRunnable(linger=gate), RemoteRunnable()
    per_child = shutdown_timeout if where == "child" else None
    root = RemoteRunnable(lambda t: t.run_group({"a": a, "b": b}, shutdown_timeout=per_child))
    sup = harness.start(root, shutdown_timeout=shutdown_timeout if where == "supervisor" else 10)
    a_first = a.wait_incarnation(0)
    b.wait_incarnation(0).die()
    assert a_first.cancel_seen.wait(10)  # cancelled, and lingering: watched for being stuck
    wait_status(sup, "root.b", state=State.DEAD, running=False)  # the exit was handled
    assert sup.wait_settled(10)
    assert_alive(sup)
    assert not sup.snapshot()["root.a"].stuck
    if shutdown_timeout == math.inf:
        with sup._tree.lock:
            assert not any(isinstance(what, _StuckCheck) for _, _, what in sup._processor._due)
    gate.set()
    a.wait_incarnation(1)
    b.wait_incarnation(1)
    assert_alive(sup)
    assert sup.stop(10)


@pytest.mark.parametrize("delay", [1e10, math.inf])
def test_a_huge_backoff_leaves_the_processor_alive_and_renders(
    harness: Harness, delay: float
) -> None:
    child = RemoteRunnable()
    backoff = Backoff(initial=delay, maximum=delay, jitter=0)
    sup = harness.start(RemoteRunnable(lambda t: t.run("c", child)), backoff=backoff)
    child.wait_incarnation(0).die()
    status = wait_status(sup, "root.c", state=State.DEAD, running=False)
    assert status.next_restart_at is not None
    if delay == math.inf:
        assert status.next_restart_at == math.inf
        assert "restart never" in sup.render()
    else:
        assert status.next_restart_at > time.time() + 0.9 * delay
        assert "restart in 317y" in sup.render()
    # The restart request is queued after the far restart: handling it, the
    # processor has been through its next wait.
    sup.restart("root.c")
    child.wait_incarnation(1)
    assert_alive(sup)
    assert sup.stop(10)


@pytest.mark.parametrize("multiplier", [2, 1.5])
def test_an_uncapped_backoff_grows_to_infinity_without_overflowing(multiplier: float) -> None:
    """``initial * multiplier ** n`` leaves the float range after a few thousand deaths:
    the delay is then infinite rather than an OverflowError on the processor."""
    backoff = Backoff(initial=1e-300, multiplier=multiplier, maximum=math.inf, jitter=0)
    delays = list(itertools.islice(backoff.delays(), 3000))
    assert delays[0] == 1e-300
    assert delays == sorted(delays)
    assert delays[-1] == math.inf


def test_an_infinite_delay_takes_no_jitter_and_initial_inf_means_maximum() -> None:
    jittered = Backoff(initial=math.inf, maximum=math.inf, jitter=1).delays()
    assert list(itertools.islice(jittered, 100)) == [math.inf] * 100
    capped = Backoff(initial=math.inf, maximum=5, jitter=0).delays()
    assert list(itertools.islice(capped, 3)) == [5, 5, 5]


# ----------------------------------- item 2: periodic and serve take any interval


@pytest.mark.parametrize("interval", [1e10, math.inf])
def test_periodic_with_a_huge_interval_calls_once_then_waits_for_cancellation(
    harness: Harness, interval: float
) -> None:
    calls: list[float] = []
    sup = harness.start(periodic(interval, lambda t: calls.append(time.monotonic())))
    wait_status(sup, "root", state=State.HEALTHY)
    assert sup.wait_settled(10)
    status = sup.snapshot()["root"]
    assert (status.state, status.running, status.restarts, status.last_error) == (
        State.HEALTHY,
        True,
        0,
        None,
    )
    assert len(calls) == 1
    assert_alive(sup)
    started = time.monotonic()
    assert sup.stop(10)
    assert time.monotonic() - started < PROMPT


@pytest.mark.parametrize("poll_interval", [1e10, math.inf])
def test_serve_with_a_huge_poll_interval_serves_and_stops_within_the_clamp(
    harness: Harness, poll_interval: float
) -> None:
    servers: list[http.server.HTTPServer] = []

    def factory() -> socketserver.BaseServer:
        servers.append(http.server.HTTPServer(("127.0.0.1", 0), Hello))
        return servers[-1]

    sup = harness.start(serve(factory, poll_interval=poll_interval))
    wait_status(sup, "root", state=State.HEALTHY)
    port = servers[0].socket.getsockname()[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.read() == b"hello"  # serve_forever() runs
    assert sup.wait_settled(10)
    assert sup.snapshot()["root"].restarts == 0
    assert_alive(sup)
    started = time.monotonic()
    assert sup.stop(10)
    assert time.monotonic() - started < support.MAX_POLL_INTERVAL + PROMPT


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")
def test_command_with_an_infinite_grace_stops_on_sigterm(harness: Harness) -> None:
    script = "import time\nprint('up', flush=True)\ntime.sleep(60)"
    argv = [sys.executable, "-c", textwrap.dedent(script)]
    sup = harness.start(command(argv, healthy="^up$", grace=math.inf))
    wait_status(sup, "root", state=State.HEALTHY)
    started = time.monotonic()
    assert sup.stop(10)
    assert time.monotonic() - started < PROMPT
    assert sup.snapshot()["root"].state is State.CANCELLED


# ------------------------------------------- huge and infinite waits, as documented


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_a_huge_wait_is_woken_by_cancel(tree: Tree, timeout: float) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = in_thread(pool, lambda: tree.token.wait(timeout))
        tree.sup.cancel()
        assert future.result(timeout=10) is True
    assert tree.sup.stop(10)


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_huge_timeouts_of_get_put_and_wait_for_wait_for_the_thing(
    tree: Tree, timeout: float
) -> None:
    token = tree.token
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    event = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        got = in_thread(pool, lambda: token.get(q, timeout))
        q.put(1)
        assert got.result(timeout=10) == 1
        q.put(2)
        put = in_thread(pool, lambda: token.put(q, 3, timeout))
        assert q.get(timeout=10) == 2
        put.result(timeout=10)
        assert q.get(timeout=10) == 3
        waited = in_thread(pool, lambda: token.wait_for(event, timeout))
        event.set()
        assert waited.result(timeout=10) is True
    assert_alive(tree.sup)


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_huge_timeouts_of_the_supervisor_wait_for_the_thing(tree: Tree, timeout: float) -> None:
    sup = tree.sup
    assert sup.wait_settled(timeout)
    assert sup.remove("root.s", timeout)
    assert sup.stop(timeout)
    assert sup.wait(timeout)


def test_a_deadline_in_the_past_expires_at_once(tree: Tree) -> None:
    for past in (-math.inf, -1, time.monotonic() - 1):
        with tree.token.move_on_at(past) as scoped:
            assert scoped.cancelled
        assert isinstance(scoped, ScopedToken) and scoped.expired
    assert not tree.token.cancelled


def test_a_supervisor_with_an_infinite_shutdown_timeout_stops_on_exit(harness: Harness) -> None:
    root = RemoteRunnable()
    with Supervisor(root, logger=harness.logger, shutdown_timeout=math.inf) as sup:
        root.wait_incarnation(0).healthy()
        assert sup.shutdown_timeout == math.inf
    assert sup.snapshot()["root"].state is State.CANCELLED
    assert sup.wait(0)
