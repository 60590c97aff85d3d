"""Cancelling blocking code: ``token.closing`` on real loopback sockets, the files
``makefile`` makes of them, subprocess pipes and other resources, ``token.get``/
``token.put`` on ``queue.Queue``, ``token.wait_for`` on events, futures and tokens,
and deadlines (``fail_after``, ``move_on_after``, ``fail_at``, ``move_on_at``).

Each helper is checked with its token cancelled *before* the call and *during* it,
the latter both by ``sup.cancel()`` and by the death of a group sibling. A "during"
test first proves that the thread is blocked in the call: its innermost Python
frame is at the blocking line, and it has not returned 50 ms later.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import queue
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from threadsup import (
    Cancelled,
    CancelToken,
    DeadlineExceeded,
    Signal,
    State,
    Supervisor,
    ThreadsupError,
)
from threadsup._node import cancel_subtree, fire
from threadsup._token import ScopedToken
from threadsup.testing import (
    Harness,
    RemoteRunnable,
    group_root,
    wait_blocked,
    wait_status,
    wait_until,
)

#: A cancelled blocking call must return well within this (its median is well under 1 ms).
WAKE_BOUND = 2.0
#: How long a blocked call must stay blocked to count as blocked.
BLOCKED_FOR = 0.05
#: The ways a token gets cancelled while its runnable is blocked.
HOWS = ["cancel", "sibling"]
QUEUE_TYPES: list[type[queue.Queue[int]]] = [queue.Queue, queue.LifoQueue, queue.PriorityQueue]

# ------------------------------------------------------------------------- helpers


#: Where a thread waits in each helper: in a socket call, or on a lock inside
#: ``threading.Condition.wait`` (``get``, ``put`` and ``wait_for`` all end there).
IN_RECV = ".recv("
IN_ACCEPT = "self._accept()"
#: A ``readline()`` on a file that ``socket.makefile`` made waits in `socket.SocketIO`;
#: on a pipe, in C code under `read_line`'s own line.
IN_SOCKET_FILE = ".recv_into("
IN_SOCKET_FILE_WRITE = ".send(b)"
IN_READLINE = "file.readline()"
IN_CONDITION = "waiter.acquire("


class Blocker:
    """A runnable whose first incarnation runs ``body(token)`` once and records how it
    ended; later incarnations (after a sibling's death) just wait for cancellation."""

    def __init__(self, body: Callable[[CancelToken], object]) -> None:
        self.body = body
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.ident = 0
        self.token: CancelToken | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self.ended_at = math.inf
        self._runs = 0

    def __call__(self, token: CancelToken) -> None:
        self._runs += 1
        if self._runs > 1:
            token.wait()
            return
        self.ident = threading.get_ident()
        self.token = token
        self.ready.set()
        try:
            self.result = self.body(token)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    def wait_blocked(self, needle: str) -> None:
        """Prove the body is blocked at ``needle``: there, and still there a while later."""
        assert self.ready.wait(10), "the runnable did not start"
        wait_blocked(self.ident, needle)
        time.sleep(BLOCKED_FOR)  # not synchronisation: proves the call blocks
        assert not self.ended.is_set(), f"returned before it was cancelled: {self.error!r}"

    def wait_ended(self, since: float) -> float:
        """Wait for the body to end; return how long after ``since`` it did."""
        assert self.ended.wait(10), "the blocked call was not woken"
        return self.ended_at - since


class Blocked:
    """A `Blocker` under a supervisor, with the trigger that cancels its token."""

    def __init__(self, harness: Harness, body: Callable[[CancelToken], object], how: str) -> None:
        self.blocker = Blocker(body)
        if how == "cancel":
            self.dn = "root"
            self.sup = harness.start(self.blocker)
            self._trigger: Callable[[], None] = self.sup.cancel
        else:
            self.dn = "root.blocked"
            sibling = RemoteRunnable()
            self.sup = harness.start(
                group_root({"blocked": self.blocker, "sibling": sibling}, done=False)
            )
            self._trigger = lambda: sibling.wait_incarnation(0).die(RuntimeError("sibling dies"))

    def cancel_when_blocked(self, needle: str) -> float:
        """Once the body is blocked at ``needle``, cancel its token; return how long
        after that the body ended."""
        self.blocker.wait_blocked(needle)
        t0 = time.monotonic()
        self._trigger()
        return self.blocker.wait_ended(t0)

    def cancelled_error(self) -> Cancelled:
        """The `Cancelled` the body raised, checked to name the node."""
        error = self.blocker.error
        assert isinstance(error, Cancelled), f"expected Cancelled, got {error!r}"
        assert error.dn == self.dn
        return error


@pytest.fixture
def live_token(harness: Harness) -> CancelToken:
    """The token of a running root, used from the test thread (a helper thread)."""
    root = RemoteRunnable()
    harness.start(root)
    return root.wait_incarnation(0).token


@pytest.fixture
def cancelled_token(harness: Harness) -> CancelToken:
    """The token of a root whose tree was stopped: cancelled before any call."""
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    assert sup.stop(10)
    assert token.cancelled
    return token


@contextlib.contextmanager
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1: (the server's side, the client)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        client = socket.create_connection(listener.getsockname()[:2], timeout=10)
        server_side, _ = listener.accept()
    server_side.settimeout(None)
    try:
        yield server_side, client
    finally:
        client.close()
        server_side.close()


def fill(sock: socket.socket) -> None:
    """Send into ``sock`` until its buffers and its peer's are full, so that the next
    send blocks until the peer reads."""
    sock.setblocking(False)
    try:
        while True:
            sock.send(bytes(65536))
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


class Channel:
    """A blocking resource that is not a socket: ``read()`` blocks until ``close()``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.closed = False
        self.closes = 0

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self.closes += 1
            self._cond.notify_all()

    def read(self) -> bytes:
        with self._cond:
            while not self.closed:  # the line `wait_blocked` looks for: waiter.acquire(
                self._cond.wait()
        raise EOFError("the channel was closed")


def in_thread(body: Callable[[CancelToken], object], token: CancelToken) -> Blocker:
    """Run ``body(token)`` on a thread of its own; the `Blocker` records how it ends.

    ``body`` must end within a bounded time, so that the thread is gone by the
    test's end whatever happens."""
    blocker = Blocker(body)

    def run() -> None:
        with contextlib.suppress(BaseException):  # kept in blocker.error
            blocker(token)

    threading.Thread(target=run, name="test-blocker").start()
    return blocker


@contextlib.contextmanager
def cancelled_unfired(token: CancelToken) -> Iterator[None]:
    """Cancel ``token``'s node as the supervisor does, its two steps held apart:
    marked under the tree lock on entry, fired (waiters woken, callbacks run) on
    leaving. Inside, a thread that something else wakes finds the token cancelled."""
    tree = token._node.tree
    with tree.lock:
        marked = cancel_subtree(token._node)
    try:
        yield
    finally:
        fire(tree, marked)


def block(token: CancelToken) -> None:
    """Block until ``token`` is cancelled, then raise `Cancelled` (``wait()`` would return)."""
    token.wait_for(threading.Event())


def deadline_of(scoped: CancelToken) -> float:
    deadline = scoped.deadline  # typed float | None on CancelToken
    assert deadline is not None
    return deadline


def expired(scoped: CancelToken) -> bool:
    """A scoped token's ``expired`` (``fail_after`` & co. are typed as yielding a CancelToken)."""
    assert isinstance(scoped, ScopedToken)
    return scoped.expired


# ------------------------------------------------------------------------- closing


@pytest.mark.parametrize("how", HOWS)
def test_closing_wakes_a_thread_blocked_in_recv(harness: Harness, how: str) -> None:
    with loopback_pair() as (server_side, client):
        closed_on_exit: list[bool] = []

        def body(token: CancelToken) -> bytes:
            try:
                with token.closing(server_side) as conn:
                    data = conn.recv(1024)  # returns b"" once shut down
                    if not data:
                        raise ConnectionResetError("the peer went away")
                    return data
            finally:
                closed_on_exit.append(server_side.fileno() == -1)

        blocked = Blocked(harness, body, how)
        assert blocked.cancel_when_blocked(IN_RECV) < WAKE_BOUND
        error = blocked.cancelled_error()
        assert isinstance(error.__cause__, ConnectionResetError)  # Cancelled replaced it
        assert closed_on_exit == [True]  # closed by the time the block is left
        assert client.recv(1024) == b""  # the peer sees the shutdown


@pytest.mark.parametrize("how", HOWS)
def test_closing_wakes_a_thread_blocked_in_accept(harness: Harness, how: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        closed_on_exit: list[bool] = []

        def body(token: CancelToken) -> object:
            try:
                with token.closing(listener) as server:
                    return server.accept()  # raises OSError once shut down
            finally:
                closed_on_exit.append(listener.fileno() == -1)

        blocked = Blocked(harness, body, how)
        assert blocked.cancel_when_blocked(IN_ACCEPT) < WAKE_BOUND
        error = blocked.cancelled_error()
        assert isinstance(error.__cause__, OSError)  # the OSError accept raised, replaced
        assert closed_on_exit == [True]


def test_closing_wakes_a_resource_that_is_not_a_socket(harness: Harness) -> None:
    channel = Channel()

    def body(token: CancelToken) -> bytes:
        with token.closing(channel) as resource:
            assert resource is channel
            return resource.read()

    blocked = Blocked(harness, body, "cancel")
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    assert isinstance(blocked.cancelled_error().__cause__, EOFError)
    assert channel.closes == 1  # closed once, though both the cancellation and the exit close


class SlowToClose:
    """A resource whose ``close()`` wakes its reader at once but takes a while to finish,
    as a socket's does (``shutdown`` wakes ``recv``, then ``close`` runs)."""

    def __init__(self) -> None:
        self.channel = Channel()
        self.fully_closed = False

    def close(self) -> None:
        self.channel.close()
        time.sleep(0.1)
        self.fully_closed = True


def test_closing_leaves_the_block_only_once_the_resource_is_closed(harness: Harness) -> None:
    resource = SlowToClose()
    closed_on_exit: list[bool] = []

    def body(token: CancelToken) -> None:
        try:
            with token.closing(resource):
                resource.channel.read()
        finally:
            closed_on_exit.append(resource.fully_closed)

    blocked = Blocked(harness, body, "cancel")
    blocked.cancel_when_blocked(IN_CONDITION)
    blocked.cancelled_error()
    assert closed_on_exit == [True], "the block was left while the cancellation was closing"


def test_closing_on_a_cancelled_token_closes_and_raises_at_entry(
    cancelled_token: CancelToken,
) -> None:
    channel = Channel()
    entered = []
    with pytest.raises(Cancelled) as err, cancelled_token.closing(channel):
        entered.append(True)
    assert entered == []
    assert err.value.dn == "root"
    assert channel.closes == 1
    with loopback_pair() as (server_side, _):
        with pytest.raises(Cancelled), cancelled_token.closing(server_side):
            entered.append(True)
        assert server_side.fileno() == -1
    assert entered == []


def test_closing_closes_on_a_normal_exit_and_then_forgets_the_resource(
    harness: Harness,
) -> None:
    channel = Channel()
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    with token.closing(channel) as resource:
        assert resource is channel
        assert channel.closes == 0
    assert channel.closes == 1
    with loopback_pair() as (server_side, client):
        with token.closing(server_side) as conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        assert server_side.fileno() == -1
    with open(Path(__file__), "rb") as file, token.closing(file):
        pass
    assert file.closed
    sup.cancel()
    assert token.wait(10)
    assert sup.wait(10)
    assert channel.closes == 1  # unregistered on exit: the cancellation did not close again


def test_closing_lets_an_error_of_a_live_token_through_and_closes(
    live_token: CancelToken,
) -> None:
    channel = Channel()
    with pytest.raises(ValueError, match="not cancelled"), live_token.closing(channel):
        raise ValueError("not cancelled")
    assert channel.closes == 1


def test_closing_raises_cancelled_at_exit_when_cancelled_during_a_block_that_returns(
    harness: Harness,
) -> None:
    channel = Channel()
    ran_to_end = []

    def body(token: CancelToken) -> None:
        with token.closing(channel):
            token.wait()  # returns normally once cancelled
            ran_to_end.append(True)

    blocked = Blocked(harness, body, "cancel")
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    error = blocked.cancelled_error()
    assert error.__cause__ is None
    assert ran_to_end == [True]
    assert channel.closes == 1


def stay_until_the_close_was_tried(token: CancelToken, tried: threading.Event) -> None:
    """Inside ``token.closing(...)``: be HEALTHY until cancelled, then stay in the
    block until the cancelling thread has tried its close. Woken first, the
    runnable could otherwise leave the block and close the resource itself
    before the cancelling thread got to it."""
    token.on_cancel(tried.set)  # runs after the closing()'s own callback, in its thread
    token.signal(Signal.HEALTHY)
    token.wait()
    assert tried.wait(WAKE_BOUND)


def test_a_close_that_fails_in_the_cancelling_thread_is_logged_naming_the_resource(
    harness: Harness,
) -> None:
    """A sqlite3 connection may only be closed by the thread that made it: the close
    the cancellation runs in its own thread fails, and the ERROR names the connection."""
    connections: list[sqlite3.Connection] = []
    tried = threading.Event()

    def root(token: CancelToken) -> None:
        connections.append(sqlite3.connect(":memory:"))
        with token.closing(connections[0]):
            stay_until_the_close_was_tried(token, tried)

    sup = harness.start(root)
    wait_status(sup, "root", state=State.HEALTHY)
    sup.cancel()
    record = harness.logs.wait_for(event="callback_failed", dn="root")
    assert record.levelname == "ERROR"
    assert record.getMessage().startswith(
        f"on_cancel callback token.closing({connections[0]!r}) of root raised ProgrammingError"
    )
    assert record.exc_info is not None and record.exc_info[0] is sqlite3.ProgrammingError
    assert sup.wait(10)
    assert sup.snapshot()["root"].state is State.CANCELLED


def test_a_close_that_failed_in_the_cancelling_thread_runs_again_on_leaving_the_block(
    harness: Harness,
) -> None:
    closed_on_exit: list[bool] = []
    tried = threading.Event()

    def root(token: CancelToken) -> None:
        db = sqlite3.connect(":memory:")
        try:
            with token.closing(db):
                stay_until_the_close_was_tried(token, tried)
        finally:
            try:
                db.execute("SELECT 1")
            except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
                closed_on_exit.append(True)
            else:
                closed_on_exit.append(False)

    sup = harness.start(root)
    wait_status(sup, "root", state=State.HEALTHY)
    sup.cancel()
    assert sup.wait(10)
    assert len(harness.logs.find(event="callback_failed", dn="root")) == 1
    assert closed_on_exit == [True]
    assert sup.snapshot()["root"].state is State.CANCELLED


def read_line(token: CancelToken, file: Any) -> object:
    """Block in ``file.readline()`` inside ``token.closing(file)``."""
    with token.closing(file):
        return file.readline()  # empty at EOF, or once woken


@contextlib.contextmanager
def silent_child() -> Iterator[subprocess.Popen[bytes]]:
    """``cat`` with nothing to copy: its stdout stays silent until its stdin is
    closed; killed on leaving, which ends any read of its stdout."""
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        try:
            yield proc
        finally:
            proc.kill()


@contextlib.contextmanager
def called_aside(
    call: Callable[[], object], unblock: Callable[[], object]
) -> Iterator[threading.Event]:
    """Run ``call()`` on a thread of its own; yield an event set once it returns.

    On leaving, a call still blocked is released by ``unblock()``, and its thread
    joined: a test that fails because the call blocks leaves nothing behind.
    """
    returned = threading.Event()

    def run() -> None:
        try:
            call()
        finally:
            returned.set()

    thread = threading.Thread(target=run, name="test-called-aside")
    thread.start()
    try:
        yield returned
    finally:
        if not returned.is_set():
            unblock()
        thread.join(10)


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_closing_a_socket_file_wakes_its_reader_and_never_blocks_the_canceller(
    harness: Harness, text: bool
) -> None:
    """Closing a buffered or text file waits for its lock, which the reader blocked
    in ``readline()`` holds: a close would hold ``restart()`` and never wake the read.
    The socket under the file is shut down instead."""
    with loopback_pair() as (server_side, client):
        file = server_side.makefile("r") if text else server_side.makefile("rb")
        blocker = Blocker(lambda token: read_line(token, file))
        sup = harness.start(blocker)
        blocker.wait_blocked(IN_SOCKET_FILE)
        t0 = time.monotonic()
        with called_aside(functools.partial(sup.restart, "root"), client.close) as returned:
            assert returned.wait(WAKE_BOUND), "restart() blocked in the closing() callback"
        assert blocker.wait_ended(t0) < WAKE_BOUND
        assert isinstance(blocker.error, Cancelled)
        assert blocker.result is None
        wait_status(sup, "root", restarts=1, running=True)
        assert client.recv(1) == b""  # the peer sees the shutdown


@pytest.mark.parametrize("how", HOWS)
def test_closing_a_socket_file_wakes_a_blocked_writer_and_raises_cancelled(
    harness: Harness, how: str
) -> None:
    """A writer blocked in a buffered file's flush holds its lock as a reader
    does. The shutdown wakes it; the close on leaving the block, whose flush the
    shut-down socket refuses, gives `Cancelled` as the block's own errors do."""
    with loopback_pair() as (server_side, _):
        fill(server_side)  # the peer reads nothing: the first flush blocks
        file = server_side.makefile("wb")

        def body(token: CancelToken) -> None:
            with token.closing(file):
                while True:
                    file.write(b"line\n")

        blocked = Blocked(harness, body, how)
        assert blocked.cancel_when_blocked(IN_SOCKET_FILE_WRITE) < WAKE_BOUND
        error = blocked.cancelled_error()
        assert isinstance(error.__cause__, BrokenPipeError)  # the close's flush
        assert file.closed


def test_closing_a_pipe_never_blocks_the_canceller_though_its_read_is_not_woken(
    harness: Harness,
) -> None:
    """As with a socket file, closing a subprocess's stdout would hold ``restart()``
    until the child wrote. Nothing wakes a pipe's read on Linux (README): it ends when
    the child does, and the cancellation leaves the pipe alone meanwhile."""
    with silent_child() as proc:
        assert proc.stdin is not None
        blocker = Blocker(lambda token: read_line(token, proc.stdout))
        sup = harness.start(blocker)
        blocker.wait_blocked(IN_READLINE)
        with called_aside(functools.partial(sup.restart, "root"), proc.kill) as returned:
            assert returned.wait(WAKE_BOUND), "restart() blocked in the closing() callback"
        assert not blocker.ended.is_set()  # as the README says: nothing wakes it
        proc.stdin.close()  # cat exits: its stdout reaches EOF
        blocker.wait_ended(time.monotonic())
        assert isinstance(blocker.error, Cancelled)
        wait_status(sup, "root", restarts=1, running=True)


def test_stop_wakes_a_socket_file_reader_and_a_sibling_fired_after_it(harness: Harness) -> None:
    """The reader's callback runs first on the thread firing the stop: it must not
    block that thread, or neither the reader nor the sibling after it is woken, and
    stop() times out."""
    with loopback_pair() as (server_side, client):
        reader = Blocker(lambda token: read_line(token, server_side.makefile("rb")))
        sibling = Blocker(lambda token: token.get(queue.Queue()))  # woken by a callback
        sup = harness.start(group_root({"reader": reader, "sibling": sibling}, done=False))
        sibling.wait_blocked(IN_CONDITION)
        reader.wait_blocked(IN_SOCKET_FILE)
        t0 = time.monotonic()
        try:
            assert sup.stop(10), "stop() timed out"
        finally:
            client.close()  # the original code's reader returns only at EOF
        assert reader.wait_ended(t0) < WAKE_BOUND
        assert sibling.wait_ended(t0) < WAKE_BOUND
        assert isinstance(reader.error, Cancelled)
        assert isinstance(sibling.error, Cancelled)


def test_a_member_dying_beside_a_pipe_reader_is_not_held_up_by_its_callback(
    harness: Harness,
) -> None:
    """The dying member's thread runs the reader's closing() callback, which must not
    wait for the pipe's lock (the thread would live on, reported as a stuck callback):
    it ends at once; the reader, whose read nothing wakes, is reported stuck past its
    shutdown timeout, and the group restarts once the child ends."""
    with silent_child() as proc:
        assert proc.stdin is not None
        reader = Blocker(lambda token: read_line(token, proc.stdout))
        dier = RemoteRunnable()
        sup = harness.start(
            group_root({"reader": reader, "dier": dier}, done=False), shutdown_timeout=0.2
        )
        reader.wait_blocked(IN_READLINE)
        dying = dier.wait_incarnation(0)
        thread = dying.call(lambda token: threading.current_thread())
        dying.die(RuntimeError("dies beside the reader"))
        thread.join(WAKE_BOUND)
        assert not thread.is_alive(), "the dying member's thread is held up"
        wait_status(sup, "root.dier", state=State.DEAD, running=False)
        harness.logs.wait_for(event="stuck", dn="root.reader")
        assert harness.logs.find(event="callback_stuck") == []
        proc.stdin.close()  # cat exits: the reader's read returns at last
        wait_status(sup, "root.reader", restarts=1, running=True)
        wait_status(sup, "root.dier", restarts=1, running=True)
        assert isinstance(reader.error, Cancelled)


# ----------------------------------------------------------------------- get / put


@pytest.mark.parametrize("queue_type", QUEUE_TYPES, ids=lambda t: t.__name__)
def test_get_and_put_move_items_as_the_queue_type_orders_them(
    live_token: CancelToken, queue_type: type[queue.Queue[int]]
) -> None:
    q = queue_type()
    for item in (2, 1, 3):
        live_token.put(q, item)
    assert q.unfinished_tasks == 3  # as Queue.put counts them: q.join() works
    got = [live_token.get(q) for _ in range(3)]
    expected = {queue.Queue: [2, 1, 3], queue.LifoQueue: [3, 1, 2], queue.PriorityQueue: [1, 2, 3]}
    assert got == expected[queue_type]
    for _ in got:
        q.task_done()
    assert q.unfinished_tasks == 0
    assert q.empty()


def test_get_blocks_until_an_item_arrives(harness: Harness) -> None:
    q: queue.Queue[int] = queue.Queue()
    blocked = Blocked(harness, lambda t: t.get(q), "cancel")
    blocked.blocker.wait_blocked(IN_CONDITION)
    q.put(7)
    assert blocked.blocker.wait_ended(time.monotonic()) < WAKE_BOUND
    assert blocked.blocker.result == 7
    assert q.empty()


def test_put_blocks_until_there_is_room(harness: Harness) -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    q.put(1)
    blocked = Blocked(harness, lambda t: t.put(q, 2), "cancel")
    blocked.blocker.wait_blocked(IN_CONDITION)
    assert q.get_nowait() == 1
    assert blocked.blocker.wait_ended(time.monotonic()) < WAKE_BOUND
    assert blocked.blocker.error is None
    assert list(q.queue) == [2]


@pytest.mark.parametrize("queue_type", QUEUE_TYPES, ids=lambda t: t.__name__)
def test_get_on_a_cancelled_token_raises_and_leaves_the_items(
    cancelled_token: CancelToken, queue_type: type[queue.Queue[int]]
) -> None:
    q = queue_type()
    q.put(1)
    for timeout in (None, 0, 1.0):
        with pytest.raises(Cancelled):
            cancelled_token.get(q, timeout=timeout)
    assert list(q.queue) == [1]


@pytest.mark.parametrize("queue_type", QUEUE_TYPES, ids=lambda t: t.__name__)
def test_put_on_a_cancelled_token_raises_and_puts_nothing(
    cancelled_token: CancelToken, queue_type: type[queue.Queue[int]]
) -> None:
    q = queue_type()  # unbounded: there is room, yet nothing is put
    for timeout in (None, 0, 1.0):
        with pytest.raises(Cancelled):
            cancelled_token.put(q, 1, timeout=timeout)
    assert q.empty()
    assert q.unfinished_tasks == 0


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("queue_type", QUEUE_TYPES, ids=lambda t: t.__name__)
def test_get_on_an_empty_queue_wakes_on_cancellation(
    harness: Harness, queue_type: type[queue.Queue[int]], how: str
) -> None:
    q = queue_type()
    blocked = Blocked(harness, lambda t: t.get(q), how)
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    blocked.cancelled_error()
    assert q.empty()


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("queue_type", QUEUE_TYPES, ids=lambda t: t.__name__)
def test_put_on_a_full_queue_wakes_on_cancellation(
    harness: Harness, queue_type: type[queue.Queue[int]], how: str
) -> None:
    q = queue_type(maxsize=1)
    q.put(1)
    blocked = Blocked(harness, lambda t: t.put(q, 2), how)
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    blocked.cancelled_error()
    assert list(q.queue) == [1]  # the item was not put
    assert q.unfinished_tasks == 1


def test_get_times_out_with_queue_empty(live_token: CancelToken) -> None:
    q: queue.Queue[int] = queue.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        live_token.get(q, timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        live_token.get(q, timeout=0)
    assert time.monotonic() - t0 < WAKE_BOUND  # did not wait for an item
    q.put(5)
    assert live_token.get(q, timeout=0) == 5
    q.put(6)
    assert live_token.get(q, timeout=0.1) == 6


def test_put_times_out_with_queue_full(live_token: CancelToken) -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    live_token.put(q, 1, timeout=0)  # there is room: put at once
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        live_token.put(q, 2, timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        live_token.put(q, 2, timeout=0)
    assert time.monotonic() - t0 < WAKE_BOUND  # did not wait for room
    assert list(q.queue) == [1]
    assert q.unfinished_tasks == 1


def _wakeups() -> int:
    """How many times the calling thread has gone to sleep and woken up (Linux)."""
    status = Path(f"/proc/self/task/{threading.get_native_id()}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_blocked_helpers_sleep_without_polling(harness: Harness, live_token: CancelToken) -> None:
    empty: queue.Queue[int] = queue.Queue()
    full: queue.Queue[int] = queue.Queue(maxsize=1)
    full.put(0)
    other = RemoteRunnable()
    harness.start(other)
    other_token = other.wait_incarnation(0).token
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: live_token.get(empty, timeout=0.15),
        "put": lambda: live_token.put(full, 1, timeout=0.15),
        "wait_for(event)": lambda: live_token.wait_for(threading.Event(), timeout=0.15),
        "wait_for(future)": lambda: live_token.wait_for(concurrent.futures.Future(), 0.15),
        "wait_for(token)": lambda: live_token.wait_for(other_token, timeout=0.15),
    }
    for name, call in calls.items():
        cpu, wakeups = time.thread_time(), _wakeups()
        with contextlib.suppress(queue.Empty, queue.Full):
            call()
        # One sleep for the whole timeout (a few more for the interpreter lock);
        # polling every 10 ms would wake 15 times.
        assert _wakeups() - wakeups <= 5, f"{name} woke {_wakeups() - wakeups} times"
        assert time.thread_time() - cpu < 0.02, f"{name} used CPU while blocked"


def test_an_item_put_as_get_is_cancelled_stays_in_the_queue(harness: Harness) -> None:
    q: queue.Queue[int] = queue.Queue()
    blocked = Blocked(harness, lambda t: t.get(q), "cancel")
    blocked.blocker.wait_blocked(IN_CONDITION)
    putter = threading.Thread(target=q.put, args=(42,))
    with q.mutex:  # the blocked get cannot look at the queue until this block ends
        putter.start()  # puts once the block ends: just as the token is cancelled
        blocked.sup.cancel()
        token = blocked.blocker.token
        assert token is not None
        wait_until(lambda: token.cancelled, what="the token to be cancelled")
    putter.join(10)
    blocked.blocker.wait_ended(time.monotonic())
    blocked.cancelled_error()
    assert list(q.queue) == [42]  # not taken and lost


def test_cancellation_racing_a_put_never_loses_or_duplicates_an_item(
    harness: Harness,
) -> None:
    taken = 0
    for attempt in range(16):
        q: queue.Queue[int] = queue.Queue()
        got: list[int] = []

        def consume(token: CancelToken, q: queue.Queue[int] = q, got: list[int] = got) -> None:
            while True:
                got.append(token.get(q))

        blocked = Blocked(harness, consume, "cancel")
        blocked.blocker.wait_blocked(IN_CONDITION)
        if attempt % 2:
            q.put(attempt)
            blocked.sup.cancel()
        else:
            blocked.sup.cancel()
            q.put(attempt)
        assert blocked.sup.stop(10)
        blocked.cancelled_error()
        assert sorted(got + list(q.queue)) == [attempt], (got, list(q.queue))
        taken += len(got)
    assert 0 <= taken <= 16  # either outcome is right; what matters is exactly once


def test_a_put_racing_cancellation_has_put_the_item_exactly_when_it_returned(
    harness: Harness,
) -> None:
    for attempt in range(12):
        q: queue.Queue[int] = queue.Queue(maxsize=1)
        q.put(-1)

        def produce(token: CancelToken, q: queue.Queue[int] = q, item: int = attempt) -> None:
            token.put(q, item)

        blocked = Blocked(harness, produce, "cancel")
        blocked.blocker.wait_blocked(IN_CONDITION)
        assert q.get_nowait() == -1  # makes room as the token is cancelled
        blocked.sup.cancel()
        assert blocked.sup.stop(10)
        if blocked.blocker.error is None:
            assert list(q.queue) == [attempt]
        else:
            blocked.cancelled_error()
            assert q.empty()


@pytest.mark.parametrize("other", ["plain", "token"])
@pytest.mark.parametrize("op", ["get", "put"])
def test_a_call_cancelled_as_it_is_notified_passes_the_wake_up_on(
    harness: Harness, live_token: CancelToken, op: str, other: str
) -> None:
    """A ``put()``'s ``notify()`` that lands on a ``get()`` whose token is cancelled but
    not fired yet is passed on to the next waiter of the queue, a plain ``q.get()`` or
    a ``get()`` on a live token, not swallowed; and so for a ``get()``'s and ``put()``."""
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    if op == "put":
        q.put(0)
    blocked = Blocked(harness, lambda t: t.get(q) if op == "get" else t.put(q, 1), "cancel")
    blocked.blocker.wait_blocked(IN_CONDITION)  # first in line for the notify()

    waits_too: dict[str, Callable[[CancelToken], object]] = {
        "get-plain": lambda _: q.get(timeout=10),
        "get-token": lambda t: t.get(q, timeout=10),
        "put-plain": lambda _: q.put(2, timeout=10),
        "put-token": lambda t: t.put(q, 2, timeout=10),
    }
    waiter = in_thread(waits_too[f"{op}-{other}"], live_token)
    waiter.wait_blocked(IN_CONDITION)
    token = blocked.blocker.token
    assert token is not None
    with cancelled_unfired(token):
        t0 = time.monotonic()
        if op == "get":
            q.put(7)  # its notify() wakes the cancelled get()
        else:
            assert q.get_nowait() == 0  # its notify() wakes the cancelled put()
        blocked.blocker.wait_ended(t0)
        blocked.cancelled_error()
        assert waiter.wait_ended(t0) < WAKE_BOUND, "the other waiter was not woken"
    assert waiter.error is None
    if op == "get":
        assert waiter.result == 7
        assert q.empty()
    else:
        assert list(q.queue) == [2]


@pytest.mark.parametrize(
    "not_a_queue",
    [[], queue.SimpleQueue(), __import__("collections").deque(), None],
    ids=["list", "SimpleQueue", "deque", "None"],
)
def test_get_and_put_take_only_a_queue_queue(live_token: CancelToken, not_a_queue: Any) -> None:
    with pytest.raises(TypeError, match=r"queue\.Queue"):
        live_token.get(not_a_queue)
    with pytest.raises(TypeError, match=r"queue\.Queue"):
        live_token.put(not_a_queue, 1)


def test_get_and_put_say_what_to_do_with_a_multiprocessing_queue(
    live_token: CancelToken,
) -> None:
    mp_queue: Any = multiprocessing.Queue()
    try:
        calls: dict[str, Callable[[], object]] = {
            "get": lambda: live_token.get(mp_queue),
            "put": lambda: live_token.put(mp_queue, 1),
        }
        for method, call in calls.items():
            with pytest.raises(TypeError) as err:
                call()
            assert str(err.value) == (
                f"{method}() of root takes a queue.Queue or a subclass of it (LifoQueue, "
                "PriorityQueue), not multiprocessing.queues.Queue, which a cancellation "
                f"cannot wake: call its {method}() with a timeout in a loop that checks "
                "token.cancelled, or have a thread pass items between it and a queue.Queue"
            )
    finally:
        mp_queue.close()
        mp_queue.join_thread()


def test_get_and_put_reject_a_timeout_that_is_not_a_number(live_token: CancelToken) -> None:
    q: queue.Queue[int] = queue.Queue()
    bad: Any = "1"
    with pytest.raises(TypeError):
        live_token.get(q, timeout=bad)
    with pytest.raises(TypeError):
        live_token.put(q, 1, timeout=bad)
    assert q.empty()


# ------------------------------------------------------------------------ wait_for


def test_wait_for_an_event(live_token: CancelToken) -> None:
    event = threading.Event()
    t0 = time.monotonic()
    assert live_token.wait_for(event, timeout=0) is False
    assert live_token.wait_for(event, timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    threading.Timer(0.05, event.set).start()
    assert live_token.wait_for(event, timeout=10) is True
    assert live_token.wait_for(event) is True  # set already: at once
    assert live_token.wait_for(event, timeout=0) is True


def test_wait_for_an_event_set_and_cleared_at_once_returns_true(live_token: CancelToken) -> None:
    """As ``Event.wait`` does: a ``set()`` wakes it with ``True`` even when ``clear()``
    came before the woken thread could look at the flag."""
    event = threading.Event()
    for _ in range(10):
        waiting = in_thread(lambda t: t.wait_for(event, timeout=10), live_token)
        plain = in_thread(lambda _: event.wait(10), live_token)
        for blocker in (waiting, plain):
            assert blocker.ready.wait(10)
            wait_blocked(blocker.ident, IN_CONDITION)
        t0 = time.monotonic()
        event.set()
        event.clear()
        assert plain.wait_ended(t0) < WAKE_BOUND
        assert plain.result is True
        assert waiting.wait_ended(t0) < WAKE_BOUND, "wait_for missed the pulse"
        assert waiting.result is True


@pytest.mark.parametrize("kind", ["event", "future"])
def test_cancelling_wait_for_wakes_no_other_thread_waiting_on_the_same(
    harness: Harness, kind: str
) -> None:
    """The cancellation ends its own call only: a thread in ``event.wait()`` does not
    return ``True`` for an event never set, nor ``future.result()`` raise ``TimeoutError``."""
    awaited: Any = threading.Event() if kind == "event" else concurrent.futures.Future()
    blocked = Blocked(harness, lambda t: t.wait_for(awaited), "cancel")
    blocked.blocker.wait_blocked(IN_CONDITION)
    token = blocked.blocker.token
    assert token is not None
    plain = in_thread(
        lambda _: awaited.wait(10) if kind == "event" else awaited.result(timeout=10), token
    )
    plain.wait_blocked(IN_CONDITION)
    blocked.cancel_when_blocked(IN_CONDITION)
    blocked.cancelled_error()
    assert not plain.ended.wait(BLOCKED_FOR), f"woken by another's cancellation: {plain.error!r}"
    if kind == "event":
        awaited.set()
    else:
        awaited.set_result(True)
    plain.wait_ended(time.monotonic())
    assert plain.result is True


def test_wait_for_a_future(live_token: CancelToken) -> None:
    pending: concurrent.futures.Future[object] = concurrent.futures.Future()
    assert live_token.wait_for(pending, timeout=0) is False
    t0 = time.monotonic()
    assert live_token.wait_for(pending, timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    threading.Timer(0.05, pending.set_result, args=(1,)).start()
    assert live_token.wait_for(pending, timeout=10) is True
    assert live_token.wait_for(pending) is True

    failed: concurrent.futures.Future[object] = concurrent.futures.Future()
    failed.set_exception(ValueError("boom"))
    assert live_token.wait_for(failed) is True  # finished, with an error: still True

    # A cancelled future is done. (Bounded: wait_for must not wait for the timeout.)
    cancelled: concurrent.futures.Future[object] = concurrent.futures.Future()
    assert cancelled.cancel()
    t0 = time.monotonic()
    assert live_token.wait_for(cancelled, timeout=30) is True
    assert time.monotonic() - t0 < WAKE_BOUND, (
        "wait_for waited out its timeout on a cancelled future"
    )
    cancelled = concurrent.futures.Future()
    threading.Timer(0.05, cancelled.cancel).start()
    t0 = time.monotonic()
    assert live_token.wait_for(cancelled, timeout=30) is True
    assert time.monotonic() - t0 < WAKE_BOUND, "a future cancelled during wait_for did not wake it"


def test_wait_for_another_token(harness: Harness, live_token: CancelToken) -> None:
    other = RemoteRunnable()
    other_sup = harness.start(other)
    other_token = other.wait_incarnation(0).token
    assert live_token.wait_for(other_token, timeout=0) is False
    t0 = time.monotonic()
    assert live_token.wait_for(other_token, timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    threading.Timer(0.05, other_sup.cancel).start()
    assert live_token.wait_for(other_token, timeout=10) is True
    assert live_token.wait_for(other_token) is True  # cancelled already: at once
    assert not live_token.cancelled


def _awaitables(harness: Harness) -> dict[str, object]:
    other = RemoteRunnable()
    harness.start(other)
    return {
        "event": threading.Event(),
        "future": concurrent.futures.Future(),
        "token": other.wait_incarnation(0).token,
    }


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["event", "future", "token"])
def test_wait_for_wakes_on_cancellation(harness: Harness, kind: str, how: str) -> None:
    awaited: Any = _awaitables(harness)[kind]
    blocked = Blocked(harness, lambda t: t.wait_for(awaited), how)
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    blocked.cancelled_error()


@pytest.mark.parametrize("kind", ["event", "future", "token"])
def test_wait_for_on_a_cancelled_token_raises_even_if_the_awaited_is_ready(
    harness: Harness, cancelled_token: CancelToken, kind: str
) -> None:
    awaited: Any = _awaitables(harness)[kind]
    for timeout in (None, 0, 1.0):
        with pytest.raises(Cancelled):
            cancelled_token.wait_for(awaited, timeout=timeout)
    if kind == "event":
        awaited.set()
    elif kind == "future":
        awaited.set_result(None)
    else:
        awaited = cancelled_token  # a cancelled token, waited for by a cancelled one
    with pytest.raises(Cancelled):
        cancelled_token.wait_for(awaited)


@pytest.mark.parametrize(
    "wrong", [None, 1, threading.Lock(), queue.Queue()], ids=lambda wrong: type(wrong).__name__
)
def test_wait_for_rejects_other_types(live_token: CancelToken, wrong: Any) -> None:
    with pytest.raises(TypeError, match="wait_for"):
        live_token.wait_for(wrong, timeout=0)


# ----------------------------------------------------------------------- deadlines


def test_fail_after_raises_deadline_exceeded_naming_the_dn(harness: Harness) -> None:
    child = RemoteRunnable()
    harness.start(RemoteRunnable(lambda t: t.run("worker", child)))
    token = child.wait_incarnation(0).token
    q: queue.Queue[int] = queue.Queue()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as err, token.fail_after(0.1) as scoped:
        assert scoped.deadline == pytest.approx(t0 + 0.1, abs=0.05)
        scoped.get(q)
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 0.1 + WAKE_BOUND
    assert isinstance(err.value, TimeoutError)
    assert isinstance(err.value, ThreadsupError)
    assert "root.worker" in str(err.value)
    assert isinstance(err.value.__cause__, Cancelled)
    assert expired(scoped)
    assert scoped.cancelled
    assert not token.cancelled  # the node goes on


def test_fail_after_raises_only_when_cancelled_leaves_the_block(live_token: CancelToken) -> None:
    # Like trio's: a block that notices the deadline and ends normally raises nothing.
    with live_token.fail_after(0.05) as scoped:
        assert scoped.wait() is True  # wait() returns at the deadline, it does not raise
    assert expired(scoped)
    with live_token.fail_after(0.05) as scoped:
        try:
            block(scoped)
        except Cancelled:
            pass  # caught inside: the block ends normally
    assert expired(scoped)


def test_a_deadline_exceeded_escaping_the_runnable_is_a_death(harness: Harness) -> None:
    def worker(token: CancelToken) -> None:
        with token.fail_after(0.05) as scoped:
            block(scoped)

    sup = harness.start(RemoteRunnable(lambda t: t.run("worker", worker)))
    status = wait_status(sup, "root.worker", restarts=1)
    assert status.last_error is not None
    assert status.last_error.startswith("DeadlineExceeded: root.worker")


def test_move_on_after_ends_the_block_at_the_deadline(live_token: CancelToken) -> None:
    q: queue.Queue[int] = queue.Queue()
    after = []
    t0 = time.monotonic()
    with live_token.move_on_after(0.1) as scoped:
        scoped.get(q)
        after.append("inside")  # never reached: get raised Cancelled
    after.append("after")
    assert 0.09 <= time.monotonic() - t0 < 0.1 + WAKE_BOUND
    assert after == ["after"]
    assert expired(scoped)
    assert not live_token.cancelled


def test_a_block_done_before_its_deadline_has_not_expired_and_never_fires(
    live_token: CancelToken,
) -> None:
    fired: list[str] = []
    scopes = []
    for scope in (live_token.fail_after, live_token.move_on_after):
        with scope(0.05) as scoped:
            scoped.on_cancel(lambda: fired.append("scoped"))
            assert not scoped.cancelled
        scopes.append(scoped)
    time.sleep(0.15)  # past both deadlines: the disarmed timers must not fire
    assert fired == []
    assert not any(s.cancelled or expired(s) for s in scopes)


def test_fail_at_and_move_on_at_take_an_absolute_monotonic_deadline(
    live_token: CancelToken,
) -> None:
    deadline = time.monotonic() + 0.1
    with pytest.raises(DeadlineExceeded), live_token.fail_at(deadline) as scoped:
        assert scoped.deadline == deadline
        block(scoped)
    assert deadline <= time.monotonic() < deadline + WAKE_BOUND
    deadline = time.monotonic() + 0.1
    with live_token.move_on_at(deadline) as scoped:
        assert scoped.deadline == deadline
        assert scoped.wait() is True
    assert deadline <= time.monotonic() < deadline + WAKE_BOUND
    assert expired(scoped)


@pytest.mark.parametrize(
    "scope",
    ["fail_after(0)", "fail_at(past)", "move_on_after(0)", "move_on_at(past)"],
)
def test_a_deadline_already_past_cancels_the_scoped_token_at_once(
    live_token: CancelToken, scope: str
) -> None:
    past = time.monotonic() - 1
    manager = {
        "fail_after(0)": lambda: live_token.fail_after(0),
        "fail_at(past)": lambda: live_token.fail_at(past),
        "move_on_after(0)": lambda: live_token.move_on_after(0),
        "move_on_at(past)": lambda: live_token.move_on_at(past),
    }[scope]()
    q: queue.Queue[int] = queue.Queue()
    q.put(1)
    reached = []
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        if scope.startswith("fail"):
            stack.enter_context(pytest.raises(DeadlineExceeded))
        scoped = stack.enter_context(manager)
        assert scoped.cancelled
        scoped.get(q)  # raises Cancelled at once, though an item is there
        reached.append(True)
    assert time.monotonic() - t0 < WAKE_BOUND
    assert reached == []
    assert expired(scoped)
    assert list(q.queue) == [1]


def test_nested_scopes_the_inner_deadline_first(live_token: CancelToken) -> None:
    # An inner move_on_after ends only its own block; the outer goes on.
    steps = []
    with live_token.fail_after(5) as outer:
        with outer.move_on_after(0.05) as inner:
            block(inner)
        steps.append("inner ended")
        assert not outer.cancelled
    assert steps == ["inner ended"]
    assert expired(inner)
    assert not expired(outer)
    # An inner fail_after raises through an outer move_on_after, which does not swallow it.
    outer_scope = live_token.move_on_after(5)
    with pytest.raises(DeadlineExceeded), outer_scope as outer, outer.fail_after(0.05) as inner:
        block(inner)
    assert expired(inner)
    assert not expired(outer)
    assert not live_token.cancelled


def test_nested_scopes_the_outer_deadline_first(live_token: CancelToken) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded), live_token.fail_after(0.05) as outer:
        with outer.move_on_after(5) as inner:
            assert deadline_of(inner) > deadline_of(outer)
            block(inner)  # woken by the outer deadline
        pytest.fail("the inner block swallowed the outer deadline")
    assert time.monotonic() - t0 < 0.05 + WAKE_BOUND
    assert expired(outer)
    assert not expired(inner)  # cancelled by its parent, not by its own deadline
    assert inner.cancelled
    with live_token.move_on_after(0.05) as outer:
        with outer.fail_after(5) as inner:
            block(inner)  # Cancelled by the outer deadline, re-raised by the inner block
        raise AssertionError("the inner block swallowed the outer deadline")
    assert expired(outer)
    assert not expired(inner)


@pytest.mark.parametrize("scope", ["fail_after", "move_on_after"])
def test_cancelling_the_node_inside_a_scope_raises_cancelled_not_a_deadline(
    harness: Harness, scope: str
) -> None:
    q: queue.Queue[int] = queue.Queue()
    scopes: list[CancelToken] = []

    def body(token: CancelToken) -> None:
        with getattr(token, scope)(30) as scoped:
            scopes.append(scoped)
            scoped.get(q)

    blocked = Blocked(harness, body, "cancel")
    assert blocked.cancel_when_blocked(IN_CONDITION) < WAKE_BOUND
    blocked.cancelled_error()  # Cancelled came out of both kinds of block
    assert not expired(scopes[0])
    assert scopes[0].cancelled


def test_a_scope_on_a_cancelled_token_raises_cancelled(cancelled_token: CancelToken) -> None:
    for scope in (cancelled_token.fail_after, cancelled_token.move_on_after):
        with pytest.raises(Cancelled), scope(5) as scoped:
            assert scoped.cancelled
            scoped.raise_if_cancelled()
        assert not expired(scoped)


def test_a_scoped_token_closes_and_calls_back_at_its_deadline(live_token: CancelToken) -> None:
    called_at: list[float] = []
    with loopback_pair() as (server_side, _):
        t0 = time.monotonic()
        with live_token.move_on_after(0.1) as scoped:
            scoped.on_cancel(lambda: called_at.append(time.monotonic()))
            with scoped.closing(server_side) as conn:
                conn.recv(1024)  # woken by the deadline: shut down and closed
                scoped.raise_if_cancelled()
        assert server_side.fileno() == -1
    assert len(called_at) == 1
    assert t0 + 0.09 <= called_at[0] < t0 + 0.1 + WAKE_BOUND
    assert expired(scoped)
    assert not live_token.cancelled


@pytest.mark.parametrize("scope", ["fail_after", "move_on_after"])
def test_a_scoped_token_is_cancelled_in_full_with_its_node_after_its_block(
    harness: Harness, scope: str
) -> None:
    """Once its block is left early, a scoped token still follows the node's token:
    cancelling the node wakes what waits on it, from inside the block or after it,
    and runs its callbacks."""
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    q: queue.Queue[int] = queue.Queue()
    called: list[str] = []
    with getattr(token, scope)(30) as scoped:
        inside = in_thread(lambda _: scoped.get(q, timeout=10), token)
        inside.wait_blocked(IN_CONDITION)
        scoped.on_cancel(lambda: called.append("inside"))
    assert not scoped.cancelled
    after = in_thread(lambda _: scoped.get(q, timeout=10), token)
    waiting = in_thread(lambda _: scoped.wait(10), token)
    after.wait_blocked(IN_CONDITION)
    waiting.wait_blocked(IN_CONDITION)
    scoped.on_cancel(lambda: called.append("after"))
    t0 = time.monotonic()
    sup.cancel()
    for blocker in (inside, after, waiting):
        assert blocker.wait_ended(t0) < WAKE_BOUND, "not woken by the node's cancellation"
    assert isinstance(inside.error, Cancelled)
    assert isinstance(after.error, Cancelled)
    assert waiting.result is True
    wait_until(lambda: sorted(called) == ["after", "inside"], what="the callbacks to run")
    assert scoped.cancelled
    assert not expired(scoped)
    t0 = time.monotonic()
    assert scoped.wait(5) is True
    assert time.monotonic() - t0 < WAKE_BOUND
    scoped.on_cancel(lambda: called.append("late"))
    assert called[-1] == "late"  # at once, in this thread


def test_a_deadline_timer_firing_as_its_block_ends_changes_nothing(
    live_token: CancelToken,
) -> None:
    with live_token.move_on_after(30) as scoped:
        pass
    assert isinstance(scoped, ScopedToken)
    scoped._expire()  # what a timer taken off the heap just before the disarm does
    assert not scoped.cancelled
    assert not scoped.expired
    assert scoped.wait(0) is False


def test_blocks_leave_nothing_behind_on_the_token(live_token: CancelToken) -> None:
    """A long-lived runnable may enter any number of blocks: none leaves a callback
    on its token, and what waits on a scoped token after its block stays registered
    only while it waits."""
    before = len(live_token._callbacks or ())
    for _ in range(100_000):
        with live_token.move_on_after(math.inf) as scoped:
            scoped.raise_if_cancelled()
    assert len(live_token._callbacks or ()) == before
    q: queue.Queue[int] = queue.Queue()
    with live_token.move_on_after(30) as scoped:
        inside = in_thread(lambda _: scoped.get(q, timeout=10), live_token)
        inside.wait_blocked(IN_CONDITION)
        unregister = scoped.on_cancel(lambda: None)
    after = in_thread(lambda _: scoped.get(q, timeout=10), live_token)
    after.wait_blocked(IN_CONDITION)
    q.put(1)
    q.put(2)
    t0 = time.monotonic()
    for blocker in (inside, after):
        blocker.wait_ended(t0)
    assert {inside.result, after.result} == {1, 2}
    unregister()
    assert len(live_token._callbacks or ()) == before


def test_scoped_run_and_signal_go_to_the_node(harness: Harness) -> None:
    child = RemoteRunnable()

    def root(token: CancelToken) -> None:
        with token.fail_after(30) as scoped:
            assert scoped.dn == token.dn == "root"
            assert scoped.name == "root"
            assert scoped.logger is token.logger
            scoped.run("child", child)
            scoped.signal(Signal.HEALTHY)
        with token.move_on_after(0) as expired_scope:
            expired_scope.raise_if_cancelled()
        with pytest.raises(Cancelled):  # an expired scope changes nothing
            expired_scope.signal(Signal.DONE)
        with pytest.raises(Cancelled):
            expired_scope.run("late", child)
        token.wait()

    sup = harness.start(root)
    child.wait_incarnation(0)
    assert sup.wait_settled(10)
    snap = sup.snapshot()
    assert list(snap) == ["root", "root.child"]
    assert snap["root"].state is State.HEALTHY
    assert snap["root"].running
    assert snap["root"].restarts == 0


@pytest.mark.parametrize("bad", ["1", None, True, [1]], ids=repr)
def test_deadlines_reject_a_time_that_is_not_a_number(live_token: CancelToken, bad: Any) -> None:
    """NaN is a number: a `ValueError`, as test_seconds.py checks with the other values."""
    for scope in (
        live_token.fail_after,
        live_token.move_on_after,
        live_token.fail_at,
        live_token.move_on_at,
    ):
        with pytest.raises(TypeError):
            scope(bad)


def test_scopes_use_no_thread_of_their_own(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    token = root.wait_incarnation(0).token
    assert sup.wait_settled(10)
    before = set(threading.enumerate())
    with contextlib.ExitStack() as stack:
        scoped = token
        for _ in range(50):
            scoped = stack.enter_context(scoped.move_on_after(30))
        assert set(threading.enumerate()) == before  # 50 armed deadlines, no new thread
    for _ in range(100):
        with token.fail_after(0.02) as short:
            pass  # left early: its timer is disarmed
    for _ in range(5):
        with token.move_on_after(0.01) as short:
            short.wait()
    assert expired(short)
    wait_until(
        lambda: {t for t in threading.enumerate() if t.is_alive()} <= before,
        what="the deadline timers' helper threads to end",
    )


def test_the_supervisor_stops_cleanly_with_deadlines_pending(harness: Harness) -> None:
    entered = threading.Event()

    def root(token: CancelToken) -> None:
        with token.move_on_after(60) as scoped:
            entered.set()
            scoped.wait()

    sup: Supervisor = harness.start(root)
    assert entered.wait(10)
    assert sup.stop(10)
