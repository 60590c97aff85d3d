"""No program started by `command` outlives the process that started it:
`kill_programs`. Real processes throughout, looked at in /proc."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from threadsup import Backoff, CommandFailed, State, command, support
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


@pytest.fixture
def programs(monkeypatch: pytest.MonkeyPatch) -> support._Programs:
    """A registry of its own for the test: kill_programs() reaches the test's programs only."""
    fresh = support._Programs()
    monkeypatch.setattr(support, "_programs", fresh)
    return fresh


# ------------------------------------------------------------------ kill_programs


def test_kill_programs_kills_a_program_and_its_child_and_the_node_dies(
    programs: support._Programs, harness: Harness
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
    programs: support._Programs, harness: Harness
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


def test_kill_programs_with_nothing_running_returns_zero(programs: support._Programs) -> None:
    assert support.kill_programs() == 0


def test_kill_programs_from_threads_while_programs_start_and_end(
    programs: support._Programs, harness: Harness
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
