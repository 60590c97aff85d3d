"""Chaos soak: ``python -m benchmarks.soak [--seconds N] [--nodes N] [--ci] [--reuse-threads]
[--json FILE]``.

Runs a tree of ``--nodes`` runnables (1,000 by default) in random groups (1 to 4
members) and depths (up to 6) for ``--seconds`` (60 by default; ``--ci``: 20).
Every runnable fails at random: it raises an exception or a `BaseException`,
returns without DONE, lets an out-of-order signal's error escape, raises a
`Cancelled` of another token, exits slowly, or (rarely) finishes DONE; once
cancelled it exits at once, slowly, or by raising. The backoff is fast (1 ms
doubling to 50 ms, 20 % jitter). With ``--reuse-threads`` the supervisor reuses
threads across incarnations (``reuse_threads=True``), and every check holds
the same. Meanwhile other threads call ``snapshot()``,
``wait_settled(0.01)`` and ``restart(dn)`` on random nodes.

Then failures stop (the *calm* phase: every runnable that wakes up signals
HEALTHY and stays), the tree must converge, and ``stop()`` must finish within
its timeout. The run reports, and checks:

- restarts per second handled (``restart_scheduled`` decisions), and starts;
- the processor never stalls: the longest gap between a leaf's death and its
  restart decision (``died`` to ``restart_scheduled`` log records), and the same
  for any node (which includes waiting for its subtree's threads to exit);
- no two live incarnations of one DN, ever;
- every node restarted after every failure: the tree converges to every DN
  present and HEALTHY (or DONE), and every start is matched by an exit;
- no thread leak: the thread count stays under a bound during the run and is
  back to the baseline after ``stop()``;
- memory flat across rounds (``tracemalloc``, after ``gc.collect()``): growth
  from the end of the second round (the first is a warm-up) to the end of the
  last under a bound;
- ``stop()`` returns True within its timeout.

It exits with status 1 when a check fails. `run_soak` is the same run as a
function, for tests.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import logging
import math
import os
import random
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from threadsup import (
    Backoff,
    Cancelled,
    CancelToken,
    NodeStatus,
    Signal,
    State,
    Supervisor,
    UnknownNode,
)

__all__ = ["SoakConfig", "SoakReport", "main", "run_soak"]

MAX_DEPTH = 6
MAX_GROUP = 4


@dataclass
class SoakConfig:
    """What to run; the defaults are ``make soak``'s."""

    seconds: float = 60.0
    nodes: int = 1000
    seed: int | None = None
    #: A lone leaf's mean life before it fails, in seconds (exponential, capped at 4x).
    #: A node whose death restarts ``k`` nodes (its group's subtrees) lives ``k`` times
    #: longer, so that every node causes about ``1 / mean_life`` restarts per second:
    #: 1,000 nodes ask for some 125 restarts/s, which a busy 2-core machine sustains.
    mean_life: float = 8.0
    #: The longest a slow exit takes (ignoring its cancellation meanwhile).
    slow_exit: float = 0.05
    #: Memory and counters are sampled at the end of each round.
    round_seconds: float = 5.0
    #: How often the restarter calls ``restart(dn)`` and the snapshotter ``snapshot()``.
    restart_interval: float = 0.1
    snapshot_interval: float = 0.25
    stop_timeout: float = 10.0
    #: Bound of the calm phase: the tree must converge within it.
    converge_timeout: float = 60.0
    #: Bounds the run is checked against.
    memory_growth_bound_mb: float = 5.0
    leaf_gap_bound_s: float = 5.0
    thread_slack: int = 100
    #: Trace allocations to check memory; off, the figures are faster but memory is the RSS.
    tracemalloc: bool = True
    #: Run the tree with ``Supervisor(reuse_threads=True)``.
    reuse_threads: bool = False


@dataclass
class SoakReport:
    """The figures of one run, and the checks that failed (``violations``)."""

    seconds: float
    nodes: int
    depth: int
    groups: int
    seed: int
    #: Memory figures are tracemalloc's (else the RSS, not checked).
    traced: bool = True
    reuse_threads: bool = False
    build_s: float = 0.0
    starts: int = 0
    exits: int = 0
    #: Exits by how the runnable ended: raised, returned, cancelled (token cancelled at exit).
    exits_by_kind: dict[str, int] = field(default_factory=dict)
    deaths: int = 0
    #: ``restart_scheduled`` decisions, by the state restarted from.
    restarts: dict[str, int] = field(default_factory=dict)
    restarts_per_second: float = 0.0
    starts_per_second: float = 0.0
    #: Deaths whose own restart was superseded by an ancestor's or the group's.
    deaths_superseded: int = 0
    restart_calls: int = 0
    unknown_dn: int = 0
    snapshots: int = 0
    #: How long ``snapshot()`` took (it holds the tree lock throughout), ms.
    snapshot_ms_mean: float = 0.0
    snapshot_ms_max: float = 0.0
    settle_calls: int = 0
    #: Death to restart decision, seconds: leaves (processor latency) and all nodes.
    leaf_gap_max: float = 0.0
    leaf_gap_p99: float = 0.0
    gap_max: float = 0.0
    gap_samples: int = 0
    baseline_threads: int = 0
    max_threads: int = 0
    thread_bound: int = 0
    threads_left_after_stop: list[str] = field(default_factory=list)
    max_queue: int = 0
    #: Traced memory at the end of each round, MB.
    memory_mb: list[float] = field(default_factory=list)
    memory_growth_mb: float = 0.0
    #: Traced memory once the tree converged after the calm phase, MB.
    memory_calm_mb: float = 0.0
    converge_s: float = 0.0
    stop_s: float = 0.0
    stop_ok: bool = False
    max_live_per_dn: int = 0
    violations: list[str] = field(default_factory=list)

    def format(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.exits_by_kind.items()))
        restarts = ", ".join(f"{k} {v}" for k, v in sorted(self.restarts.items()))
        memory = " ".join(f"{m:.1f}" for m in self.memory_mb)
        lines = [
            f"threadsup chaos soak: {self.nodes} runnables (depth {self.depth}, "
            f"{self.groups} groups), {self.seconds:g} s, seed {self.seed}"
            f"{'' if self.traced else ', without tracemalloc'}"
            f"{', reusing threads' if self.reuse_threads else ''}",
            f"  built                 in {self.build_s:.2f} s",
            f"  restarts handled      {sum(self.restarts.values())} ({restarts}): "
            f"{self.restarts_per_second:.0f}/s",
            f"  runnable starts       {self.starts} ({self.starts_per_second:.0f}/s); "
            f"exits {self.exits} ({kinds})",
            f"  deaths                {self.deaths} logged; "
            f"{self.restarts.get('DEAD', 0)} restarted as DEAD, {self.deaths_superseded} "
            "superseded by an ancestor's or their group's restart",
            f"  runtime control       restart(dn) x{self.restart_calls} "
            f"({self.unknown_dn} on a DN being rebuilt), snapshot() x{self.snapshots}, "
            f"wait_settled(0.01) x{self.settle_calls}; snapshot() took "
            f"{self.snapshot_ms_mean:.1f} ms on average, {self.snapshot_ms_max:.1f} ms at most",
            f"  death -> restart      leaves: max {self.leaf_gap_max * 1000:.1f} ms, "
            f"p99 {self.leaf_gap_p99 * 1000:.1f} ms; any node: max {self.gap_max * 1000:.1f} ms "
            f"({self.gap_samples} deaths timed)",
            f"  threads               baseline {self.baseline_threads}, max "
            f"{self.max_threads} (bound {self.thread_bound}), left after stop "
            f"{len(self.threads_left_after_stop)}",
            f"  request queue         max {self.max_queue}",
            f"  memory ({'tracemalloc' if self.traced else 'RSS, unchecked'}, MB per round) "
            f"{memory}; growth {self.memory_growth_mb:+.2f} MB; {self.memory_calm_mb:.1f} MB "
            "once calm",
            f"  converged after calm  {self.converge_s:.2f} s",
            f"  stop()                {self.stop_s:.2f} s, returned {self.stop_ok}",
            f"  live incarnations     at most {self.max_live_per_dn} per DN",
        ]
        if self.violations:
            lines.append("FAILED:")
            lines.extend(f"  - {v}" for v in self.violations)
        else:
            lines.append("all checks passed")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- shape


@dataclass(frozen=True)
class _Spec:
    dn: str
    depth: int
    groups: tuple[tuple[str, ...], ...]
    #: Nodes in its subtree, itself included.
    size: int
    #: Nodes a death of this node restarts: its group's subtrees.
    cost: int


def _build_shape(nodes: int, rng: random.Random) -> dict[str, _Spec]:
    """``nodes`` DNs: groups of 1 to 4 added under random nodes of depth < 6."""
    depth = {"root": 1}
    groups: dict[str, list[tuple[str, ...]]] = {"root": []}
    counts = {"root": 0}
    open_parents = ["root"]
    left = nodes - 1
    while left > 0:
        parent = rng.choice(open_parents)
        size = min(rng.randint(1, MAX_GROUP), left)
        group = []
        for _ in range(size):
            dn = f"{parent}.n{counts[parent]}"
            counts[parent] += 1
            depth[dn] = depth[parent] + 1
            groups[dn] = []
            counts[dn] = 0
            group.append(dn)
            if depth[dn] < MAX_DEPTH:
                open_parents.append(dn)
        groups[parent].append(tuple(group))
        left -= size
    sizes: dict[str, int] = {}
    for dn in sorted(depth, key=lambda dn: -depth[dn]):  # children before parents
        sizes[dn] = 1 + sum(sizes[child] for group in groups[dn] for child in group)
    costs = {"root": sizes["root"]}
    for dn in depth:
        for members in groups[dn]:
            cost = sum(sizes[member] for member in members)
            costs.update(dict.fromkeys(members, cost))
    return {dn: _Spec(dn, depth[dn], tuple(groups[dn]), sizes[dn], costs[dn]) for dn in depth}


# ------------------------------------------------------------------------------ runnables


class ChaosError(Exception):
    pass


class ChaosCrash(BaseException):
    pass


class _Tally:
    """Per-DN start and exit counts, kept by the runnables themselves."""

    def __init__(self, dns: list[str]) -> None:
        self.lock = threading.Lock()
        self.starts = dict.fromkeys(dns, 0)
        self.exits = dict.fromkeys(dns, 0)
        self.live = dict.fromkeys(dns, 0)
        self.max_live = 0
        self.kinds = {"raised": 0, "returned": 0, "cancelled": 0}

    def started(self, dn: str) -> None:
        with self.lock:
            self.starts[dn] += 1
            self.live[dn] += 1
            self.max_live = max(self.max_live, self.live[dn])

    def exited(self, dn: str, kind: str) -> None:
        with self.lock:
            self.exits[dn] += 1
            self.live[dn] -= 1
            self.kinds[kind] += 1


class _Chaos:
    """The runnable of one DN: builds its groups, then fails at random."""

    def __init__(self, spec: _Spec, soak: _Soak, seed: int) -> None:
        self.spec = spec
        self.soak = soak
        self.rng = random.Random(seed)
        # A death restarts the subtrees of the whole group: a node fails that many
        # times less often than a lone leaf, so that each node costs about the same
        # restarts per second. Leaves churn; big subtrees go down now and then.
        self.mean_life = soak.config.mean_life * spec.cost
        self.max_life = 4 * self.mean_life

    def __call__(self, token: CancelToken) -> None:
        tally = self.soak.tally
        tally.started(self.spec.dn)
        kind = "returned"
        try:
            self._run(token)
        except BaseException:
            kind = "raised"
            raise
        finally:
            tally.exited(self.spec.dn, "cancelled" if token.cancelled else kind)

    def _run(self, token: CancelToken) -> None:
        soak, rng, config = self.soak, self.rng, self.soak.config
        for group in self.spec.groups:
            token.run_group({dn.rpartition(".")[2]: soak.runnables[dn] for dn in group})
        if soak.calm.is_set():
            self._stay(token, healthy=False)
            return
        healthy = rng.random() < 0.85
        if healthy:
            token.signal(Signal.HEALTHY)
        life = min(rng.expovariate(1 / self.mean_life), self.max_life)
        if token.wait(life):
            roll = rng.random()
            if roll < 0.1:
                time.sleep(rng.uniform(0, config.slow_exit))  # a slow exit
            elif roll < 0.2:
                token.raise_if_cancelled()
            elif roll < 0.25:
                raise ChaosError("failed while cancelled")
            return
        if soak.calm.is_set():
            self._stay(token, healthy)
            return
        roll = rng.random()
        if roll < 0.30:
            raise ChaosError(f"{self.spec.dn} failed")
        if roll < 0.45:
            return  # without DONE: a death
        if roll < 0.55:
            token.signal(Signal.HEALTHY if healthy else Signal.DONE)  # out of order: raises
        if roll < 0.65:
            raise ChaosCrash(f"{self.spec.dn} crashed")
        if roll < 0.73:
            time.sleep(rng.uniform(0, config.slow_exit))
            raise ChaosError(f"{self.spec.dn} failed slowly")
        if roll < 0.78:
            raise Cancelled("root.elsewhere")  # someone else's: a death
        if roll < 0.81 and healthy:
            token.signal(Signal.DONE)
            return
        raise ChaosError(f"{self.spec.dn} failed")

    @staticmethod
    def _stay(token: CancelToken, healthy: bool) -> None:
        if not healthy:
            token.signal(Signal.HEALTHY)
        token.wait()


# ------------------------------------------------------------------------------- records


class _Gaps(logging.Handler):
    """Times deaths to their restart decisions from the lifecycle records.

    Keeps O(nodes) state and a fixed histogram, so that it does not itself
    grow the memory the soak measures.
    """

    #: Histogram bucket bounds: 50 µs to ~100 s, 5 % apart.
    BOUNDS: ClassVar[list[float]] = [50e-6 * 1.05**i for i in range(300)]

    def __init__(self, leaves: set[str]) -> None:
        super().__init__(logging.INFO)
        self.leaves = leaves
        self.pending: dict[str, float] = {}
        self.deaths = 0
        self.decisions: dict[str, int] = {}
        self.leaf_max = 0.0
        self.any_max = 0.0
        self.samples = 0
        self.histogram = [0] * (len(self.BOUNDS) + 1)

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        dn = getattr(record, "dn", None)
        if not isinstance(dn, str):
            return
        if event == "died":
            self.deaths += 1
            self.pending[dn] = record.created
        elif event == "restart_scheduled":
            args = record.args
            state = str(args[1]) if isinstance(args, tuple) and len(args) > 1 else "?"
            if getattr(record, "requested", False):  # restart(dn): no death of its own
                state = "requested"
            self.decisions[state] = self.decisions.get(state, 0) + 1
            died = self.pending.pop(dn, None)
            if state == "DEAD" and died is not None:
                gap = max(0.0, record.created - died)
                self.samples += 1
                self.any_max = max(self.any_max, gap)
                if dn in self.leaves:
                    self.leaf_max = max(self.leaf_max, gap)
                    self.histogram[bisect.bisect_left(self.BOUNDS, gap)] += 1

    def leaf_percentile(self, q: float) -> float:
        total = sum(self.histogram)
        if not total:
            return 0.0
        rank = math.ceil(total * q / 100)
        seen = 0
        for index, count in enumerate(self.histogram):
            seen += count
            if seen >= rank:
                return self.BOUNDS[min(index, len(self.BOUNDS) - 1)]
        return self.BOUNDS[-1]


# ---------------------------------------------------------------------------------- soak


class _Soak:
    def __init__(self, config: SoakConfig, seed: int) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.specs = _build_shape(config.nodes, self.rng)
        self.tally = _Tally(list(self.specs))
        self.calm = threading.Event()
        self.runnables = {
            dn: _Chaos(spec, self, self.rng.getrandbits(64)) for dn, spec in self.specs.items()
        }


def run_soak(config: SoakConfig, progress: bool = False) -> SoakReport:
    """Run the soak once; the report's ``violations`` lists every failed check."""
    seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(32)
    soak = _Soak(config, seed)
    specs = soak.specs
    report = SoakReport(
        seconds=config.seconds,
        nodes=len(specs),
        depth=max(spec.depth for spec in specs.values()),
        groups=sum(len(spec.groups) for spec in specs.values()),
        seed=seed,
        traced=config.tracemalloc,
        reuse_threads=config.reuse_threads,
    )
    violations = report.violations

    def say(text: str) -> None:
        if progress:
            print(f"  {text}", file=sys.stderr, flush=True)

    before = set(threading.enumerate())
    report.baseline_threads = len(before)
    report.thread_bound = len(before) + len(specs) + config.thread_slack
    started_tracing = config.tracemalloc and not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start(1)

    logger = logging.getLogger(f"threadsup_soak.{seed}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    gaps = _Gaps({dn for dn, spec in specs.items() if not spec.groups})
    logger.addHandler(gaps)
    backoff = Backoff(initial=0.001, multiplier=2.0, maximum=0.05, jitter=0.2)
    sup = Supervisor(
        soak.runnables["root"],
        logger=logger,
        backoff=backoff,
        shutdown_timeout=config.stop_timeout,
        reuse_threads=config.reuse_threads,
    )
    chaos_over = threading.Event()
    monitor_over = threading.Event()
    dns = sorted(specs)
    helpers: list[threading.Thread] = []

    def snapshotter() -> None:
        total = 0.0
        while not chaos_over.wait(config.snapshot_interval):
            t0 = time.perf_counter()
            snap = sup.snapshot()
            took = (time.perf_counter() - t0) * 1000
            total += took
            report.snapshots += 1
            report.snapshot_ms_mean = total / report.snapshots
            report.snapshot_ms_max = max(report.snapshot_ms_max, took)
            seen: set[str] = set()
            for dn in snap:
                parent = dn.rpartition(".")[0]
                if parent and parent not in seen and len(violations) < 20:
                    violations.append(f"snapshot lists {dn} before its parent")
                seen.add(dn)

    def settler() -> None:
        while not chaos_over.is_set():
            sup.wait_settled(timeout=0.01)
            report.settle_calls += 1

    def restarter() -> None:
        rng = random.Random(seed + 1)
        while not chaos_over.wait(config.restart_interval):
            try:
                sup.restart(rng.choice(dns))
            except UnknownNode:  # its parent is being rebuilt right now
                report.unknown_dn += 1
            report.restart_calls += 1

    def monitor() -> None:
        queue = sup._processor._requests  # the request queue, to show it stays bounded
        while not monitor_over.wait(0.02):
            report.max_threads = max(report.max_threads, threading.active_count())
            report.max_queue = max(report.max_queue, queue.qsize())

    def memory() -> float:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] / 1e6 if config.tracemalloc else _rss_mb()

    try:
        t0 = time.monotonic()
        sup.start()
        monitor_thread = threading.Thread(target=monitor, name="soak-monitor", daemon=True)
        monitor_thread.start()
        # Build: every DN up once (runnables already fail meanwhile).
        while not all(soak.tally.starts.values()):
            if time.monotonic() - t0 > config.converge_timeout:
                violations.append(f"the tree was not built within {config.converge_timeout:g} s")
                break
            time.sleep(0.05)
        report.build_s = time.monotonic() - t0
        say(f"built {len(specs)} nodes in {report.build_s:.1f} s")

        for target in (snapshotter, settler, restarter):
            thread = threading.Thread(target=target, name=f"soak-{target.__name__}", daemon=True)
            thread.start()
            helpers.append(thread)
        started = time.monotonic()
        decided_before = sum(gaps.decisions.values())
        with soak.tally.lock:
            starts_before = sum(soak.tally.starts.values())
        end = started + config.seconds
        round_end = started
        while True:
            round_end = min(round_end + config.round_seconds, end)
            time.sleep(max(0.0, round_end - time.monotonic()))
            report.memory_mb.append(memory())
            say(
                f"{time.monotonic() - started:5.1f} s: {sum(gaps.decisions.values())} restarts, "
                f"{threading.active_count()} threads, {report.memory_mb[-1]:.1f} MB"
            )
            if round_end >= end:
                break
        chaos_seconds = time.monotonic() - started
        chaos_over.set()
        for thread in helpers:
            thread.join(10)
        report.restarts_per_second = (sum(gaps.decisions.values()) - decided_before) / chaos_seconds
        with soak.tally.lock:
            starts = sum(soak.tally.starts.values()) - starts_before
        report.starts_per_second = starts / chaos_seconds

        # Calm: failures stop; every node must come back, and stay.
        soak.calm.set()
        calm_started = time.monotonic()
        _converge(sup, soak, config.converge_timeout, violations)
        report.converge_s = time.monotonic() - calm_started
        report.memory_calm_mb = memory()
    finally:
        chaos_over.set()
        soak.calm.set()
        stop_started = time.monotonic()
        report.stop_ok = sup.stop(timeout=config.stop_timeout)
        report.stop_s = time.monotonic() - stop_started
        monitor_over.set()
        for thread in helpers:
            thread.join(10)
        logger.removeHandler(gaps)
        report.threads_left_after_stop = _threads_left(before, timeout=10.0)
        if started_tracing:
            tracemalloc.stop()

    tally = soak.tally
    report.starts = sum(tally.starts.values())
    report.exits = sum(tally.exits.values())
    report.exits_by_kind = dict(tally.kinds)
    report.max_live_per_dn = tally.max_live
    report.deaths = gaps.deaths
    report.restarts = dict(gaps.decisions)
    report.deaths_superseded = gaps.deaths - gaps.decisions.get("DEAD", 0)
    report.leaf_gap_max = gaps.leaf_max
    report.leaf_gap_p99 = gaps.leaf_percentile(99)
    report.gap_max = gaps.any_max
    report.gap_samples = gaps.samples
    # From the end of the second round to the end of the last: the first round is a warm-up,
    # in which each node's logger, log backlog and (with reuse) the parked threads' state
    # appear once; a py310 run with reuse measured 2.8 -> 11.8, 11.8, 12.3 MB, flat after it.
    if len(report.memory_mb) >= 3:
        report.memory_growth_mb = report.memory_mb[-1] - report.memory_mb[1]

    if not report.stop_ok or report.stop_s > config.stop_timeout:
        violations.append(f"stop() returned {report.stop_ok} after {report.stop_s:.2f} s")
    if tally.max_live > 1:
        violations.append(f"{tally.max_live} live incarnations of one DN at once")
    unmatched = [dn for dn in specs if tally.starts[dn] != tally.exits[dn]]
    if unmatched:
        violations.append(f"after stop, starts != exits for {len(unmatched)} DNs: {unmatched[:5]}")
    if report.deaths_superseded < 0:
        violations.append(
            f"{-report.deaths_superseded} more DEAD restarts than deaths: restarted twice?"
        )
    if report.restarts_per_second <= 0:
        violations.append("no restart was handled")
    if report.max_threads > report.thread_bound:
        violations.append(f"{report.max_threads} threads, over the bound {report.thread_bound}")
    if report.threads_left_after_stop:
        violations.append(f"threads left after stop: {report.threads_left_after_stop[:10]}")
    if config.tracemalloc and report.memory_growth_mb > config.memory_growth_bound_mb:
        violations.append(
            f"memory grew {report.memory_growth_mb:.2f} MB across rounds "
            f"(bound {config.memory_growth_bound_mb:g} MB): {report.memory_mb}"
        )
    if report.leaf_gap_max > config.leaf_gap_bound_s:
        violations.append(
            f"a leaf waited {report.leaf_gap_max:.3f} s from its death to its restart "
            f"decision (bound {config.leaf_gap_bound_s:g} s)"
        )
    return report


def _converge(sup: Supervisor, soak: _Soak, timeout: float, violations: list[str]) -> bool:
    """Wait for every DN to be present and running (NEW or HEALTHY) or DONE, then
    check that every start is matched by an exit or a running thread."""
    specs = soak.specs
    deadline = time.monotonic() + timeout
    last: dict[str, NodeStatus] = {}
    while time.monotonic() < deadline:
        sup.wait_settled(timeout=1.0)
        last = sup.snapshot()
        if len(last) == len(specs) and all(
            (status.state in (State.NEW, State.HEALTHY) and status.running)
            or (status.state is State.DONE)
            for status in last.values()
        ):
            break
    else:
        missing = sorted(set(specs) - set(last))[:5]
        odd = sorted(
            f"{dn} {status.state.name} running={status.running}"
            for dn, status in last.items()
            if status.state not in (State.NEW, State.HEALTHY, State.DONE)
        )[:5]
        violations.append(
            f"the tree did not converge within {timeout:g} s of calm: "
            f"{len(specs) - len(last)} DNs missing (e.g. {missing}), others DEAD, "
            f"CANCELLED or not running (e.g. {odd})"
        )
        return False
    with soak.tally.lock:
        for dn, status in last.items():
            if soak.tally.starts[dn] != soak.tally.exits[dn] + int(status.running):
                violations.append(
                    f"{dn}: {soak.tally.starts[dn]} starts, {soak.tally.exits[dn]} exits, "
                    f"running={status.running}"
                )
                return False
    return True


def _rss_mb() -> float:
    """The resident set size in MB (Linux), or 0.0 where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _threads_left(before: set[threading.Thread], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() >= deadline:
            return sorted(t.name for t in left)
        left[0].join(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Chaos soak: a tree of randomly failing runnables, with figures and checks.",
    )
    parser.add_argument("--seconds", type=float, help="chaos time (default 60; --ci: 20)")
    parser.add_argument("--nodes", type=int, default=1000, help="runnables (default 1000)")
    parser.add_argument("--ci", action="store_true", help="the CI profile: 20 s")
    parser.add_argument("--seed", type=int, help="the random seed (default: random)")
    parser.add_argument(
        "--mean-life",
        type=float,
        default=SoakConfig.mean_life,
        help=f"a leaf's mean life in seconds (default {SoakConfig.mean_life:g}); "
        "lower asks for more restarts per second",
    )
    parser.add_argument(
        "--reuse-threads",
        action="store_true",
        help="run the tree with Supervisor(reuse_threads=True): parked threads run the "
        "next incarnations",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures here")
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="do not trace allocations (some 3x faster): production-like figures, but "
        "memory is the RSS and is not checked",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 20.0 if args.ci else 60.0
    if seconds <= 0 or args.nodes < 1 or args.mean_life <= 0:
        parser.error("--seconds, --nodes and --mean-life must be positive")
    config = SoakConfig(
        seconds=seconds,
        nodes=args.nodes,
        seed=args.seed,
        mean_life=args.mean_life,
        tracemalloc=not args.no_tracemalloc,
        reuse_threads=args.reuse_threads,
        round_seconds=min(5.0, max(0.5, seconds / 4)),
    )
    report = run_soak(config, progress=True)
    print(report.format())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
