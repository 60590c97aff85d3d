"""threadsup's pytest plugin, run the way users run it: pytest's own ``pytester``
runs small test files that ask for the ``supervise`` fixture, in this process
(the plugin loaded by module name, with plugin autoload off, so that the run
does not depend on how threadsup was installed) or, for the entry point, in a
subprocess of the installed threadsup."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import threadsup.pytest_plugin

pytest_plugins = ["pytester"]

#: Runnables the test files below share.
RUNNABLES = """
import threading

from threadsup import Signal, State
from threadsup.testing import AtLeast, healthy_until_cancelled, wait_status


def crash(token):
    raise RuntimeError("boom from the flaky child")


def root_of(**children):
    def root(token):
        for name, child in children.items():
            token.run(name, child)
        token.signal(Signal.HEALTHY)
        token.wait()

    return root
"""

#: A fixture released only after ``supervise``'s teardown (requested before it).
GATE_CONFTEST = """
import threading

import pytest


@pytest.fixture
def gate():
    event = threading.Event()
    yield event
    event.set()
"""


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Runner:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return Runner(pytester)


class Runner:
    """Runs a test file in this process, with the plugin loaded by module name."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester

    def __call__(self, source: str, *args: str, plugin: bool = True) -> pytest.RunResult:
        self.pytester.makepyfile(RUNNABLES + source)
        load = ("-p", "threadsup.pytest_plugin") if plugin else ()
        return self.pytester.runpytest_inprocess(*load, "-p", "no:cacheprovider", *args)


def test_a_test_using_the_fixture_passes_with_its_defaults_and_overrides(
    run_inner: Runner,
) -> None:
    result = run_inner(
        """
from threadsup.testing import FAST_BACKOFF


def test_worker(supervise):
    sup = supervise(root_of(worker=healthy_until_cancelled), log_backlog=0)
    wait_status(sup, "root.worker", state=State.HEALTHY, running=True)
    assert sup.logs("root") == []  # the override reached the Supervisor
    record = supervise.logs.wait_for(event="started", dn="root.worker")
    assert record.name.startswith("threadsup_test.")  # a logger of its own


def test_fast_backoff_by_default(supervise):
    supervise.expect_death("root.flaky")
    supervise(root_of(flaky=crash))
    record = supervise.logs.wait_for(event="restart_scheduled", dn="root.flaky")
    assert record.delay == FAST_BACKOFF.initial
"""
    )
    result.assert_outcomes(passed=2)


def test_an_unexpected_death_fails_the_test_with_its_dn_and_traceback(run_inner: Runner) -> None:
    result = run_inner(
        """
def test_flaky(supervise):
    sup = supervise(root_of(flaky=crash, steady=healthy_until_cancelled))
    wait_status(sup, "root.flaky", restarts=AtLeast(2))


def test_expecting_another_node_is_no_excuse(supervise):
    supervise.expect_death("root.other", "root.flaky.*")
    sup = supervise(root_of(flaky=crash))
    supervise.logs.wait_for(event="died", dn="root.flaky")
"""
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_flaky*",
            "* unexpected death(s); if the test expects them, declare it with"
            " expect_death('root.flaky'):",
            "root.flaky died: RuntimeError: boom from the flaky child (* deaths, the first shown)",
            "Traceback (most recent call last):",
            '*raise RuntimeError("boom from the flaky child")',
            "RuntimeError: boom from the flaky child",
            "*ERROR at teardown of test_expecting_another_node_is_no_excuse*",
            "*unexpected death*",
            "root.flaky died: RuntimeError: boom from the flaky child",
        ]
    )
    # The report is the message alone: not chained to, nor hidden behind, the
    # fixture's own exception.
    assert "During handling" not in result.stdout.str()
    assert "root.steady" not in "\n".join(
        line for line in result.outlines if "died" in line or "death" in line
    )


def test_an_expected_death_passes(run_inner: Runner) -> None:
    result = run_inner(
        """
def test_by_dn(supervise):
    supervise.expect_death("root.flaky")
    sup = supervise(root_of(flaky=crash, steady=healthy_until_cancelled))
    wait_status(sup, "root.flaky", restarts=AtLeast(2))


def test_by_pattern(supervise):
    supervise.expect_death("root.*")
    sup = supervise(root_of(flaky=crash))
    wait_status(sup, "root.flaky", restarts=AtLeast(1))


def test_an_expected_death_need_not_happen(supervise):
    supervise.expect_death("root.flaky")
    sup = supervise(root_of(steady=healthy_until_cancelled))
    wait_status(sup, "root.steady", state=State.HEALTHY)


def test_expect_death_takes_strings(supervise):
    import pytest

    with pytest.raises(TypeError, match="not int"):
        supervise.expect_death(3)
"""
    )
    result.assert_outcomes(passed=4)


def test_a_leaked_thread_fails_the_test_and_one_that_ends_in_time_does_not(
    run_inner: Runner, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(GATE_CONFTEST)
    result = run_inner(
        """
def test_leaky(gate, supervise):
    supervise.leak_timeout = 0.2
    threading.Thread(target=gate.wait, args=(30,), name="leaky-worker").start()


def test_ends_in_time(supervise):
    ended = threading.Event()
    threading.Thread(target=ended.wait, args=(0.05,), name="short-lived").start()
"""
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaky*",
            "1 thread(s) still alive 0.2 s after the test: ['leaky-worker']",
        ]
    )
    assert "short-lived" not in result.stdout.str()


def test_teardown_stops_every_supervisor_and_fails_on_one_that_does_not_stop(
    run_inner: Runner, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(GATE_CONFTEST)
    result = run_inner(
        """
started = []


def test_starts_two(supervise):
    started.append(supervise(root_of(a=healthy_until_cancelled)))
    started.append(supervise(healthy_until_cancelled))
    for sup in started:
        wait_status(sup, "root", state=State.HEALTHY)


def test_they_were_stopped():
    assert len(started) == 2
    for sup in started:
        assert sup.wait(timeout=0)
        assert not any(status.running for status in sup.snapshot().values())


def test_stubborn(gate, supervise):
    supervise.stop_timeout = 0.3
    supervise.leak_timeout = 0.1

    def stubborn(token):
        token.signal(Signal.HEALTHY)
        gate.wait(30)  # deaf to cancellation until the test's teardown ends

    sup = supervise(root_of(stubborn=stubborn))
    wait_status(sup, "root.stubborn", state=State.HEALTHY)
"""
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_stubborn*",
            "1 supervisor(s) did not stop within 0.3 s:",
            "  the tree did not stop within 0.3 s; still running: *root.stubborn*",
            "*thread(s) still alive 0.1 s after the test:*root.stubborn*",
        ]
    )


def test_tests_that_do_not_use_the_fixture_are_untouched(run_inner: Runner) -> None:
    # No hook at all, so nothing can reach a test that does not ask for the fixture.
    assert [name for name in vars(threadsup.pytest_plugin) if name.startswith("pytest_")] == []
    source = """
import logging

from threadsup import Backoff, Supervisor
from threadsup.testing import capture_logs

release = threading.Event()
outlives = threading.Thread(target=release.wait, args=(30,), name="outlives-its-test")


def test_leaves_a_thread_and_a_death_behind():
    outlives.start()
    logger = logging.getLogger("not_the_fixtures")
    steady = Backoff(jitter=0)  # the same records in both runs
    sup = Supervisor(root_of(flaky=crash), logger=logger, backoff=steady)
    with capture_logs(logger) as logs, sup:
        logs.wait_for(event="died", dn="root.flaky")


def test_next():
    assert outlives.is_alive()  # nothing waited for it, nothing failed on it
    release.set()
    outlives.join(10)
"""
    with_plugin = run_inner(source, "-rA")
    without = run_inner(source, "-rA", plugin=False)
    with_plugin.assert_outcomes(passed=2)
    without.assert_outcomes(passed=2)

    def report(result: pytest.RunResult) -> list[str]:
        timing = re.compile(r"\d+\.\d+s")
        return [timing.sub("<t>", line) for line in result.outlines if "Captured" not in line]

    assert report(with_plugin) == report(without)


def test_importing_the_plugin_loads_no_optional_module() -> None:
    # pytest imports the plugin in every run where threadsup is installed.
    heavy = ["threadsup.prometheus", "prometheus_client", "threadsup.status", "http.server"]
    code = f"import sys, threadsup.pytest_plugin; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr


SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def test_setup_cfg_declares_the_entry_point() -> None:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG, encoding="utf-8")
    entries = config["options.entry_points"]["pytest11"].split()
    assert entries == ["threadsup", "=", "threadsup.pytest_plugin"]


def _installed_entry_point() -> str | None:
    """The value of the installed threadsup's ``pytest11`` entry point, if any."""
    try:
        dist = importlib.metadata.distribution("threadsup")
    except importlib.metadata.PackageNotFoundError:
        return None
    points = [ep.value for ep in dist.entry_points if ep.group == "pytest11"]
    return points[0] if points else None


@pytest.mark.skipif(
    _installed_entry_point() is None,
    reason="the installed threadsup's metadata predates its pytest11 entry point: "
    "reinstall it (pip install -e .) to run this test",
)
@pytest.mark.parametrize("autoload", [True, False], ids=["autoloaded", "with -p threadsup"])
def test_the_installed_entry_point_registers_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, autoload: bool
) -> None:
    assert _installed_entry_point() == "threadsup.pytest_plugin"
    if autoload:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        args: tuple[str, ...] = ()
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        args = ("-p", "threadsup")
    pytester.makepyfile(
        """
def test_registered(pytestconfig, supervise):
    plugin = pytestconfig.pluginmanager.get_plugin("threadsup")
    assert plugin.__name__ == "threadsup.pytest_plugin"
"""
    )
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)
