"""The demo, run for real: in-process, as ``python -m threadsup demo``, and stopped by SIGINT."""

from __future__ import annotations

import io
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import threadsup
from threadsup.__main__ import main
from threadsup._demo import run_demo

DNS = [
    "root",
    "root.table",
    "root.echo",
    "root.client",
    "root.job",
    "root.flaky",
    "root.pipeline",
    "root.pipeline.producer",
    "root.pipeline.consumer",
]
STATES = {"NEW", "HEALTHY", "DONE", "DEAD", "CANCELLED"}
SHUTDOWN = re.compile(r"^shutdown took (?P<ms>[0-9.]+) ms: every thread stopped$", re.MULTILINE)


@dataclass
class Row:
    dn: str
    indent: int
    state: str
    restarts: int
    last_error: str


@dataclass
class Table:
    title: str
    rows: dict[str, Row]


def parse_tables(output: str) -> list[Table]:
    """The tables the demo printed: a ``[  1.0s] title`` line, a header, one row a node."""
    tables = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("DN "):
            continue
        assert re.fullmatch(r"DN +STATE +RESTARTS +LAST ERROR", line), line
        title = re.fullmatch(r"\[ *[0-9.]+s\] (.*)", lines[i - 1])
        assert title is not None, lines[i - 1]
        rows = {}
        for row in lines[i + 1 :]:
            match = re.fullmatch(r"( *)(\S+) +(\S+) +(\d+)(?:  (.*))?", row)
            if match is None:
                break
            indent, dn, state, restarts, error = match.groups()
            rows[dn] = Row(dn, len(indent), state, int(restarts), error or "")
        tables.append(Table(title.group(1), rows))
    return tables


def check_demo_output(output: str) -> None:
    tables = parse_tables(output)
    assert len(tables) >= 3, output
    for table in tables:
        assert set(table.rows) <= set(DNS), table
        for row in table.rows.values():
            assert row.state in STATES, row
            assert row.indent == 2 * row.dn.count("."), row
    # The tree is complete long before the end; rows come parents first, in start order.
    last_live, final = tables[-2], tables[-1]
    assert list(last_live.rows) == DNS, output
    assert last_live.title.startswith("echo round trips: "), output
    counters = re.fullmatch(r"echo round trips: (\d+), items consumed: (\d+)", last_live.title)
    assert counters is not None, last_live.title
    assert int(counters.group(1)) >= 1 and int(counters.group(2)) >= 1, output
    # The flaky worker died and was restarted with backoff.
    assert final.title == "after shutdown"
    flaky = final.rows["root.flaky"]
    assert flaky.restarts >= 1, output
    assert flaky.last_error.startswith("ConnectionError: upstream"), output
    # The producer died and its group restarted: the consumer too, with no error of its own.
    producer = final.rows["root.pipeline.producer"]
    consumer = final.rows["root.pipeline.consumer"]
    assert producer.restarts >= 1, output
    assert producer.last_error.startswith("ConnectionResetError: source"), output
    assert consumer.restarts >= 1 and consumer.last_error == "", output
    # The job, a child process run by threadsup.command, exits with status 3 on its
    # third batch: it died at least once (it is DEAD waiting for its restart, or back).
    job = final.rows["root.job"]
    assert job.last_error.startswith("CommandFailed: "), output
    # Nothing else failed.
    for dn in ("root", "root.table", "root.echo", "root.client", "root.pipeline"):
        assert final.rows[dn].restarts == 0 and final.rows[dn].last_error == "", output
    # After the stop every node has ended: cancelled, or dead and waiting for a restart.
    assert {row.state for row in final.rows.values()} <= {"CANCELLED", "DEAD"}, output
    shutdown = SHUTDOWN.search(output)
    assert shutdown is not None, output
    assert float(shutdown.group("ms")) < 2000, output


def _subprocess_env() -> dict[str, str]:
    """Make ``python -m threadsup`` import the threadsup these tests import."""
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["COLUMNS"] = "120"
    return env


@pytest.mark.slow
def test_demo_in_process_restarts_and_stops_without_leaking_threads() -> None:
    before = set(threading.enumerate())
    out = io.StringIO()
    started = time.monotonic()
    assert run_demo(3.0, out, interval=0.5, width=80) == 0
    assert time.monotonic() - started < 3.0 + 5.0
    output = out.getvalue()
    check_demo_output(output)
    assert len(parse_tables(output)) >= 6  # every half second, and once after the stop
    for line in output.splitlines():
        assert len(line) <= 80, line
    # At 80 columns the last errors are cut to fit.
    assert parse_tables(output)[-1].rows["root.flaky"].last_error.endswith("...")
    deadline = time.monotonic() + 2.0
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) - before == set()


@pytest.mark.slow
def test_python_m_threadsup_demo_with_duration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "threadsup", "demo", "--duration", "3"],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("threadsup demo:")
    check_demo_output(result.stdout)
    assert result.stderr == ""  # deaths are in the table, not in tracebacks on stderr
    # At 120 columns the job's exit status fits in the table.
    job = parse_tables(result.stdout)[-1].rows["root.job"]
    assert re.match(r"CommandFailed: \S+ exited with status 3", job.last_error), job


@pytest.mark.slow
def test_verbose_demo_logs_the_job_output_and_its_exit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "threadsup", "demo", "--duration", "3", "--verbose"],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    # The child's stdout at INFO, its stderr at WARNING, on the node's own logger.
    assert re.search(r"INFO +threadsup\.demo\.root\.job: job ready \(pid \d+\)", log), log
    assert re.search(r"INFO +threadsup\.demo\.root\.job: processed batch 3", log), log
    assert re.search(r"WARNING +threadsup\.demo\.root\.job: lost the database connection", log), log
    assert re.search(r"ERROR +threadsup\.demo\.root\.job: root\.job died: CommandFailed: ", log)


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stdout until ``needle`` shows up; fail after ``timeout`` seconds."""
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while needle not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                pytest.fail(f"no {needle!r} within {timeout} s: {data.decode()}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                pytest.fail(f"demo exited before printing {needle!r}: {data.decode()}")
            data += chunk
    return data


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and
    # Python then leaves it ignored: give the demo the SIGINT a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_stops_the_demo_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadsup", "demo"],
        cwd=tmp_path,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    try:
        head = _read_until(proc, b"root.pipeline.consumer", timeout=10)
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    output = (head + rest).decode()
    assert proc.returncode == 0, errors.decode()
    assert "\nstopping...\n" in output
    assert SHUTDOWN.search(output), output
    assert parse_tables(output)[-1].title == "after shutdown"
    assert errors == b""


def test_cli_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--duration SECONDS" in capsys.readouterr().out

    for argv, message in (
        ([], "the following arguments are required: COMMAND"),
        (["dance"], "invalid choice: 'dance'"),
        (["demo", "--duration"], "expected one argument"),
        (["demo", "--duration", "soon"], "not a number of seconds: 'soon'"),
        (["demo", "--duration", "-1"], "must be a number of seconds >= 0, not -1.0"),
        (["demo", "--duration", "nan"], "must be a number of seconds >= 0, not nan"),
        (["demo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("usage: python -m threadsup"), err
        assert message in err, (argv, err)
