"""The chaos soak's short profile, in CI.

``make soak`` runs ``python -m benchmarks.soak`` for 60 s; here the same run lasts a
few seconds, in-process, and every property it checks is asserted: restarts handled,
no two live incarnations of a DN, every start matched by an exit, convergence once
failures stop, threads bounded during the run and back to the baseline after
``stop()``, memory flat across rounds (tracemalloc), deaths decided promptly, and
``stop()`` within its timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import threadsup

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "benchmarks" / "soak.py").is_file():
    pytest.skip("no benchmarks/soak.py here", allow_module_level=True)
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after the installed threadsup, which tox tests

from benchmarks.soak import SoakConfig, run_soak  # noqa: E402

#: The short profile: a few seconds of chaos on the full 1,000 runnables.
SHORT = SoakConfig(seconds=4.0, nodes=1000, round_seconds=1.0, stop_timeout=10.0)


# The soak bounds its own waits (build and convergence 60 s each, stop 10 s): on a loaded
# machine its 1,000 threads may take longer than pytest's default 60 s.
@pytest.mark.timeout(180)
@pytest.mark.slow
@pytest.mark.parametrize("reuse_threads", [False, True], ids=["fresh_threads", "reused_threads"])
def test_the_short_soak_holds_every_property(reuse_threads: bool) -> None:
    report = run_soak(dataclasses.replace(SHORT, reuse_threads=reuse_threads))
    assert report.reuse_threads is reuse_threads
    text = report.format()
    print(text)
    assert not report.violations, text
    # The same properties, one by one, so that a failure names its figure.
    assert report.nodes == 1000
    assert report.restarts_per_second > 0 and report.restarts.get("DEAD", 0) > 0, text
    assert report.max_live_per_dn == 1, text
    assert report.starts == report.exits, text
    assert report.deaths_superseded >= 0, text
    assert report.max_threads <= report.thread_bound, text
    assert report.threads_left_after_stop == [], text
    assert len(report.memory_mb) >= 3, text
    assert report.memory_growth_mb <= SHORT.memory_growth_bound_mb, text
    assert report.leaf_gap_max <= SHORT.leaf_gap_bound_s, text
    assert report.stop_ok and report.stop_s <= SHORT.stop_timeout, text


@pytest.mark.timeout(180)  # the command itself is bounded at 120 s
@pytest.mark.slow
def test_the_soak_command_prints_its_figures_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = dict(os.environ)
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), package_parent, env.get("PYTHONPATH")])
    )
    command = [sys.executable, "-m", "benchmarks.soak", "--seconds", "1.5", "--nodes", "150"]
    try:
        result = subprocess.run(
            [*command, "--seed", "5", "--json", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"python -m benchmarks.soak still running after {exc.timeout} s")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    for figure in ("restarts handled", "death -> restart", "threads", "memory", "stop()"):
        assert figure in result.stdout, result.stdout
    assert "all checks passed" in result.stdout
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert report["nodes"] == 150 and report["seed"] == 5
    assert report["violations"] == []
    assert report["stop_ok"] is True
    assert report["restarts_per_second"] > 0
