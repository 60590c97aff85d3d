"""The benchmarks run: ``python -m benchmarks --quick --json FILE`` completes and writes
well-formed JSON naming every benchmark, the wake-up latencies, the workloads beside
their bare-thread floor and thread reuse's rows. Timings are never asserted: they depend
on the machine. The runner's own logic (sessions, targets, units) is tested in-process on
made-up benchmarks."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

import threadsup

ROOT = Path(__file__).resolve().parent.parent
#: ``--quick`` takes some tens of seconds; this only stops a hang on a loaded machine.
RUN_TIMEOUT = 300.0

HELPERS = [
    "wait",
    "get",
    "put",
    "wait_for_event",
    "wait_for_future",
    "wait_for_token",
    "closing_recv",
    "closing_accept",
]
WAKEUP = {
    *(f"wakeup.{helper}.{how}" for helper in HELPERS for how in ("cancel", "sibling")),
    "wakeup.fail_after.deadline",
    "wakeup.floor",
}
#: The workloads: each has a ``.floor`` twin, its baseline, and a target.
WORKLOADS = ["restart", "restart_at_scale", "failure_restart", "spawn", "stop", "idle", "memory"]
FLOORS = {*WORKLOADS, *(f"{name}.floor" for name in WORKLOADS)}
#: Thread reuse's rows: churn beside a thread pool (its floor), today's thread per
#: child and a bare thread per task; restart_warm beside today's restart.
CHURN = {"churn", "churn.floor", "churn.reuse_off", "churn.thread_per_task"}
REUSE = CHURN | {"restart_warm"}
EXPECTED = WAKEUP | FLOORS | REUSE

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "benchmarks" / "__main__.py").is_file(), reason="no benchmarks/ here"
    ),
    # A whole quick run takes 20-30 s on a quiet 2-core machine, minutes on a loaded one:
    # the subprocess's own timeout, not pytest's 60 s default, is the bound here.
    pytest.mark.timeout(RUN_TIMEOUT + 30),
]


def _run(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "results.json"
    env = dict(os.environ)
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), package_parent, env.get("PYTHONPATH")])
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"python -m benchmarks --quick still running after {exc.timeout} s")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result.stdout, report


def _check_result(row: dict[str, Any]) -> None:
    assert isinstance(row["name"], str) and row["name"]
    assert isinstance(row["description"], str) and row["description"]
    assert isinstance(row["unit"], str) and row["unit"]
    assert isinstance(row["n"], int) and row["n"] > 0
    for key in ("median", "p90", "min", "max", "mean"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), (row["name"], key)
    assert row["min"] <= row["median"] <= row["p90"] <= row["max"]  # order, not timing


@pytest.mark.slow
def test_quick_run_writes_every_wakeup_benchmark_as_json(tmp_path: Path) -> None:
    stdout, report = _run(tmp_path)
    assert report["quick"] is True
    assert isinstance(report["machine"]["python"], str)
    names = [row["name"] for row in report["results"]]
    assert len(names) == len(set(names))
    assert not EXPECTED - set(names)  # other modules may add benchmarks of their own
    for row in report["results"]:
        _check_result(row)
        if row["name"] == "wakeup.floor":
            assert row["unit"] == "s"
            assert row["baseline"] is None and row["ratio"] is None
        elif row["name"] in WAKEUP:
            assert row["unit"] == "s"
            assert row["baseline"] == "wakeup.floor"
            assert isinstance(row["ratio"], float)
    table = stdout.splitlines()
    assert table[0].split()[:2] == ["benchmark", "n"]
    for name in EXPECTED:
        assert any(line.startswith(name + " ") for line in table), name


def test_only_selects_by_prefix_and_brings_the_baseline(tmp_path: Path) -> None:
    _, report = _run(tmp_path, "--only", "wakeup.wait")
    assert sorted(row["name"] for row in report["results"]) == [
        "wakeup.floor",  # the baseline of the two others
        "wakeup.wait.cancel",
        "wakeup.wait.sibling",
    ]
    for row in report["results"]:
        _check_result(row)


@pytest.mark.slow
def test_quick_run_gives_every_workload_beside_its_floor(tmp_path: Path) -> None:
    stdout, report = _run(tmp_path, *(arg for name in WORKLOADS for arg in ("--only", name)))
    rows = {row["name"]: row for row in report["results"]}
    assert sorted(rows) == sorted(FLOORS)
    for name, row in rows.items():
        _check_result(row)
        assert row["unit"] == ("B" if name.startswith("memory") else "s")
        if name.endswith(".floor"):
            assert row["baseline"] is None and row["ratio"] is None
            assert row["target"] is None and row["met"] is None
        else:
            assert row["baseline"] == f"{name}.floor"
            assert row["baseline_median"] == rows[f"{name}.floor"]["median"]
            assert isinstance(row["target"]["limit"], (int, float))
            assert isinstance(row["met"], bool)  # whether it is met is the machine's business
    table = stdout.splitlines()
    for name in FLOORS:
        assert any(line.startswith(name + " ") for line in table), name
    # The quick run scales 10,000 threads down, and says so.
    assert any("1,000" in text for text in report["notes"])
    assert any(line.startswith("note: quick run") for line in table)


def test_quick_run_gives_the_reuse_rows_beside_their_baselines(tmp_path: Path) -> None:
    stdout, report = _run(tmp_path, "--only", "churn", "--only", "restart_warm")
    rows = {row["name"]: row for row in report["results"]}
    assert sorted(rows) == sorted(REUSE | {"restart"})  # restart: restart_warm's baseline
    for row in rows.values():
        _check_result(row)
        assert row["unit"] == "s"
    assert rows["churn.floor"]["baseline"] is None and rows["churn.floor"]["target"] is None
    for name in CHURN - {"churn.floor"}:
        assert rows[name]["baseline"] == "churn.floor"
        assert rows[name]["baseline_median"] == rows["churn.floor"]["median"]
    assert rows["churn"]["target"] == {"kind": "ratio", "limit": 3.0}
    assert rows["restart_warm"]["baseline"] == "restart"
    assert rows["restart_warm"]["baseline_median"] == rows["restart"]["median"]
    assert rows["restart_warm"]["target"] == {"kind": "ratio", "limit": 0.5}
    for name in ("churn", "restart_warm"):
        assert isinstance(rows[name]["met"], bool)  # whether it is met is the machine's business
    assert any("1,000 children" in text for text in report["notes"])
    table = stdout.splitlines()
    for name in REUSE:
        assert any(line.startswith(name + " ") for line in table), name


def test_only_selects_a_workload_and_its_floor_not_its_namesakes(tmp_path: Path) -> None:
    _, report = _run(tmp_path, "--only", "restart")
    rows = {row["name"]: row for row in report["results"]}
    assert sorted(rows) == ["restart", "restart.floor"]
    assert rows["restart"]["baseline"] == "restart.floor"
    assert rows["restart"]["target"] == {"kind": "ratio", "limit": 1.5}


# ---------------------------------------------------------------- the runner, in-process


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The ``benchmarks`` package (not its benchmarks), with an empty registry."""
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks

    monkeypatch.setattr(benchmarks, "REGISTRY", {})
    yield benchmarks


def _constant(
    value: float, log: list[tuple[str, str]], name: str
) -> Callable[[], contextlib.AbstractContextManager[Callable[[], float]]]:
    """A factory whose samples are all ``value``; it logs its opening, samples and closing."""

    def measure() -> float:
        log.append(("sample", name))
        return value

    @contextlib.contextmanager
    def factory() -> Iterator[Callable[[], float]]:
        log.append(("open", name))
        try:
            yield measure
        finally:
            log.append(("close", name))

    return factory


def test_sessions_run_alone_after_the_shared_benchmarks(runner: ModuleType) -> None:
    log: list[tuple[str, str]] = []
    Benchmark, Target = runner.Benchmark, runner.Target
    benches = [
        Benchmark("s1", _constant(2.0, log, "s1"), "", repeats=2, warmup=0, session="x"),
        Benchmark("a", _constant(1.0, log, "a"), "", repeats=2, warmup=0),
        Benchmark(
            "s2",
            _constant(3.0, log, "s2"),
            "",
            repeats=1,
            warmup=0,
            session="x",
            baseline="a",
            target=Target("ratio", 2.5),
        ),
        Benchmark("b", _constant(4.0, log, "b"), "", repeats=1, warmup=0, session="y"),
    ]
    results = {r.name: r for r in runner.run(benches)}
    assert log == [
        ("open", "a"),
        ("sample", "a"),
        ("sample", "a"),
        ("close", "a"),
        ("open", "s1"),
        ("open", "s2"),
        ("sample", "s1"),
        ("sample", "s2"),
        ("sample", "s1"),
        ("close", "s2"),
        ("close", "s1"),
        ("open", "b"),
        ("sample", "b"),
        ("close", "b"),
    ]
    assert results["s2"].ratio == 3.0 and results["s2"].baseline_median == 1.0
    assert results["s2"].met is False
    assert results["s1"].met is None and results["a"].ratio is None


def test_quick_is_seen_by_factories_only_during_a_quick_run(runner: ModuleType) -> None:
    seen: list[bool] = []

    @contextlib.contextmanager
    def factory() -> Iterator[Callable[[], float]]:
        seen.append(runner.quick())
        runner.note("scaled down")
        runner.note("scaled down")
        yield lambda: 1.0

    bench = runner.Benchmark("q", factory, "", quick_repeats=1, warmup=0)
    runner.run([bench], quick=True)
    assert seen == [True] and runner.quick() is False
    assert runner.NOTES == ["scaled down"]
    runner.run([bench], quick=False)
    assert seen == [True, False] and runner.NOTES == ["scaled down"]


def test_targets_units_and_the_table(runner: ModuleType) -> None:
    Benchmark, Result, Target = runner.Benchmark, runner.Result, runner.Target

    def result(name: str, samples: list[float], target: Any, base: float, unit: str) -> Any:
        bench = Benchmark(name, _constant(0.0, [], name), "", unit=unit, target=target)
        return Result(bench, samples, ratio=samples[0] / base, baseline_median=base)

    memory = result("memory", [5000.0], Target("excess", 4096), 2000.0, "B")
    idle = result("idle", [0.02], Target("value", 0.01), 0.001, "s")
    restart = result("restart", [0.0012], Target("ratio", 1.5), 0.001, "s")
    assert memory.excess == 3000.0 and memory.met is True
    assert idle.met is False and restart.met is True
    assert runner.format_value(0.0005, "s") == "500.0µs"
    assert runner.format_value(0.25, "s") == "250.00ms"
    assert runner.format_value(3.5, "s") == "3.50s"
    assert runner.format_value(2048, "B") == "2.00KiB"
    assert Target("excess", 4096).describe("B") == "+<=4.00KiB"
    table = runner.format_table([memory, idle, restart]).splitlines()
    assert table[0].split() == [
        "benchmark",
        "n",
        "median",
        "p90",
        "baseline",
        "x",
        "baseline",
        "target",
        "met",
    ]
    assert table[2].split()[-2:] == ["yes", "(2.93KiB)"]
    assert table[3].split()[-1] == "NO"
    with pytest.raises(ValueError):
        Target("faster", 1.0)
