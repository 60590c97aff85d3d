"""threadsup's benchmarks: ``python -m benchmarks [--quick] [--json FILE] [--only NAME]``.

A benchmark is a named factory registered with `register`: a context manager that
sets up what the benchmark needs and yields a ``measure()`` function, which takes
one sample and returns it in its ``unit`` (seconds unless said otherwise). The
runner opens every selected benchmark, takes its samples round-robin (one sample of
each in turn, so that a change in the machine's load hits every row alike), and
reports the median and the 90th percentile of each, with the ratio to its baseline
when it names one, and whether it meets its `Target` when it has one.

A benchmark that holds thousands of threads, or measures the whole process (its
CPU time, its heap), names a ``session``: the benchmarks of one session are opened
together, round-robin among themselves, with nothing else open, after the
benchmarks without a session; sessions can take turns in ``blocks``. A factory can
ask `quick` whether this is a ``--quick`` run, to scale itself down, and say so
with `note`. `quiet_logger` gives a module's supervisors a logger that costs what
logging costs and prints nothing.

A module of benchmarks registers them at import; list it in `MODULES`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from threadsup import Event, Runnable, Supervisor
from threadsup.status import StatusServer

__all__ = [
    "MODULES",
    "NOTES",
    "REGISTRY",
    "Benchmark",
    "Factory",
    "Measure",
    "Result",
    "Target",
    "format_table",
    "format_value",
    "load",
    "note",
    "percentile",
    "quick",
    "quiet_logger",
    "register",
    "run",
    "select",
]

#: The modules whose import registers benchmarks, in the order their rows are shown.
MODULES = ("benchmarks.wakeup", "benchmarks.floor", "benchmarks.reuse")

#: One sample, in its benchmark's unit: seconds unless said otherwise.
Measure = Callable[[], float]
#: Sets up a benchmark and yields its ``measure``; tears it down on exit.
Factory = Callable[[], contextlib.AbstractContextManager[Measure]]


@dataclass(frozen=True)
class Target:
    """What a benchmark should achieve.

    ``kind`` says what ``limit`` bounds: ``"ratio"`` the median over the baseline's
    median, ``"value"`` the median itself, ``"excess"`` the median minus the
    baseline's median (both in the benchmark's unit).
    """

    kind: str
    limit: float

    def __post_init__(self) -> None:
        if self.kind not in ("ratio", "value", "excess"):
            raise ValueError(f"a target's kind is 'ratio', 'value' or 'excess', not {self.kind!r}")

    def describe(self, unit: str) -> str:
        if self.kind == "ratio":
            return f"x<={self.limit:g}"
        sign = "+" if self.kind == "excess" else ""
        return f"{sign}<={format_value(self.limit, unit)}"


@dataclass(frozen=True)
class Benchmark:
    """A named measurement and how many samples to take of it."""

    name: str
    factory: Factory
    description: str
    #: Samples in a full run, and with ``--quick``.
    repeats: int = 200
    quick_repeats: int = 10
    #: Samples taken first and thrown away (imports, first-use caches).
    warmup: int = 3
    #: The benchmark whose median this one's is divided by (run along with it).
    baseline: str | None = None
    #: Free-form fields copied into the JSON output (e.g. what is measured, how).
    tags: dict[str, str] = field(default_factory=dict)
    #: What a sample is in: ``"s"`` (seconds) or ``"B"`` (bytes).
    unit: str = "s"
    #: What the median should achieve, if anything.
    target: Target | None = None
    #: Benchmarks of one session run together and alone; ``None``: with all the others.
    session: str | None = None
    #: Its session's samples are taken in this many blocks, alternating with the
    #: other sessions' (the most any benchmark of the session asks for counts).
    blocks: int = 1


#: Every registered benchmark, by name, in registration order.
REGISTRY: dict[str, Benchmark] = {}


def register(
    name: str,
    description: str,
    *,
    repeats: int = 200,
    quick_repeats: int = 10,
    warmup: int = 3,
    baseline: str | None = None,
    tags: dict[str, str] | None = None,
    unit: str = "s",
    target: Target | None = None,
    session: str | None = None,
    blocks: int = 1,
) -> Callable[[Factory], Factory]:
    """Register ``factory`` as benchmark ``name``; a decorator."""
    if unit not in UNITS:
        raise ValueError(f"unit is one of {', '.join(UNITS)}, not {unit!r}")

    def add(factory: Factory) -> Factory:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} is registered twice")
        REGISTRY[name] = Benchmark(
            name,
            factory,
            description,
            repeats=repeats,
            quick_repeats=quick_repeats,
            warmup=warmup,
            baseline=baseline,
            tags=dict(tags or {}),
            unit=unit,
            target=target,
            session=session,
            blocks=blocks,
        )
        return factory

    return add


#: The units a sample can be in.
UNITS = ("s", "B")

#: What this run's factories said about it (e.g. how a quick run scaled them down).
NOTES: list[str] = []
_quick = [False]


def quick() -> bool:
    """Whether the run in progress is a ``--quick`` one: factories may scale down."""
    return _quick[0]


_observed = [False]


def observed() -> bool:
    """Whether the run in progress is an ``--observed`` one (see `supervisor`)."""
    return _observed[0]


class _ObservedSupervisor(Supervisor):
    """A Supervisor with what an operator attaches to a running tree: a
    subscriber and a status server (the log backlog is on by default)."""

    def start(self) -> _ObservedSupervisor:
        self.events_seen = 0
        self._unsubscribe = self.subscribe(self._count)
        self._server = StatusServer(self).start()
        try:
            super().start()
        except BaseException:
            self._detach()
            raise
        return self

    def stop(self, timeout: float | None = None) -> bool:
        try:
            return super().stop(timeout)
        finally:
            self._detach()

    def _count(self, event: Event) -> None:
        self.events_seen += 1

    def _detach(self) -> None:
        self._unsubscribe()
        self._server.close()


def supervisor(root: Runnable, **options: Any) -> Supervisor:
    """``Supervisor(root, **options)``, observed in an ``--observed`` run: every
    benchmark builds its trees with this."""
    if _observed[0]:
        return _ObservedSupervisor(root, **options)
    return Supervisor(root, **options)


def note(text: str) -> None:
    """Say something about this run below its table (once, however often said)."""
    if text not in NOTES:
        NOTES.append(text)


class _Drop(logging.Handler):
    """Takes every record and drops it."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def quiet_logger(name: str) -> logging.Logger:
    """Logger ``name``, for a module's supervisors: at its default level (WARNING, from
    the root logger), into a handler that drops every record and not to the root's, so
    that a benchmark pays for logging as a user would and prints nothing."""
    logger = logging.getLogger(name)
    if not any(isinstance(handler, _Drop) for handler in logger.handlers):
        logger.addHandler(_Drop())
    logger.propagate = False
    return logger


def load() -> dict[str, Benchmark]:
    """Import every module of `MODULES` and return the registry."""
    for module in MODULES:
        importlib.import_module(module)
    return REGISTRY


def select(patterns: Iterable[str] = ()) -> list[Benchmark]:
    """The benchmarks whose name matches a pattern (a glob, or a prefix of dotted
    parts: ``wakeup.get`` selects ``wakeup.get.cancel``), plus their baselines.

    No pattern selects all. `KeyError` when a pattern matches nothing.
    """
    patterns = list(patterns)
    if not patterns:
        return list(REGISTRY.values())
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {
            name
            for name in REGISTRY
            if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")
        }
        if not matched:
            raise KeyError(f"no benchmark matches {pattern!r}; there are: {', '.join(REGISTRY)}")
        chosen |= matched
    for name in list(chosen):
        baseline = REGISTRY[name].baseline
        if baseline is not None:
            chosen.add(baseline)
    return [bench for name, bench in REGISTRY.items() if name in chosen]


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100), interpolated between the closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Result:
    """The samples of one benchmark and their summary, in seconds."""

    benchmark: Benchmark
    samples: list[float]
    #: This median divided by the baseline's median, once that is known.
    ratio: float | None = None
    #: The baseline's median, once that is known.
    baseline_median: float | None = None

    @property
    def name(self) -> str:
        return self.benchmark.name

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def excess(self) -> float | None:
        """This median minus the baseline's, in the unit."""
        if self.baseline_median is None:
            return None
        return self.median - self.baseline_median

    @property
    def met(self) -> bool | None:
        """Whether the median meets the target; ``None`` with no target or no baseline."""
        target = self.benchmark.target
        if target is None:
            return None
        if target.kind == "value":
            return self.median <= target.limit
        figure = self.ratio if target.kind == "ratio" else self.excess
        return None if figure is None else figure <= target.limit

    def as_json(self) -> dict[str, object]:
        target = self.benchmark.target
        return {
            "name": self.name,
            "description": self.benchmark.description,
            **self.benchmark.tags,
            "unit": self.benchmark.unit,
            "n": len(self.samples),
            "median": self.median,
            "p90": self.p90,
            "min": min(self.samples),
            "max": max(self.samples),
            "mean": statistics.fmean(self.samples),
            "baseline": self.benchmark.baseline,
            "baseline_median": self.baseline_median,
            "ratio": self.ratio,
            "excess": self.excess,
            "target": None if target is None else {"kind": target.kind, "limit": target.limit},
            "met": self.met,
        }


def run(
    benchmarks: list[Benchmark],
    *,
    quick: bool = False,
    observe: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Take every benchmark's samples, round-robin within each session, and summarise them.

    The benchmarks without a session run first, all open at once. Then the
    sessions take turns, each alone: a session whose benchmarks ask for
    ``blocks`` splits its samples into that many blocks, opened and closed once
    each, and the sessions alternate block by block, so that a threadsup row and
    its floor in sessions of their own see the machine's load alike.
    With ``observe``, every tree has a subscriber and a status server attached.
    """
    results = {bench.name: Result(bench, []) for bench in benchmarks}
    sessions: dict[str | None, list[Benchmark]] = {None: []}
    for bench in benchmarks:
        sessions.setdefault(bench.session, []).append(bench)
    shared = sessions.pop(None)
    blocks = {name: max(b.blocks for b in members) for name, members in sessions.items()}
    NOTES.clear()
    _quick[0] = quick
    _observed[0] = observe
    try:
        if shared:
            _run_session(None, shared, results, quick, progress)
        for block in range(max(blocks.values(), default=0)):
            for name, members in sessions.items():
                if block < blocks[name]:
                    _run_session(name, members, results, quick, progress, block, blocks[name])
    finally:
        _quick[0] = False
        _observed[0] = False
    for result in results.values():
        baseline = result.benchmark.baseline
        if baseline is not None and baseline in results and results[baseline].samples:
            result.baseline_median = results[baseline].median
            if result.baseline_median > 0:
                result.ratio = result.median / result.baseline_median
    return list(results.values())


def _run_session(
    session: str | None,
    benchmarks: list[Benchmark],
    results: dict[str, Result],
    quick: bool,
    progress: Callable[[str], None] | None,
    block: int = 0,
    blocks: int = 1,
) -> None:
    """Open a session's benchmarks and take their samples of block ``block``;
    warm them up first if none of their samples is taken yet."""
    wanted = {}
    for bench in benchmarks:
        total = bench.quick_repeats if quick else bench.repeats
        wanted[bench.name] = total * (block + 1) // blocks - total * block // blocks
    rounds = max(wanted.values(), default=0)
    if rounds == 0:
        return
    label = "" if session is None else f"{session}: "
    if blocks > 1:
        label = f"{session} (block {block + 1}/{blocks}): "
    with contextlib.ExitStack() as stack:
        measures = {bench.name: stack.enter_context(bench.factory()) for bench in benchmarks}
        for bench in benchmarks:
            if not results[bench.name].samples:
                for _ in range(bench.warmup):
                    measures[bench.name]()
        started = time.monotonic()
        for index in range(rounds):
            for bench in benchmarks:
                if index < wanted[bench.name]:
                    results[bench.name].samples.append(measures[bench.name]())
            if progress is not None and (index + 1) % max(1, rounds // 10) == 0:
                progress(f"{label}round {index + 1}/{rounds} ({time.monotonic() - started:.0f} s)")


def format_value(value: float, unit: str) -> str:
    """``value`` in ``unit`` for people: ``812.3µs``, ``4.21ms``, ``3.10s``, ``2.3KiB``."""
    if unit == "B":
        return f"{value:.0f}B" if abs(value) < 1024 else f"{value / 1024:.2f}KiB"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.1f}µs"
    if abs(value) < 1:
        return f"{value * 1e3:.2f}ms"
    return f"{value:.2f}s"


def format_table(results: list[Result]) -> str:
    """The results as a text table: median, 90th percentile, the baseline's median,
    the ratio to it, and the target with whether it is met."""
    header = ("benchmark", "n", "median", "p90", "baseline", "x baseline", "target", "met")
    rows = []
    for r in results:
        unit, target, met = r.benchmark.unit, r.benchmark.target, r.met
        verdict = "" if met is None else "yes" if met else "NO"
        if met is not None and target is not None and target.kind == "excess":
            verdict += f" ({format_value(r.excess or 0.0, unit)})"
        rows.append(
            (
                r.name,
                str(len(r.samples)),
                format_value(r.median, unit),
                format_value(r.p90, unit),
                "" if r.baseline_median is None else format_value(r.baseline_median, unit),
                "" if r.ratio is None else f"{r.ratio:.2f}",
                "" if target is None else target.describe(unit),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
