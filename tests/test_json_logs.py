"""Logging for a service: `configure_logging` (text or JSON lines for the whole
process), `JsonFormatter`, and `configure_json_logging` without duplicates.

What a service prints is tested in a fresh interpreter, on its real stderr;
in-process tests restore the logging state they change with `restored_logging`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

import threadsup
from threadsup import JsonFormatter, configure_json_logging
from threadsup._logs import configure_logging
from threadsup.testing import RecordingHandler

REPO = Path(threadsup.__file__).resolve().parent.parent

#: ISO 8601, UTC, to the millisecond.
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|\+00:00)")


def run_program(code: str, *args: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run ``code`` in a fresh interpreter that imports this checkout's threadsup, in a
    time zone far from UTC; return the time (UTC seconds) before and after, and the run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["TZ"] = "Asia/Kolkata"  # +05:30: local times would show
    before = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
    )
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return before, after, proc


def strict_json(line: str) -> dict[str, Any]:
    """``line`` parsed as standard JSON (no NaN or Infinity), which must be an object."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(line, parse_constant=reject)
    assert isinstance(value, dict), line
    return value


def parse_utc(stamp: str) -> float:
    assert ISO_UTC.fullmatch(stamp), stamp
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert at.utcoffset() is not None and at.utcoffset() == timezone.utc.utcoffset(None)
    return at.timestamp()


T = TypeVar("T")


def only(items: list[T], what: str) -> T:
    assert len(items) == 1, f"{len(items)} {what}, not 1: {items}"
    return items[0]


# A service: a runnable that logs on its token.logger and on the program's own
# logger, dies once (a traceback), restarts, then the tree is stopped.
SERVICE = """
    import logging, sys, threading
    from threadsup import Backoff, Signal, Supervisor
    from threadsup._logs import configure_logging

    configure_logging(sys.argv[1], fmt=sys.argv[2])
    app = logging.getLogger("app")
    runs = []
    second = threading.Event()

    def worker(token):
        runs.append(token)
        n = len(runs)
        token.logger.info("token record %d", n, extra={"attempt": n})
        app.warning("program record %d", n)
        if n == 1:
            raise ValueError("first run dies")
        token.signal(Signal.HEALTHY)
        second.set()
        token.wait()

    def root(token):
        token.run("a", worker)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = Supervisor(root, backoff=Backoff(initial=0, jitter=0)).start()
    assert second.wait(20)
    assert sup.wait_settled(timeout=20)
    app.info("stopping")
    assert sup.stop(timeout=20)
"""


def test_a_service_logging_json_writes_every_record_once_as_one_json_line() -> None:
    before, after, proc = run_program(SERVICE, "debug", "json")
    lines = [strict_json(line) for line in proc.stderr.splitlines()]  # every line

    for line in lines:
        assert list(line)[:7] == ["time", "level", "logger", "message", "dn", "event", "thread"]
        assert before - 0.001 <= parse_utc(line["time"]) <= after, line
    for n in (1, 2):
        token = only([d for d in lines if d["message"] == f"token record {n}"], "token records")
        assert token["logger"] == "threadsup.root.a"
        assert (token["dn"], token["event"], token["level"], token["attempt"]) == (
            "root.a",
            "log",
            "INFO",
            n,
        )
        assert token["thread"] != "MainThread"
        program = only([d for d in lines if d["message"] == f"program record {n}"], "records")
        assert (program["logger"], program["dn"], program["event"], program["level"]) == (
            "app",
            None,
            "log",
            "WARNING",
        )
    stopping = only([d for d in lines if d["message"] == "stopping"], "stopping records")
    assert (stopping["logger"], stopping["dn"], stopping["thread"]) == ("app", None, "MainThread")

    def events(event: str, dn: str) -> list[dict[str, Any]]:
        return [d for d in lines if d["event"] == event and d["dn"] == dn]

    died = only(events("died", "root.a"), "died records")
    assert (died["logger"], died["level"]) == ("threadsup.root.a", "ERROR")
    exception = died["exception"]
    assert exception.startswith("Traceback (most recent call last):\n")
    assert ", in worker\n" in exception  # the runnable's frame
    assert exception.endswith("ValueError: first run dies")
    assert len(events("started", "root.a")) == 2
    restart = only(events("restart_scheduled", "root.a"), "restart_scheduled records")
    assert (restart["logger"], restart["level"], restart["delay"]) == (
        "threadsup.supervisor",
        "INFO",
        0,
    )
    only(events("cancelled", "root.a"), "cancelled records of root.a")
    only(events("cancelled", "root"), "cancelled records of root")


#: The head line of a text record: time, level, logger, [DN], message.
TEXT_HEAD = re.compile(
    r"(?P<time>\S+) (?P<level>[A-Z]+) +(?P<logger>\S+)(?: \[(?P<dn>[^\]]+)\])? (?P<message>.*)"
)


def test_a_service_logging_text_writes_every_record_once_on_a_readable_line() -> None:
    before, after, proc = run_program(SERVICE, "INFO", "text")
    records: list[tuple[re.Match[str], list[str]]] = []
    for line in proc.stderr.splitlines():
        head = TEXT_HEAD.fullmatch(line)
        if head and ISO_UTC.fullmatch(head["time"]):
            records.append((head, []))
        else:  # a traceback's line, under its record
            assert records, line
            records[-1][1].append(line)
    for head, _ in records:
        assert before - 0.001 <= parse_utc(head["time"]) <= after

    def find(message: str) -> tuple[re.Match[str], list[str]]:
        return only([r for r in records if r[0]["message"] == message], repr(message))

    for n in (1, 2):
        head, more = find(f"token record {n}")
        assert (head["level"], head["logger"], head["dn"], more) == (
            "INFO",
            "threadsup.root.a",
            "root.a",
            [],
        )
        head, more = find(f"program record {n}")
        assert (head["level"], head["logger"], head["dn"], more) == ("WARNING", "app", None, [])
    head, traceback = find("root.a died: ValueError: first run dies")
    assert (head["level"], head["logger"], head["dn"]) == ("ERROR", "threadsup.root.a", "root.a")
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: first run dies"
    assert [r for r in records if r[1]] == [(head, traceback)]  # no other multi-line record
    head, _ = only(
        [r for r in records if r[0]["dn"] == "root.a" and "restart" in r[0]["message"]],
        "restart records",
    )
    assert (head["level"], head["logger"]) == ("INFO", "threadsup.supervisor")
    assert not [r for r in records if r[0]["level"] == "DEBUG"]  # level INFO, given as "INFO"


def test_configure_json_logging_with_basic_config_prints_each_record_once() -> None:
    """The defect: the JSON handler on ``threadsup``, then root's handler again."""
    _, _, proc = run_program(
        """
        import logging
        import threadsup
        from threadsup import Signal, Supervisor

        threadsup.configure_json_logging()
        logging.basicConfig(level=logging.INFO, format="TEXT %(name)s %(message)s")

        def root(token):
            token.logger.warning("said once")
            token.signal(Signal.HEALTHY)
            token.signal(Signal.DONE)

        with Supervisor(root) as sup:
            assert sup.wait(timeout=20)
        logging.getLogger("app").warning("the program's own")
        """
    )
    lines = proc.stderr.splitlines()
    said = only([line for line in lines if "said once" in line], "'said once' lines")
    assert strict_json(said)["dn"] == "root"
    done = only([line for line in lines if "root is done" in line], "'root is done' lines")
    assert strict_json(done)["event"] == "done"
    assert only([line for line in lines if "own" in line], "lines") == "TEXT app the program's own"


DICT_CONFIG = """
    import logging.config
    from threadsup import Signal, Supervisor

    logging.config.dictConfig({
        "version": 1,
        "formatters": {"json": {"()": "threadsup.JsonFormatter", "base": "svc"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json"},
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
    })

    def root(token):
        token.logger.info("from the node")
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)

    with Supervisor(root, logger=logging.getLogger("svc")) as sup:
        assert sup.wait(timeout=20)
"""


def test_json_formatter_in_a_dict_config_takes_the_base_logger_name() -> None:
    _, _, proc = run_program(DICT_CONFIG)
    lines = [strict_json(line) for line in proc.stderr.splitlines()]
    node = only([d for d in lines if d["message"] == "from the node"], "records")
    assert (node["logger"], node["dn"], node["event"]) == ("svc.root", "root", "log")
    done = only([d for d in lines if d["event"] == "done"], "done records")
    assert (done["logger"], done["dn"]) == ("svc.supervisor", "root")


# ---------------------------------------------------------------- in-process tests


@contextlib.contextmanager
def restored_logging(base: str = "threadsup") -> Iterator[logging.Logger]:
    """Restore the root logger's handlers and level, and the ``base`` logger's handlers,
    level and propagation, after the block; yields the root logger.

    A context manager in the test's body rather than a fixture: pytest puts handlers
    of its own on the root logger for each phase of a test (setup, call, teardown), so
    only within the call phase are the root handlers from before those to put back.
    """
    root = logging.getLogger()
    logger = logging.getLogger(base)
    saved = (root.handlers[:], root.level, logger.handlers[:], logger.level, logger.propagate)
    try:
        yield root
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logger.handlers[:] = saved[2]
        logger.setLevel(saved[3])
        logger.propagate = saved[4]


@pytest.mark.parametrize(
    "level, number",
    [("debug", 10), ("INFO", 20), ("Warning", 30), (" error ", 40), ("critical", 50), (5, 5)],
)
def test_configure_logging_takes_level_names_in_any_case_and_numbers(
    level: int | str, number: int
) -> None:
    with restored_logging() as root:
        handler = configure_logging(level, stream=io.StringIO())
        assert root.handlers == [handler]
        assert root.level == number


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"level": "verbose"}, ValueError, "'verbose'.*debug, info, warning, error, critical"),
        ({"level": "warn"}, ValueError, "debug, info, warning, error, critical"),
        ({"level": -1}, ValueError, "debug, info.* -1"),
        ({"level": 1.5}, TypeError, "level must be .*debug, info.*not float"),
        ({"level": True}, TypeError, "not bool"),
        ({"level": None}, TypeError, "not NoneType"),
        ({"fmt": "xml"}, ValueError, "fmt must be one of 'text', 'json', not 'xml'"),
        ({"fmt": "JSON"}, ValueError, "not 'JSON'"),
        ({"fmt": None}, ValueError, "not None"),
        ({"base": ""}, ValueError, "base must be"),
        ({"base": 3}, TypeError, "base must be the name of a logger .*not int"),
    ],
)
def test_configure_logging_rejects_bad_arguments_and_changes_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with restored_logging() as root:
        program = RecordingHandler()
        root.addHandler(program)
        handlers, level = root.handlers[:], root.level
        with pytest.raises(error, match=match):
            configure_logging(stream=io.StringIO(), **kwargs)
        assert (root.handlers, root.level) == (handlers, level)


def test_configure_logging_replaces_the_root_handlers_its_own_and_the_programs() -> None:
    with restored_logging() as root:
        program = RecordingHandler()
        root.addHandler(program)
        first, second = io.StringIO(), io.StringIO()
        configure_logging(fmt="json", stream=first)
        handler = configure_logging("debug", fmt="text", stream=second)
        assert root.handlers == [handler]
        logging.getLogger("app.part").debug("to %s", "text")
        logging.getLogger("threadsup.root.a").info("from a node")
    assert program.records == [] and first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(ISO_UTC.pattern + r" DEBUG    app\.part to text", lines[0]), lines
    assert re.fullmatch(
        ISO_UTC.pattern + r" INFO     threadsup\.root\.a \[root\.a\] from a node", lines[1]
    ), lines


def test_configure_logging_takes_over_from_configure_json_logging() -> None:
    """The ``threadsup`` logger's JSON handler goes; its records reach root's handler."""
    with restored_logging() as root:
        base = logging.getLogger("threadsup")
        old = io.StringIO()
        json_handler = configure_json_logging(logging.DEBUG, stream=old)
        assert base.propagate is False
        stream = io.StringIO()
        handler = configure_logging("warning", fmt="json", stream=stream, base="threadsup")
        assert json_handler not in base.handlers
        assert (base.propagate, base.level, root.handlers) == (True, logging.NOTSET, [handler])
        base.getChild("root.a").info("below the level")
        base.getChild("root.a").warning("from a node")
    assert old.getvalue() == ""
    line = strict_json(only(stream.getvalue().splitlines(), "lines"))
    assert (line["message"], line["dn"], line["event"]) == ("from a node", "root.a", "log")


def test_configure_json_logging_stops_propagation_to_the_root_handlers() -> None:
    base = "threadsup_test.json_propagation"
    with restored_logging(base) as root:
        program = RecordingHandler()
        root.addHandler(program)
        logger = logging.getLogger(base)
        stream = io.StringIO()
        first = configure_json_logging(stream=io.StringIO(), logger=logger)
        handler = configure_json_logging(stream=stream, logger=logger)
        assert logger.handlers == [handler] and first not in logger.handlers
        logger.getChild("root.b").warning("once")
    assert program.records == []
    line = strict_json(only(stream.getvalue().splitlines(), "lines"))
    assert (line["logger"], line["dn"], line["message"]) == (f"{base}.root.b", "root.b", "once")


# ------------------------------------------------------------------ JsonFormatter


def make_record(
    name: str = "threadsup.root.a",
    msg: object = "hello %s",
    args: tuple[object, ...] = ("world",),
    **extra: object,
) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(
        name, logging.INFO, __file__, 1, msg, args, None, extra=extra
    )


def test_json_formatter_writes_the_time_in_utc_to_the_millisecond() -> None:
    record = make_record()
    record.created, record.msecs = 1700000000.0078, 7.8
    line = strict_json(JsonFormatter().format(record))
    assert line["time"] == "2023-11-14T22:13:20.007Z"


@pytest.mark.parametrize(
    "name, extra, dn, event",
    [
        ("svc.root", {}, "root", "log"),
        ("svc.root.a.b", {}, "root.a.b", "log"),
        ("svc.supervisor", {"dn": "root.a", "event": "died"}, "root.a", "died"),
        ("svc.supervisor", {}, None, "log"),
        ("svc.rooted", {}, None, "log"),
        ("svcx.root", {}, None, "log"),
        ("threadsup.root", {}, None, "log"),  # another base
        ("app", {"event": "custom"}, None, "custom"),
    ],
)
def test_json_formatter_derives_the_dn_from_the_base_logger_name(
    name: str, extra: dict[str, object], dn: str | None, event: str
) -> None:
    record = make_record(name)
    record.__dict__.update(extra)
    line = strict_json(JsonFormatter(base="svc").format(record))
    assert (line["logger"], line["dn"], line["event"]) == (name, dn, event)


@dataclasses.dataclass
class Guarded:
    lock: threading.Lock  # dataclasses.asdict() cannot copy it


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_json_formatter_writes_values_json_cannot_hold_as_text() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    record = make_record(
        obj=Guarded(threading.Lock()),
        nan=math.nan,
        inf=-math.inf,
        cycle=cycle,
        tuple_keys={(1, 2): "a"},
        unprintable=Unprintable(),
        fine={"nested": [1, "two", None]},
    )
    line = strict_json(JsonFormatter().format(record))
    assert line["message"] == "hello world"
    assert line["obj"].startswith("Guarded(lock=<unlocked _thread.lock object")
    assert (line["nan"], line["inf"], line["cycle"]) == ("nan", "-inf", "[[...]]")
    assert line["tuple_keys"] == "{(1, 2): 'a'}"
    assert isinstance(line["unprintable"], str)
    assert line["fine"] == {"nested": [1, "two", None]}


def test_json_formatter_makes_a_line_of_a_record_whose_message_cannot_be_formatted() -> None:
    formatter = JsonFormatter()
    line = strict_json(formatter.format(make_record(msg="%d items", args=("many",))))
    assert (line["message"], line["args"], line["dn"]) == ("%d items", "('many',)", "root.a")
    assert line["format_error"].startswith("TypeError(")
    line = strict_json(formatter.format(make_record(msg=Unprintable(), args=())))
    assert line["format_error"] == "RuntimeError('no str')"
    assert isinstance(line["message"], str) and line["level"] == "INFO"


def test_json_formatter_puts_the_traceback_and_the_stack_in_one_field_each() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        record = make_record(msg="failed", args=())
        record.exc_info = sys.exc_info()
    record.stack_info = "Stack (most recent call last):\n  File 'x', line 1"
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = strict_json(text)
    assert line["exception"].startswith("Traceback (most recent call last):\n")
    assert line["exception"].endswith("KeyError: 'missing'")
    assert line["stack_info"] == record.stack_info
    assert "exc_info" not in line


@pytest.mark.parametrize("base, error", [("", ValueError), (None, TypeError)])
def test_json_formatter_rejects_a_bad_base(base: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="base must be"):
        JsonFormatter(base=base)
