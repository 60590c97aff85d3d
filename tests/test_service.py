"""threadsup.run and ``threadsup run MODULE:ATTR``: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import threadsup
from threadsup import (
    Backoff,
    CancelToken,
    ExitStatus,
    NotMainThread,
    Signal,
    State,
    Supervisor,
)
from threadsup.status import StatusServer
from threadsup.testing import Harness, healthy_until_cancelled, wait_status, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and /proc")

#: The program the tests run: one root runnable per scenario.
APP = """
import os
import sys
import time

from threadsup import Signal, command

PROGRAM = ["sh", "-c", "sleep 60 & echo grandchild $!; wait"]


def worker(token):
    token.signal(Signal.HEALTHY)
    token.logger.info("worker ready")
    token.wait()


def stuck(token):
    token.signal(Signal.HEALTHY)
    token.logger.info("stuck ready")
    time.sleep(60)  # ignores its cancellation


incarnations = 0


def counted(token):
    global incarnations
    incarnations += 1
    token.logger.info("incarnation %d", incarnations)
    token.signal(Signal.HEALTHY)
    token.wait()


def finishing(token):
    token.signal(Signal.HEALTHY)
    token.logger.info("all done")
    token.signal(Signal.DONE)


def with_program(token):
    token.run("job", command(PROGRAM))
    token.signal(Signal.HEALTHY)
    token.wait()


def with_program_and_stuck(token):
    token.run("job", command(PROGRAM))
    token.run("stuck", stuck)
    token.signal(Signal.HEALTHY)
    token.wait()


def failing_with_program(token):
    token.run("job", command(PROGRAM))
    time.sleep(0.5)
    raise RuntimeError("no database")


def breaks_the_processor(token):
    from threadsup import _processor
    def broken(self, request):
        raise RuntimeError("injected processor fault")

    _processor.Processor._handle = broken  # the next request kills the processor
    token.spawn("child", worker)
    token.wait()


not_callable = 42
"""


def _env(**extra: str) -> dict[str, str]:
    """Make the child import the threadsup these tests import, and find the app."""
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Service:
    """A ``threadsup run`` process, its merged stdout and stderr read as it comes."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = ""

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Read until ``pattern`` matches the output; fail after ``timeout`` s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while (match := re.search(pattern, self.output, re.MULTILINE)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.output}")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(f"exited before {pattern!r}:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        return match

    def signal(self, signum: int) -> float:
        self.proc.send_signal(signum)
        return time.monotonic()

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for the exit, reading the rest of the output; its status."""
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
            pytest.fail(f"still running after {timeout} s:\n{self.output}{rest.decode()}")
        self.output += rest.decode(errors="replace")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "svcapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def start(app: Path) -> Iterator[Callable[..., Service]]:
    services: list[Service] = []

    def start(target: str, *options: str, console: bool = False, **env: str) -> Service:
        if console:
            script = shutil.which("threadsup", path=str(Path(sys.executable).parent))
            assert script is not None, "the threadsup console script is not installed"
            argv = [script, "run", target, *options]
        else:
            argv = [sys.executable, "-m", "threadsup", "run", target, *options]
        service = Service(argv, app, _env(**env))
        services.append(service)
        return service

    yield start
    for service in services:
        service.close()


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_gone(*pids: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            alive = [pid for pid in pids if not gone(pid)]
            for pid in alive:  # leave nothing behind for the next test
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes {alive} outlived their threadsup parent")
        time.sleep(0.02)


def program_pids(service: Service) -> tuple[int, int]:
    """The pids of root.job's shell and of the ``sleep`` it started."""
    shell = int(service.expect(r"started sh \(pid (\d+)\)").group(1))
    grandchild = int(service.expect(r"grandchild (\d+)").group(1))
    return shell, grandchild


# ------------------------------------------------------------------ stop signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_the_tree_gracefully_and_exits_0(
    start: Callable[..., Service], signum: signal.Signals
) -> None:
    service = start("svcapp:worker")
    service.expect("worker ready")
    service.signal(signum)
    assert service.finish() == ExitStatus.OK
    assert f"{signum.name} received: stopping the tree (within 10.0 s)" in service.output
    assert re.search(r"the tree stopped in [0-9.]+ s: every thread ended", service.output)
    assert "Traceback" not in service.output


@pytest.mark.slow
def test_sigterm_with_a_stuck_runnable_exits_on_time_naming_it_with_its_stack(
    start: Callable[..., Service],
) -> None:
    service = start("svcapp:stuck", "--shutdown-timeout", "1")
    service.expect("stuck ready")
    sent = service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.STOP_TIMED_OUT
    took = time.monotonic() - sent
    assert took < 1.0 + 1.0, f"exited {took:.2f} s after SIGTERM:\n{service.output}"
    out = service.output
    assert "SIGTERM received: stopping the tree (within 1.0 s)" in out
    assert re.search(r"did not stop within 1\.0 s; still running: root", out), out
    assert re.search(r'svcapp\.py", line \d+, in stuck\n\s+time\.sleep\(60\)', out), out


def test_a_second_stop_signal_exits_at_once_and_kills_the_programs(
    start: Callable[..., Service],
) -> None:
    service = start("svcapp:with_program_and_stuck", "--shutdown-timeout", "30")
    shell, grandchild = program_pids(service)
    service.expect("stuck ready")
    service.signal(signal.SIGTERM)
    service.expect("SIGTERM received: stopping")
    sent = service.signal(signal.SIGINT)
    assert service.finish() == 128 + signal.SIGINT
    assert time.monotonic() - sent < 2.0, service.output
    assert re.search(
        r"SIGINT received during the stop: exiting at once with status 130", service.output
    )
    wait_gone(shell, grandchild)


@pytest.mark.slow
def test_a_stop_that_times_out_kills_the_programs_left(start: Callable[..., Service]) -> None:
    service = start("svcapp:with_program_and_stuck", "--shutdown-timeout", "1")
    shell, grandchild = program_pids(service)
    service.expect("stuck ready")
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.STOP_TIMED_OUT
    wait_gone(shell, grandchild)


def test_a_graceful_stop_stops_the_programs(start: Callable[..., Service]) -> None:
    service = start("svcapp:with_program", console=True)
    shell, grandchild = program_pids(service)
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.OK
    wait_gone(shell, grandchild)


def test_an_unhandled_sigkill_of_the_service_leaves_no_program(
    start: Callable[..., Service],
) -> None:
    service = start("svcapp:with_program")
    shell, grandchild = program_pids(service)
    service.signal(signal.SIGKILL)
    assert service.finish() == -signal.SIGKILL
    wait_gone(shell, grandchild)


# ---------------------------------------------------------------- other signals


def test_sighup_restarts_the_whole_tree(start: Callable[..., Service]) -> None:
    service = start("svcapp:counted")
    service.expect("incarnation 1")
    service.signal(signal.SIGHUP)
    service.expect("incarnation 2")
    assert "SIGHUP received: restarting the tree" in service.output
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.OK


@pytest.mark.slow
def test_sigusr1_logs_the_tree_and_every_stack_and_stops_nothing(
    start: Callable[..., Service],
) -> None:
    service = start("svcapp:with_program_and_stuck")
    service.expect("stuck ready")
    service.signal(signal.SIGUSR1)
    dump = service.expect(
        r"SIGUSR1 received: the tree and its threads' stacks:\n(?s:.*?)\n\n(?s:.*?)in stuck\n"
    )
    assert re.search(r"^root  HEALTHY", dump.group(0), re.MULTILINE), dump.group(0)
    assert "root.stuck (thread 'root.stuck')" in dump.group(0)
    service.signal(signal.SIGUSR1)  # again: still running
    service.expect(r"(?s:SIGUSR1 received.*){2}")
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.STOP_TIMED_OUT  # root.stuck ignores it


# ------------------------------------------------------------------ exit statuses


@pytest.mark.slow
def test_a_root_that_gives_up_exits_1_and_leaves_no_program(start: Callable[..., Service]) -> None:
    service = start("svcapp:failing_with_program", "--max-restarts", "1", "--within", "60")
    shell, grandchild = program_pids(service)
    assert service.finish(30) == ExitStatus.GAVE_UP
    assert "exiting with status 1: the supervision tree gave up" in service.output
    wait_gone(shell, grandchild)


def test_a_processor_failure_exits_4_and_says_so(start: Callable[..., Service]) -> None:
    service = start("svcapp:breaks_the_processor")
    assert service.finish() == ExitStatus.PROCESSOR_FAILED
    assert "RuntimeError: injected processor fault" in service.output
    assert "exiting with status 4: the threadsup processor failed" in service.output


def test_a_tree_that_finishes_exits_0(start: Callable[..., Service]) -> None:
    service = start("svcapp:finishing")
    assert service.finish() == ExitStatus.OK
    assert "the tree finished: every node is DONE" in service.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("svcapp", "expected MODULE:ATTR, like myapp.workers:root, not 'svcapp'"),
        ("svcapp:", "expected MODULE:ATTR"),
        ("no_such_module:root", "cannot import 'no_such_module': ModuleNotFoundError: No module"),
        ("svcapp:nothing", "svcapp:nothing: <module 'svcapp' from"),
        ("svcapp:not_callable", "svcapp:not_callable must be"),
    ],
)
def test_a_bad_target_is_one_line_and_status_2(
    start: Callable[..., Service], target: str, message: str
) -> None:
    service = start(target)
    assert service.finish() == ExitStatus.USAGE
    lines = service.output.splitlines()
    assert len(lines) == 1, service.output
    assert lines[0].startswith("python -m threadsup run: error: "), lines[0]
    assert message in lines[0]


def test_an_import_error_shows_its_traceback_only_at_debug(
    start: Callable[..., Service], app: Path
) -> None:
    (app / "broken.py").write_text("import os\nraise ValueError('bad configuration')\n")
    quiet = start("broken:root")
    assert quiet.finish() == ExitStatus.USAGE
    assert "cannot import 'broken': ValueError: bad configuration" in quiet.output
    assert "Traceback" not in quiet.output and "--log-level DEBUG" in quiet.output
    debug = start("broken:root", "--log-level", "debug")
    assert debug.finish() == ExitStatus.USAGE
    assert "Traceback (most recent call last)" in debug.output
    assert 'broken.py", line 2' in debug.output


@pytest.mark.parametrize(
    "options",
    [
        ["--shutdown-timeout", "soon"],
        ["--max-restarts", "-1"],
        ["--log-level", "LOUD"],
        ["--log-format", "xml"],
    ],
)
def test_bad_options_are_status_2(start: Callable[..., Service], options: list[str]) -> None:
    service = start("svcapp:worker", *options)
    assert service.finish() == ExitStatus.USAGE
    assert "error:" in service.output and "Traceback" not in service.output


# ------------------------------------------------------------------ logging


def test_json_logs_parse_line_by_line(start: Callable[..., Service]) -> None:
    service = start("svcapp:worker", "--log-format", "json")
    service.expect("worker ready")
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.OK
    records = [json.loads(line) for line in service.output.splitlines()]
    messages = [record["message"] for record in records]
    assert len(messages) == len(set(messages)), messages  # nothing printed twice
    stop = next(r for r in records if r["message"].startswith("SIGTERM received"))
    assert stop["level"] == "INFO" and stop["event"] == "stop_signal" and stop["dn"] == "root"
    ready = next(r for r in records if r["message"] == "worker ready")
    assert ready["dn"] == "root" and ready["event"] == "log"


# ------------------------------------------------------------------ systemd


def test_systemd_notify_socket_gets_ready_then_stopping(
    start: Callable[..., Service], app: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = app / "notify.sock"
        sock.bind(str(path))
        sock.settimeout(15)
        service = start("svcapp:worker", "--shutdown-timeout", "2", NOTIFY_SOCKET=str(path))
        messages = [sock.recv(4096).decode()]
        while "READY=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        service.expect("worker ready")
        service.signal(signal.SIGTERM)
        while "STOPPING=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        assert "EXTEND_TIMEOUT_USEC=3000000" in messages[-1]
        assert service.finish() == ExitStatus.OK


# ------------------------------------------------------------------ in process


def test_run_restores_the_signal_handlers_and_returns_the_status() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}

    def finishing(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)

    assert threadsup.run(finishing, shutdown_timeout=5) == ExitStatus.OK
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_run_outside_the_main_thread_is_a_clear_error() -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            threadsup.run(lambda token: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call, name="not-main")
    thread.start()
    thread.join(10)
    assert isinstance(errors[0], NotMainThread) and isinstance(errors[0], RuntimeError)
    assert "called from not-main: call it from the main thread" in str(errors[0])


def test_run_passes_bad_supervisor_keywords_on_as_errors() -> None:
    with pytest.raises(ValueError, match="shutdown_timeout"):
        threadsup.run(lambda token: None, shutdown_timeout=-1)
    with pytest.raises(TypeError, match="no_such_option"):
        threadsup.run(lambda token: None, no_such_option=1)


# ------------------------------------------------------------------ the status server


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_status_serves_the_tree_for_the_life_of_the_run(start: Callable[..., Service]) -> None:
    service = start("svcapp:worker", "--status", "127.0.0.1:0")
    url = service.expect(r"status page on (http://127\.0\.0\.1:\d+)/").group(1)
    service.expect("worker ready")
    assert http_get(f"{url}/healthz")[0] == 200
    wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, what="ready")
    code, body = http_get(f"{url}/tree.json")
    assert code == 200 and [node["dn"] for node in json.loads(body)["nodes"]] == ["root"]
    service.signal(signal.SIGTERM)
    assert service.finish() == ExitStatus.OK
    assert "Traceback" not in service.output
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(f"{url}/healthz", timeout=10)


@pytest.mark.parametrize("address", ["8000", "localhost:http", "127.0.0.1:70000", ":8000"])
def test_a_bad_status_address_is_status_2(start: Callable[..., Service], address: str) -> None:
    service = start("svcapp:worker", "--status", address)
    assert service.finish() == ExitStatus.USAGE
    assert "argument --status: expected HOST:PORT with a port from 0 to 65535" in service.output
    assert "Traceback" not in service.output


def test_a_status_port_in_use_is_one_line_and_status_2(start: Callable[..., Service]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = start("svcapp:worker", "--status", f"127.0.0.1:{port}")
        assert service.finish() == ExitStatus.USAGE
    assert service.output == (
        f"python -m threadsup run: error: the status server cannot listen on 127.0.0.1:{port}: "
        "Address already in use\n"
    )


def test_run_with_status_in_process_closes_the_server_on_the_way_out() -> None:
    def finishing(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)

    # The autouse leak check fails the test if the server's threads outlive run().
    assert threadsup.run(finishing, status="127.0.0.1:0", shutdown_timeout=5) == ExitStatus.OK
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        threadsup.run(finishing, status="localhost")
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.fixture
def stopped_tree(harness: Harness) -> Iterator[tuple[Supervisor, str]]:
    """A stopped tree, whose render no longer changes, and the URL of its status server."""

    def dies(token: CancelToken) -> None:
        raise ConnectionError("no database")

    def root(token: CancelToken) -> None:
        token.run("db", dies, backoff=Backoff(initial=3600.0, maximum=3600.0, jitter=0.0))
        token.run("web", healthy_until_cancelled)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    wait_status(sup, "root.db", state=State.DEAD)
    wait_status(sup, "root.web", state=State.HEALTHY)
    assert sup.stop(10)
    with StatusServer(sup) as server:
        yield sup, server.url


def status_command(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadsup", "status", *args],
        cwd=app,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_status_command_prints_what_render_draws(
    app: Path, stopped_tree: tuple[Supervisor, str]
) -> None:
    sup, url = stopped_tree
    done = status_command(app, url)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == sup.render() + "\n"
    assert "last error: ConnectionError: no database" in done.stdout.splitlines()[1]


def test_status_command_watches_until_ctrl_c(
    app: Path, stopped_tree: tuple[Supervisor, str]
) -> None:
    sup, url = stopped_tree
    argv = [sys.executable, "-m", "threadsup", "status", f"{url}/", "--watch"]
    watcher = Service(argv, app, _env())
    try:
        frame = (
            re.escape(f"\x1b[H\x1b[2J{url}/tree.json at ") + r"\d\d:\d\d:\d\d \(Ctrl-C quits\)\n\n"
        )
        watcher.expect(f"({frame}{re.escape(sup.render())}\n){{2}}")  # redrawn
        watcher.signal(signal.SIGINT)
        assert watcher.finish() == 0
    finally:
        watcher.close()
    assert "Traceback" not in watcher.output and "KeyboardInterrupt" not in watcher.output


def test_status_command_on_an_unreachable_url_is_one_line_and_status_1(app: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    done = status_command(app, f"127.0.0.1:{port}")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"python -m threadsup status: error: cannot reach http://127.0.0.1:{port}/tree.json: "
        "[Errno 111] Connection refused\n"
    )
