"""No program started by `command` outlives the process that started it:
`kill_programs`, and the guard process that kills them once that process is
gone, however it died. Real processes throughout, looked at in /proc."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import threadsup
from threadsup import Backoff, CommandFailed, State, command, support
from threadsup.support import _command
from threadsup.testing import Harness, wait_status, wait_until

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="looks at processes in Linux's /proc"
)

#: A restart a minute away: the harness stops the node first.
SLOW = Backoff(initial=60.0, jitter=0.0)
#: A program with a child of its own; it prints both PIDs, then waits.
FAMILY = ["sh", "-c", "sleep 60 & echo $$ $!; wait"]
#: The same, deaf to SIGTERM (the ignored disposition passes on to sleep).
DEAF_FAMILY = ["sh", "-c", "trap '' TERM; sleep 60 & echo $$ $!; wait"]
PIDS = r"^\d+ \d+$"
#: Restarts one after the other.
RAPID = Backoff(initial=0.001, maximum=0.001, jitter=0.0)
REPO = Path(threadsup.__file__).resolve().parent.parent


def state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def dead(pid: int) -> bool:
    """Gone, or a zombie: the init of a container may not reap what it inherits."""
    return state(pid) in (None, "Z")


def wait_dead(*pids: int, timeout: float = 10.0) -> None:
    wait_until(lambda: all(dead(pid) for pid in pids), timeout, f"the end of {pids}")


def family(harness: Harness, dn: str = "root", index: int = 0) -> tuple[int, int]:
    """The PIDs a `FAMILY` program printed: its own and its child's."""

    def printed() -> list[str]:
        name = f"{harness.base}.{dn}"
        return [
            r.getMessage()
            for r in harness.logs.records
            if r.name == name and getattr(r, "stream", None) == "stdout"
        ]

    wait_until(lambda: len(printed()) > index, 10.0, f"program {index} of {dn}")
    program, child = map(int, printed()[index].split())
    return program, child


def ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1), 16)


def session(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])


@pytest.fixture
def programs(monkeypatch: pytest.MonkeyPatch) -> Iterator[_command._Programs]:
    """A registry of its own for the test, so that its guard is the test's to break;
    closed (its guard ended) at the end."""
    fresh = _command._Programs()
    monkeypatch.setattr(_command, "_programs", fresh)
    try:
        yield fresh
    finally:
        guard = fresh.guard
        fresh.close()
        assert guard is None or guard.returncode is not None, "the guard was not reaped"


# ------------------------------------------------------------------ kill_programs


def test_kill_programs_kills_a_program_and_its_child_and_the_node_dies(
    programs: _command._Programs, harness: Harness
) -> None:
    sup = harness.start(command(FAMILY, healthy=PIDS), backoff=SLOW)
    wait_status(sup, "root", state=State.HEALTHY)
    program, child = family(harness)
    assert support.kill_programs() == 1
    status = wait_status(sup, "root", state=State.DEAD)
    assert status.last_error is not None and "was killed by SIGKILL" in status.last_error
    died = harness.logs.wait_for(dn="root", event="died")
    assert died.exc_info is not None and isinstance(died.exc_info[1], CommandFailed)
    wait_dead(program, child)
    assert support.kill_programs() == 0  # reaped: out of the registry
    sup.restart("root")  # the supervisor still answers, and the node runs again
    wait_status(sup, "root", state=State.HEALTHY, restarts=1)
    assert family(harness, index=1)[0] != program


def test_kill_programs_ends_a_stop_that_waits_for_a_deaf_program(
    programs: _command._Programs, harness: Harness
) -> None:
    # What threadsup.run() does when a stop times out: the grace period is not waited.
    sup = harness.start(command(DEAF_FAMILY, healthy=PIDS, grace=60.0))
    wait_status(sup, "root", state=State.HEALTHY)
    program, child = family(harness)
    assert not sup.stop(timeout=0.2)  # SIGTERM ignored: the node waits out its grace
    assert state(program) not in (None, "Z")
    assert support.kill_programs() == 1
    assert sup.stop(timeout=10)
    assert sup.snapshot()["root"].state is State.CANCELLED
    wait_dead(program, child)
    assert support.kill_programs() == 0


def test_kill_programs_with_nothing_running_returns_zero(programs: _command._Programs) -> None:
    assert support.kill_programs() == 0
    assert programs.guard is None  # nothing started: no guard either


def test_kill_programs_from_threads_while_programs_start_and_end(
    programs: _command._Programs, harness: Harness
) -> None:
    # Programs exit at once and start again, killed or not, while two threads kill
    # whatever is registered: no error, no deadlock, every program reaped.
    sup = harness.start(command(["true"], zero_exit="death"), backoff=RAPID)
    results: list[int] = []
    errors: list[BaseException] = []

    def kill_until_restarted() -> None:
        try:
            while sup.snapshot()["root"].restarts < 20:
                results.append(support.kill_programs())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=kill_until_restarted) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    assert results and all(n in (0, 1) for n in results)
    assert sup.stop(timeout=10)
    assert support.kill_programs() == 0


# -------------------------------------------------------------------------- guard


def test_one_guard_for_all_programs_in_a_session_of_its_own_deaf_to_stop_signals(
    programs: _command._Programs, harness: Harness
) -> None:
    sup = harness.start(command(FAMILY, healthy=PIDS), backoff=SLOW)
    wait_status(sup, "root", state=State.HEALTHY)
    guard = programs.guard
    assert guard is not None and guard.poll() is None
    for index in range(1, 3):  # two more programs: the same guard
        sup.restart("root")
        wait_status(sup, "root", state=State.HEALTHY, restarts=index)
        family(harness, index=index)
        assert programs.guard is guard
    assert session(guard.pid) == guard.pid != session(os.getpid())
    deaf = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    wait_until(lambda: ignored_signals(guard.pid) & deaf == deaf, 10.0, "the guard's start")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        guard.send_signal(signum)
    # Closing our end is what this process's death does: the guard kills the program.
    program, child = family(harness, index=2)
    programs.close()
    status = wait_status(sup, "root", state=State.DEAD)
    assert status.last_error is not None and "was killed by SIGKILL" in status.last_error
    wait_dead(program, child)
    assert guard.returncode == 0  # it exited by itself, after killing


def test_a_guard_that_cannot_start_leaves_programs_running_with_one_warning(
    programs: _command._Programs, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    interpreter = sys.executable
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    sup = harness.start(command(FAMILY, healthy=PIDS))
    wait_status(sup, "root", state=State.HEALTHY)
    sup.restart("root")
    wait_status(sup, "root", state=State.HEALTHY, restarts=1)
    family(harness, index=1)
    assert programs.guard is None
    warnings = [r for r in harness.logs.records if "could not start the guard" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "/nonexistent/python" in warnings[0].getMessage()
    monkeypatch.setattr(sys, "executable", interpreter)  # the next program starts a guard
    sup.restart("root")
    wait_status(sup, "root", state=State.HEALTHY, restarts=2)
    assert programs.guard is not None


def test_a_guard_killed_is_replaced_and_the_new_one_knows_every_program(
    programs: _command._Programs, harness: Harness
) -> None:
    sup = harness.start(command(FAMILY, healthy=PIDS), backoff=SLOW)
    wait_status(sup, "root", state=State.HEALTHY)
    first = family(harness)
    guard = programs.guard
    assert guard is not None
    guard.kill()
    wait_until(lambda: state(guard.pid) == "Z", 10.0, "the guard's death")
    second_sup = harness.start(command(FAMILY, healthy=PIDS), backoff=SLOW)
    wait_status(second_sup, "root", state=State.HEALTHY)
    second = family(harness, index=1)
    replacement = programs.guard
    assert replacement is not None and replacement is not guard
    assert guard.returncode == -signal.SIGKILL  # reaped
    harness.logs.wait_for(
        msg="the guard process (pid %d) %s: started another",
        args=(guard.pid, "was killed by SIGKILL"),
    )
    programs.close()  # as this process's death would: both programs are killed
    for each in (sup, second_sup):
        wait_status(each, "root", state=State.DEAD)
    wait_dead(*first, *second)


def test_a_guard_that_stops_reading_is_killed_and_replaced(
    programs: _command._Programs, harness: Harness
) -> None:
    sup = harness.start(command(FAMILY, healthy=PIDS), backoff=SLOW)
    wait_status(sup, "root", state=State.HEALTHY)
    program, child = family(harness)
    guard = programs.guard
    assert guard is not None
    guard.send_signal(signal.SIGSTOP)
    wait_until(lambda: state(guard.pid) == "T", 10.0, "the guard's stop")
    # The registry's own messages, as many as it takes to fill the socket.
    for _ in range(100_000):
        programs.remove(program, harness.logger)
        programs.add(program, harness.logger)
        if programs.guard is not guard:
            break
    assert programs.guard is not None and programs.guard is not guard
    assert guard.returncode == -signal.SIGKILL
    harness.logs.wait_for(
        msg="the guard process (pid %d) %s: started another",
        args=(guard.pid, "stopped reading its messages"),
    )
    programs.close()
    wait_status(sup, "root", state=State.DEAD)
    wait_dead(program, child)


def test_a_guard_that_exits_by_itself_is_not_tried_again(
    programs: _command._Programs, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # "runs", then exits 1
    sup = harness.start(command(FAMILY, healthy=PIDS))
    wait_status(sup, "root", state=State.HEALTHY)
    guard = programs.guard
    assert guard is not None
    wait_until(lambda: state(guard.pid) == "Z", 10.0, "the end of /bin/false")
    for index in (1, 2):
        sup.restart("root")
        wait_status(sup, "root", state=State.HEALTHY, restarts=index)
        family(harness, index=index)
    assert programs.guard is None and guard.returncode == 1
    warnings = [r for r in harness.logs.records if "the guard process" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == [
        f"the guard process (pid {guard.pid}) exited with status 1: the programs of "
        "command() will outlive this process if it is killed"
    ]


# ------------------------------------------------------- the process that dies


SCRIPT = """
    import logging, os, queue, sys, time
    from threadsup import Supervisor, command, support
    from threadsup.support import _command

    lines = queue.Queue()

    class Lines(logging.Handler):
        def emit(self, record):
            if getattr(record, "stream", None) == "stdout":
                lines.put(record.getMessage())

    logger = logging.getLogger("orphans")
    logger.addHandler(Lines())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    program = command(ARGV, grace=60.0)
    sup = Supervisor(program, logger=logger, shutdown_timeout=0.2).start()
    print("pids", lines.get(timeout=10), _command._programs.guard.pid, flush=True)
""".replace("ARGV", repr(DEAF_FAMILY))

#: The end of a script that waits for ever (until the test kills it).
WAIT = "sup.wait()\n"

#: After SCRIPT: a forked child's exit leaves the programs alone, and a forked
#: child that lives on does not keep the guard waiting.
FORKS = """
    pid = os.fork()
    if pid == 0:
        print("child", support.kill_programs(), _command._programs.guard, flush=True)
        sys.exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    print("after", sup.snapshot()["root"].state.name, flush=True)
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    print("sleeper", pid, flush=True)
"""


def _spawn(*parts: str) -> subprocess.Popen[str]:
    """Run the ``parts`` of a script in a fresh interpreter, in development mode
    (which shows a `ResourceWarning`)."""
    script = "".join(textwrap.dedent(part) for part in parts)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [sys.executable, "-X", "dev", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a process group of its own, for the test to kill
    )


def _read(proc: subprocess.Popen[str], tag: str) -> list[str]:
    """The words after ``tag`` on the next line (bounded: the script's own waits are)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(f"{tag} "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"expected {tag!r}, read {line!r}; stderr:\n{err}")
    return line.split()[1:]


@pytest.mark.parametrize(
    "death",
    ["SIGKILL", "SIGTERM", "SIGKILL to its process group"],
)
def test_the_programs_die_with_the_process_however_it_dies(death: str) -> None:
    proc = _spawn(SCRIPT, WAIT)
    try:
        program, child, guard = map(int, _read(proc, "pids"))
        assert all(state(pid) not in (None, "Z") for pid in (program, child, guard))
        if death == "SIGKILL to its process group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.Signals[death])
        wait_dead(program, child, guard, timeout=5.0)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.Signals[death.split()[0]]


def test_a_program_still_running_at_the_interpreter_exit_is_killed() -> None:
    # No stop(): the exit hook gives the tree 0.2 s, the program ignores SIGTERM for 60.
    proc = _spawn(SCRIPT)
    try:
        program, child, guard = map(int, _read(proc, "pids"))
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    wait_dead(program, child, guard, timeout=5.0)
    assert "ResourceWarning" not in err  # the guard was reaped


def test_forked_children_neither_kill_the_programs_nor_keep_them_alive() -> None:
    proc = _spawn(SCRIPT, FORKS, WAIT)
    sleeper = None
    try:
        program, child, guard = map(int, _read(proc, "pids"))
        assert _read(proc, "child") == ["0", "None"]  # neither the programs nor the guard
        assert _read(proc, "after") == ["HEALTHY"]
        assert all(state(pid) not in (None, "Z") for pid in (program, child, guard))
        sleeper = int(_read(proc, "sleeper")[0])
        proc.kill()
        wait_dead(program, child, guard, timeout=5.0)
        assert state(sleeper) not in (None, "Z")  # alive, without the guard's socket
    finally:
        if sleeper is not None and state(sleeper) is not None:
            os.kill(sleeper, signal.SIGKILL)
        proc.kill()
        _, err = proc.communicate(timeout=10)
    # The first child neither waited for the parent's guard nor warned about it.
    assert "ResourceWarning" not in err, err
