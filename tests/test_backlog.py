"""`Supervisor(log_backlog=)` and `Supervisor.logs`: the last records of every
node, kept in memory with the node and going with it."""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from threadsup import (
    Backoff,
    CancelToken,
    DuplicateName,
    Signal,
    State,
    Supervisor,
    UnknownNode,
)
from threadsup._events import Backlog
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    RecordingHandler,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_status,
    wait_until,
)

#: The spawned children of the memory test, and how many of their names exist at once.
CHILDREN = 10_000
#: Unique logger names: an id() can repeat once its object is gone.
_LOGGER_IDS = itertools.count()
NAMES = 50
#: Lines each of them logs.
LINES = 3


def start(harness: Harness, root: RemoteRunnable, **options: object) -> Supervisor:
    sup = Supervisor(root, logger=harness.logger, backoff=FAST_BACKOFF, **options)  # type: ignore[arg-type]
    harness.track(sup)
    return sup.start()


def messages(sup: Supervisor, dn: str) -> list[str]:
    return [record.getMessage() for record in sup.logs(dn)]


def events(sup: Supervisor, dn: str) -> list[str]:
    """The ``event`` of each record in ``dn``'s backlog, ``"log"`` for the node's own."""
    return [getattr(record, "event", "log") for record in sup.logs(dn)]


class without_pytest_capture:
    """Take pytest's log-capture handlers off ``logger`` until `close`: they keep
    every record they see, and in some runs (tox) they sit on the test's own
    logger, which a memory bound would then measure."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.handlers = [h for h in logger.handlers if type(h).__module__.startswith("_pytest")]
        for handler in self.handlers:
            logger.removeHandler(handler)

    def close(self) -> None:
        for handler in self.handlers:
            self.logger.addHandler(handler)


@pytest.fixture
def quiet_logger() -> Iterator[logging.Logger]:
    """A base logger at INFO whose records go nowhere: neither a recording
    handler nor pytest's capture keeps them."""
    logger = logging.getLogger(f"threadsup_test.backlog_{next(_LOGGER_IDS)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


# ---------------------------------------------------------------- contents


def test_each_record_lands_in_its_node_s_backlog(harness: Harness) -> None:
    """The node's own lines (on `token.logger` and loggers below it), its
    lifecycle records and the traceback of its death, oldest first; a child's
    lines in the child's."""

    def child(token: CancelToken) -> None:
        token.logger.info("child line")
        token.signal(Signal.HEALTHY)
        token.wait()

    def setup(token: CancelToken) -> None:
        token.logger.info("a's line %d", 1)
        token.logger.getChild("db").warning("below a's logger")
        token.run("b", child)

    a = RemoteRunnable(setup)
    root = RemoteRunnable(lambda t: t.run("a", a))
    sup = start(harness, root)
    a.wait_incarnation(0).healthy()
    wait_status(sup, "root.a.b", state=State.HEALTHY)
    a.current.die(RuntimeError("a dies"))
    a.wait_incarnation(1).healthy()
    wait_status(sup, "root.a.b", state=State.HEALTHY)

    assert events(sup, "root.a") == [
        *["started", "log", "log", "healthy", "died", "restart_scheduled"],
        *["started", "log", "log", "healthy"],
    ]
    kept = sup.logs("root.a")
    assert all(isinstance(record, logging.LogRecord) for record in kept)
    assert kept[1].getMessage() == "a's line 1"
    assert kept[1].name == f"{harness.base}.root.a"
    assert kept[2].name == f"{harness.base}.root.a.db"
    died = kept[4]
    assert (
        died.levelno == logging.ERROR and died.getMessage() == "root.a died: RuntimeError: a dies"
    )
    assert died.exc_info is not None and str(died.exc_info[1]) == "a dies"
    assert [record.created for record in kept] == sorted(record.created for record in kept)
    # b is a new node after a's restart: its backlog is the new one's.
    assert events(sup, "root.a.b") == ["started", "log", "healthy"]
    assert messages(sup, "root.a.b")[1] == "child line"
    root.current.call(lambda t: t.logger.info("root's line"))
    assert events(sup, "root") == ["started", "log"]
    sup.stop(timeout=10)
    assert events(sup, "root.a")[-1] == "cancelled"  # still there once the tree has stopped


def test_lifecycle_records_from_info_up_are_kept_whatever_the_level(
    quiet_logger: logging.Logger,
) -> None:
    """At WARNING, the node's INFO line is never made, so not kept, nor are its
    DEBUG lifecycle records (started, healthy: kept, they would cost every
    start); its INFO and ERROR ones are; the program's handlers print nothing
    more."""
    quiet_logger.setLevel(logging.WARNING)
    printed = RecordingHandler()
    quiet_logger.addHandler(printed)
    runs: list[int] = []

    def a(token: CancelToken) -> None:
        token.logger.info("not made")
        token.logger.warning("made")
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("once")
        healthy_until_cancelled(token)

    root = RemoteRunnable(lambda t: t.run("a", a))
    sup = Supervisor(root, logger=quiet_logger, backoff=FAST_BACKOFF).start()
    try:
        wait_status(sup, "root.a", state=State.HEALTHY, restarts=1)
        kept = ["log", "died", "restart_scheduled", "log"]
        wait_until(lambda: events(sup, "root.a") == kept, what="four records of root.a")
        assert messages(sup, "root.a")[0] == "made"
    finally:
        assert sup.stop(timeout=10)
        quiet_logger.removeHandler(printed)
    assert all(r.levelno >= logging.WARNING for r in printed.records), printed.records
    assert [r.getMessage() for r in printed.records].count("made") == 2


UNCONFIGURED_SCRIPT = """
import sys
from threadsup import Signal, Supervisor

def root(token):
    token.logger.warning("a warning of %s", token.dn)
    token.logger.info("an info line")
    token.signal(Signal.HEALTHY)
    token.wait()

trees = [Supervisor(root).start() for _ in range(2)]  # both on the logger "threadsup"
for sup in trees:
    assert sup.wait_settled(10)
    # "started" (DEBUG) is not kept at WARNING: the warning comes first.
    assert [r.getMessage() for r in sup.logs("root")][0] == "a warning of root"
    assert sup.stop(10)
print("stopped", flush=True)
"""


def test_a_program_without_logging_configured_prints_what_it_did() -> None:
    """Logging prints a WARNING that no handler takes on stderr (its last
    resort); the backlog's handler takes it, and must not silence it. Each
    tree's warning is printed once, though two backlogs see both."""
    result = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped\n"
    assert result.stderr.splitlines() == ["a warning of root"] * 2


def test_the_newest_records_are_kept(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = start(harness, root, log_backlog=5)

    def log_lines(token: CancelToken) -> None:
        for n in range(20):
            token.logger.info("line %d", n)

    root.wait_incarnation(0).call(log_lines)
    assert messages(sup, "root") == [f"line {n}" for n in range(15, 20)]


def test_a_crash_looping_node_keeps_its_last_records_and_no_more(harness: Harness) -> None:
    """Each death's record holds its traceback: the oldest go as new ones come,
    and the memory in use stays where it was once the backlog was full."""
    harness.logger.propagate = False  # 300 tracebacks
    uncaptured = without_pytest_capture(harness.logger)
    deaths: queue.Queue[int] = queue.Queue()

    def child(token: CancelToken) -> None:
        raise RuntimeError(f"death {token.get(deaths)}")

    quick = Backoff(initial=0.001, multiplier=1, jitter=0)
    sup = start(harness, RemoteRunnable(lambda t: t.run("a", child, backoff=quick)), log_backlog=10)
    used = []
    tracemalloc.start()
    try:
        for restarts in (100, 200, 300):
            for death in range(restarts - 100, restarts):
                deaths.put(death)
            wait_status(sup, "root.a", restarts=restarts, running=True)
            assert sup.wait_settled(timeout=10)
            harness.logs.clear()
            gc.collect()
            used.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        uncaptured.close()
    kept = sup.logs("root.a")
    assert len(kept) == 10
    assert [getattr(r, "event", "log") for r in kept[-3:]] == [
        "died",
        "restart_scheduled",
        "started",
    ]
    assert kept[-3].getMessage() == "root.a died: RuntimeError: death 299"
    assert kept[-3].exc_info is not None
    # Kept, 100 more deaths' records would take 100 x ~3 kB; the first round fills
    # the backlog. What else a restart leaves about (threads, allocator state)
    # measured up to ~2 kB a death on a loaded machine: the bound is between.
    growth = used[2] - used[1]
    assert growth < 200 * 1024, f"{growth} bytes more after 100 more deaths"


def test_unknown_dns_and_nodes_without_records(harness: Harness) -> None:
    sup = harness.track(Supervisor(healthy_until_cancelled, logger=harness.logger))
    assert sup.logs("root") == []  # not started: nothing happened yet
    for dn in ("root.nope", "nope", "", 42):
        with pytest.raises(UnknownNode):
            sup.logs(dn)  # type: ignore[arg-type]


def test_a_backlog_of_0_keeps_nothing_and_installs_no_handler(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = start(harness, root, log_backlog=0)
    root.wait_incarnation(0).call(lambda t: t.logger.warning("a line"))
    assert sup.logs("root") == []
    assert not [h for h in harness.logger.handlers if isinstance(h, Backlog)]
    with pytest.raises(UnknownNode):
        sup.logs("root.a")


def test_the_handler_is_on_the_base_logger_while_the_tree_runs(harness: Harness) -> None:
    sup = harness.track(Supervisor(healthy_until_cancelled, logger=harness.logger))
    assert not [h for h in harness.logger.handlers if isinstance(h, Backlog)]
    sup.start()
    assert len([h for h in harness.logger.handlers if isinstance(h, Backlog)]) == 1
    assert sup.stop(timeout=10)
    wait_until(lambda: not [h for h in harness.logger.handlers if isinstance(h, Backlog)])


def test_two_trees_on_one_base_logger_keep_their_own_lines(harness: Harness) -> None:
    """Both have a root.a: each runnable's lines go to its own tree's backlog."""

    def a(token: CancelToken) -> None:
        token.logger.warning("from %s", threading.current_thread().name)
        healthy_until_cancelled(token)

    trees = [start(harness, RemoteRunnable(lambda t: t.run("a", a))) for _ in range(2)]
    for sup in trees:
        wait_status(sup, "root.a", state=State.HEALTHY)
    for sup in trees:
        assert events(sup, "root.a") == ["started", "log", "healthy"]


# ------------------------------------------------------------ with the node


def test_a_spawned_child_s_backlog_goes_with_it(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = start(harness, root)
    inc = root.wait_incarnation(0)

    def child(token: CancelToken) -> None:
        token.logger.info("incarnation of %s", token.dn)
        healthy_until_cancelled(token)

    inc.call(lambda t: t.spawn("c", child))
    wait_status(sup, "root.c", state=State.HEALTHY)
    assert events(sup, "root.c") == ["started", "log", "healthy"]
    assert sup.remove("root.c", timeout=10)
    with pytest.raises(UnknownNode):
        sup.logs("root.c")
    inc.call(lambda t: t.spawn("c", child))  # the same name: a new node, a new backlog
    wait_status(sup, "root.c", state=State.HEALTHY)
    assert events(sup, "root.c") == ["started", "log", "healthy"]


@pytest.mark.slow
def test_ten_thousand_spawned_children_leave_no_records_behind(
    quiet_logger: logging.Logger,
) -> None:
    """A server spawning a child per connection: 10,000 temporary children each
    log a few lines and exit. The memory traced after all of them is within a
    small bound of that after the first 1,000: what they kept left with them."""
    done = threading.Event()
    spawned = [0]
    marks: dict[int, int] = {}

    def connection(token: CancelToken) -> None:
        for line in range(LINES):
            token.logger.info("request %d of %s", line, token.dn)

    def server(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        while spawned[0] < CHILDREN:
            try:
                token.spawn(f"c{spawned[0] % NAMES}", connection)
            except DuplicateName:  # that name's last child has not left yet
                token.wait(0.001)
                continue
            spawned[0] += 1
            if spawned[0] in (1_000, CHILDREN):
                marks[spawned[0]] = settle()
        done.set()
        token.wait()

    def settle() -> int:
        """Memory in use once every child spawned so far has left the tree."""
        wait_until(lambda: list(sup.snapshot()) == ["root"], 30, "the children to leave")
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    uncaptured = without_pytest_capture(quiet_logger)
    tracemalloc.start()
    sup = Supervisor(server, logger=quiet_logger, backoff=FAST_BACKOFF)
    try:
        sup.start()
        assert done.wait(120)
        assert list(sup.snapshot()) == ["root"]
        growth = marks[CHILDREN] - marks[1_000]
        # Kept, the records of 9,000 more children (started, LINES lines, exited,
        # removed) would take megabytes.
        assert growth < 512 * 1024, f"{growth} bytes more after 9,000 more children"
    finally:
        tracemalloc.stop()
        uncaptured.close()
        assert sup.stop(timeout=10)


# -------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("value", "error"),
    [(True, TypeError), ("5", TypeError), (5.0, TypeError), (None, TypeError), (-1, ValueError)],
)
def test_log_backlog_is_a_count(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"log_backlog of Supervisor\(\) must be an int"):
        Supervisor(healthy_until_cancelled, log_backlog=value)  # type: ignore[arg-type]
