"""Logging for a service: `JsonFormatter`, and `configure_json_logging` without
duplicates.

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
