"""Whole-process behaviour, each in a fresh interpreter: exit without stop(),
and cancel() from a signal handler that interrupts the main thread anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import threadsup

REPO = Path(threadsup.__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")


EXIT_SCRIPT = """
    import threading, time
    from threadsup import Signal, Supervisor

    started = threading.Event()

    def stubborn(token):
        token.signal(Signal.HEALTHY)
        started.set()
        end = time.monotonic() + {ignore}
        while time.monotonic() < end:  # ignores its cancellation for a while
            time.sleep(0.02)

    def root(token):
        token.run("stubborn", stubborn)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = Supervisor(root, shutdown_timeout=1).start()
    assert started.wait(10)
    print("started", flush=True)
    # no stop(): the interpreter exits here
"""


@pytest.mark.parametrize(
    "ignore",
    [
        pytest.param(0, id="cooperative"),
        pytest.param(30, id="ignores-cancellation", marks=pytest.mark.slow),
    ],
)
def test_interpreter_exits_within_the_shutdown_timeout_without_stop(ignore: int) -> None:
    proc = _spawn(EXIT_SCRIPT.replace("{ignore}", str(ignore)))
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the child asserts within 10 s
    t0 = time.monotonic()
    out, err = _finish(proc, timeout=20)
    elapsed = time.monotonic() - t0
    assert line.strip() == "started", (line, out, err)
    assert proc.returncode == 0, err
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s with shutdown_timeout=1"


SIGNAL_STRESS_SCRIPT = """
    import random, signal
    from threadsup import Backoff, Signal, Supervisor

    def crash(token):
        raise RuntimeError("churn")

    def idle(token):
        token.signal(Signal.HEALTHY)
        token.wait()

    def root(token):
        token.run("crash", crash)
        token.run("idle", idle)
        token.signal(Signal.HEALTHY)
        token.wait()

    current = []

    def handler(signum, frame):
        current[-1].cancel()

    signal.signal(signal.SIGALRM, handler)
    rng = random.Random(7)
    for i in range(25):
        sup = Supervisor(root, backoff=Backoff(initial=0.001, maximum=0.005, jitter=0))
        current.append(sup)
        sup.start()
        # The first alarm lands anywhere in the loop below; the next ones keep
        # interrupting the main thread while it is inside the library.
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.03), 0.002)
        while not sup.wait(0.001):
            sup.snapshot()
            sup.wait_settled(0.001)
        assert sup.stop(5), i
        signal.setitimer(signal.ITIMER_REAL, 0)
    print("ok", flush=True)
"""


def test_cancel_from_a_signal_handler_interrupting_the_library_does_not_deadlock() -> None:
    proc = _spawn(SIGNAL_STRESS_SCRIPT)
    out, err = _finish(proc, timeout=40)
    assert proc.returncode == 0, err
    assert out.strip() == "ok", (out, err)


SIGTERM_SCRIPT = """
    import signal, threading, time
    from threadsup import Signal, Supervisor

    started = threading.Event()

    def stuck(token):
        token.signal(Signal.HEALTHY)
        started.set()
        time.sleep(60)  # blocked, deaf to its cancellation

    def on_sigterm(signum, frame):
        raise SystemExit(0)

    # The README's pattern for SIGTERM.
    signal.signal(signal.SIGTERM, on_sigterm)
    with Supervisor(stuck, shutdown_timeout={timeout}) as sup:
        assert started.wait(10)
        print("started", flush=True)
        sup.wait()
"""


@pytest.mark.slow
def test_sigterm_stops_a_tree_with_a_stuck_runnable_within_the_shutdown_timeout() -> None:
    timeout = 4.0
    proc = _spawn(SIGTERM_SCRIPT.replace("{timeout}", str(timeout)))
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the child asserts within 10 s
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc, timeout=20)
    elapsed = time.monotonic() - t0
    assert line.strip() == "started", (line, out, err)
    assert proc.returncode == 0, err
    assert "stop_timed_out" in err or "did not stop within" in err, err
    # Not 60 s (the sleep), nor twice the timeout (the block's stop, then the exit hook's).
    assert timeout <= elapsed < timeout + 3.0, f"exit took {elapsed:.1f} s after SIGTERM"
