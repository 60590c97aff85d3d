"""What supervision costs over the floor, the same work on bare threads.

Every workload is measured twice in the same process: through threadsup, and as
the **floor**, the same work done with bare `threading` and a `queue` and no
supervisor (row ``<name>.floor``, the baseline of row ``<name>``):

``restart``
    A group {a, b}; b raises. From b's raise to the first line of a's next
    incarnation. Floor: b's thread catches its error and posts to a queue; a
    processor thread sets a's Event; a ends and posts; the processor starts a new
    a. b itself comes back after the sample in both (threadsup: a backoff of
    `PAIR_BACKOFF`, so that b's restart never competes with a's).
``restart_at_scale``
    The same with 10,000 idle HEALTHY leaves elsewhere in the tree (100 groups of
    100). Floor: with 10,000 idle bare threads alive.
``failure_restart``
    One runnable raises, with ``Backoff(initial=0)``: from its raise to the first
    line of its next incarnation. Floor: the thread catches its error, posts, and
    the processor starts a new one.
``spawn``
    10,000 leaves, as 100 groups of 100 under the root, from ``Supervisor(...)``
    until every leaf has signalled HEALTHY. Floor: 10,000 threads each set a
    ready Event.
``stop``
    ``stop()`` of that tree until every thread is joined. Floor: set each
    thread's own Event, join them all.
``idle``
    Process CPU time (`time.process_time`) over 10 s with 1,000 HEALTHY idle
    leaves; an absolute target. Floor: 1,000 bare threads in ``Event.wait()``.
``memory``
    Python heap (`tracemalloc`) per supervised leaf, 1,000 HEALTHY idle leaves
    in 10 groups of 100 (their group nodes, root and supervisor included, spread
    over the leaves). Floor: a bare thread waiting on an Event of its own; the
    target bounds the excess over it.

Garbage left by a previous sample is collected (``gc.collect()``) before each
timed section, in both versions. Logging stays on at its default level (WARNING:
b's death is logged at ERROR, with its traceback), into a handler that drops the
records.

``--quick`` starts 1,000 leaves where the full run starts 10,000, and measures
idle over 1 s (scaled to 10 s); the run's notes say so.

Every factory stops its tree and joins every thread it started when it closes,
also after a failure; a tree or a thread that does not end in time fails loudly.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import queue
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable

from benchmarks import Factory, Measure, Target, note, quick, quiet_logger, register, supervisor
from threadsup import Backoff, CancelToken, Runnable, Signal, Supervisor

#: Leaves in a full run, and with ``--quick``.
LEAVES = 10_000
QUICK_LEAVES = 1_000
#: Leaves per group: the tree is the root, LEAVES / GROUP group nodes, and their leaves.
GROUP = 100
#: The idle and memory rows' leaves, in both modes.
IDLE_LEAVES = 1_000
#: The idle row's window: 10 s, and 1 s with ``--quick`` (scaled to 10 s).
IDLE_WINDOW = 10.0
QUICK_IDLE_WINDOW = 1.0

#: Bound of a single wait (one restart, one thread); a benchmark that hits it fails.
TIMEOUT = 30.0
#: Bound of waits on thousands of threads (starting 10,000 takes seconds).
MASS_TIMEOUT = 300.0

#: The supervisor's backoff in the restart rows: b, DEAD, comes back this late,
#: well after the sample; a, CANCELLED, restarts at once.
PAIR_BACKOFF = Backoff(initial=0.02, multiplier=1.0, jitter=0)
#: How long a restart sample waits, once the failing runnable is back, before the next.
QUIET = 0.01
#: The contract's "restart at once" for a DEAD node.
NO_BACKOFF = Backoff(initial=0)

_SCALE_NOTE = (
    f"quick run: restart_at_scale, spawn and stop use {QUICK_LEAVES:,} leaves instead of "
    f"{LEAVES:,}; idle measures {QUICK_IDLE_WINDOW:g} s and scales the CPU time to "
    f"{IDLE_WINDOW:g} s"
)

#: The supervisors' base logger: default level (WARNING, from the root logger).
LOGGER = quiet_logger("threadsup_floor")


class _Failure(Exception):
    """What the failing runnables raise."""


# ---------------------------------------------------------------- a workload's two rows


@dataclass(frozen=True)
class _Sampling:
    """How both rows of a workload are sampled (`register`'s keywords of the same names)."""

    repeats: int = 200
    quick_repeats: int = 10
    warmup: int = 3
    #: The threadsup row's session, then the floor's; ``None``: no session, either.
    sessions: tuple[str, str] | None = None
    blocks: int = 1


_DEFAULT_SAMPLING = _Sampling()


def _workload(
    name: str,
    *,
    threadsup: tuple[str, Factory],
    floor: tuple[str, Factory],
    target: Target,
    sampling: _Sampling = _DEFAULT_SAMPLING,
    unit: str = "s",
) -> None:
    """Register a workload's two rows, each from its (description, factory):
    ``name`` through threadsup, with ``target`` against its baseline ``name.floor``,
    and ``name.floor``, the same work on bare threads. Both are sampled as
    ``sampling`` says, in ``unit``, and tagged with the workload and their version."""
    floor_name = f"{name}.floor"
    session, floor_session = sampling.sessions or (None, None)
    row = functools.partial(
        register,
        repeats=sampling.repeats,
        quick_repeats=sampling.quick_repeats,
        warmup=sampling.warmup,
        unit=unit,
        blocks=sampling.blocks,
    )
    description, factory = threadsup
    row(
        name,
        description,
        baseline=floor_name,
        target=target,
        session=session,
        tags={"workload": name, "version": "threadsup"},
    )(factory)
    description, factory = floor
    row(
        floor_name,
        description,
        session=floor_session,
        tags={"workload": name, "version": "floor"},
    )(factory)


# ---------------------------------------------------------------- set-up and tear-down


def _leaves() -> int:
    """How many leaves the scalable rows start in this run."""
    if quick():
        note(_SCALE_NOTE)
        return QUICK_LEAVES
    return LEAVES


def _wait_all(events: list[threading.Event], what: str) -> None:
    """Wait until every event is set, last first: the leaves get ready about in
    order, so this wakes the waiting thread about once, not once per leaf. A wake
    per leaf is the harness's cost, not the supervisor's, and it would fall on
    threadsup alone: the floor's thread starts the leaves itself and finds them
    ready by the time it waits, while threadsup's processor starts them as it waits."""
    deadline = time.monotonic() + MASS_TIMEOUT
    for event in reversed(events):
        if not event.wait(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"{what}: not every thread got ready in {MASS_TIMEOUT:g} s")


def _stop(sup: Supervisor) -> None:
    if not sup.stop(MASS_TIMEOUT):
        raise RuntimeError(f"a supervisor did not stop within {MASS_TIMEOUT:g} s")


@contextlib.contextmanager
def _started(sup: Supervisor) -> Iterator[Supervisor]:
    """Start ``sup``; on exit, stop it (`_stop`)."""
    sup.start()
    try:
        yield sup
    finally:
        _stop(sup)


def _join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + MASS_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    if alive:
        raise RuntimeError(f"{alive} bare threads did not end within {MASS_TIMEOUT:g} s")


# ---------------------------------------------------------------- threadsup trees


def _healthy_leaf(ready: threading.Event, token: CancelToken) -> None:
    """A supervised leaf: HEALTHY, then idle until cancelled."""
    token.signal(Signal.HEALTHY)
    ready.set()
    token.wait()


def _group_node(ready: list[threading.Event]) -> Runnable:
    def group(token: CancelToken) -> None:
        token.run_group(
            {
                f"n{index}": functools.partial(_healthy_leaf, event)
                for index, event in enumerate(ready)
            }
        )
        token.signal(Signal.HEALTHY)
        token.wait()

    return group


def _tree(ready: list[threading.Event], extra: Mapping[str, Runnable] | None = None) -> Runnable:
    """A root running ``extra`` as one group, and a leaf per event in groups of `GROUP`:
    each group under a node of its own, ``root.g<i>.n<j>``."""

    def root(token: CancelToken) -> None:
        if extra:
            token.run_group(extra)
        for start in range(0, len(ready), GROUP):
            token.run(f"g{start // GROUP}", _group_node(ready[start : start + GROUP]))
        token.signal(Signal.HEALTHY)
        token.wait()

    return root


# ---------------------------------------------------------------- the floor's machinery


def _idle_thread(ready: threading.Event, stop: threading.Event) -> None:
    """A bare thread: ready, then idle until its own Event is set."""
    ready.set()
    stop.wait()


class _Bare:
    """Bare threads idling on an Event each; every one is joined on `close`."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.stops: list[threading.Event] = []

    def start(self, ready: list[threading.Event]) -> None:
        for event in ready:
            stop = threading.Event()
            thread = threading.Thread(target=_idle_thread, args=(event, stop), daemon=True)
            thread.start()
            self.stops.append(stop)
            self.threads.append(thread)

    def stop(self) -> None:
        """Set every thread's Event and join them all."""
        threads, stops = self.threads, self.stops
        self.threads, self.stops = [], []
        for stop in stops:
            stop.set()
        _join_all(threads)

    close = stop


#: Starts a leaf per Event and waits until every one is ready, then stops them all on
#: exit: `_tree_up` (threadsup) or `_bare_up` (the floor).
_Up = Callable[[list[threading.Event]], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _tree_up(ready: list[threading.Event]) -> Iterator[None]:
    """A `_tree` of a leaf per Event, every one ready and the tree settled."""
    with _started(supervisor(_tree(ready), logger=LOGGER)) as sup:
        _wait_all(ready, "a tree")
        if not sup.wait_settled(MASS_TIMEOUT):
            raise RuntimeError(f"a tree did not settle within {MASS_TIMEOUT:g} s")
        yield


@contextlib.contextmanager
def _bare_up(ready: list[threading.Event]) -> Iterator[None]:
    """A bare thread per Event (`_Bare`), every one ready."""
    bare = _Bare()
    try:
        bare.start(ready)
        _wait_all(ready, "bare threads")
        yield
    finally:
        bare.close()


class _Gate:
    """Makes the Events that bare threads wait on to be told to fail; `close` sets
    them all, also those made after it (a thread the processor just started)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[threading.Event] = []
        self.closed = False

    def event(self) -> threading.Event:
        event = threading.Event()
        with self._lock:
            if self.closed:
                event.set()
            self._events.append(event)
        return event

    def close(self) -> None:
        with self._lock:
            self.closed = True
            events, self._events = self._events, []
        for event in events:
            event.set()


class _BareProcessor:
    """The floor's supervisor: a thread that runs what other threads post to its queue."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="floor-processor", daemon=True)
        #: Every thread started through `start_thread`, to join on `close`.
        self.threads: list[threading.Thread] = []
        self._thread.start()

    def post(self, request: Callable[[], None]) -> None:
        self._requests.put(request)

    def start_thread(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _loop(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            request()

    def close(self, wake: Callable[[], None]) -> None:
        """End the loop, then ``wake()`` the threads and join them all."""
        self._requests.put(None)
        self._thread.join(TIMEOUT)
        wake()
        _join_all([self._thread, *self.threads])


# ---------------------------------------------------------------- restart: group {a, b}


class _Stamps:
    """What a sample reads: when the failing runnable raised, when the restarted
    one started, and how to make the failing one raise.

    A sample ends once the failing runnable is back and `QUIET` more has passed,
    so that no restart's tail runs into the next sample, of this row or another.
    """

    def __init__(self) -> None:
        #: Each incarnation of the restarted runnable puts its start here, first thing.
        self.started: queue.SimpleQueue[float] = queue.SimpleQueue()
        #: Each incarnation of the failing runnable puts the Event that makes it raise.
        self.armed: queue.SimpleQueue[threading.Event] = queue.SimpleQueue()
        self.raised_at = 0.0
        self._next: threading.Event | None = None

    def first_start(self) -> None:
        self.started.get(timeout=MASS_TIMEOUT)
        self._next = self.armed.get(timeout=MASS_TIMEOUT)

    def measure(self) -> float:
        """Make the failing runnable raise; seconds until the next incarnation started."""
        armed, self._next = self._next, None
        (armed or self.armed.get(timeout=TIMEOUT)).set()
        started = self.started.get(timeout=TIMEOUT)
        took = started - self.raised_at
        self.sampled()
        self._next = self.armed.get(timeout=TIMEOUT)
        time.sleep(QUIET)
        return took

    def sampled(self) -> None:
        """Called once a sample is taken, before waiting for the failing one to be back."""

    def fail(self) -> None:
        self.raised_at = time.perf_counter()
        raise _Failure("told to fail")

    def fail_when_armed(self, token: CancelToken) -> None:
        """The failing runnable, supervised: wait until `measure` arms it, raise."""
        armed = threading.Event()
        self.armed.put(armed)
        token.wait_for(armed)
        self.fail()


class _BareStamps(_Stamps):
    """The floor's `_Stamps`: bare threads that a `_BareProcessor` starts. The failing
    one waits on an Event of a `_Gate`, so that `close` can wake it."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = _Gate()
        self.processor = _BareProcessor()

    def _fail_when_armed(self, then: Callable[[], None]) -> None:
        """The failing thread: wait until `measure` arms it, raise, catch its error and
        post ``then`` (how it reports its death); return quietly once `close` woke it."""
        try:
            armed = self._gate.event()
            self.armed.put(armed)
            armed.wait()
            if not self._gate.closed:
                self.fail()
        except _Failure:
            self.processor.post(then)

    def _wake(self) -> None:
        """Wake every thread this started, so that each ends."""
        self._gate.close()

    def close(self) -> None:
        """Stop the processor, then wake every thread and join them all."""
        self.processor.close(self._wake)


class _SupervisedPair(_Stamps):
    """a idles, b raises when armed; a restarts because b died."""

    def a(self, token: CancelToken) -> None:
        self.started.put(time.perf_counter())
        token.signal(Signal.HEALTHY)
        token.wait()

    def b(self, token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        self.fail_when_armed(token)


class _BarePair(_BareStamps):
    """The floor of the restart rows: a and b on bare threads, a `_BareProcessor`."""

    def __init__(self) -> None:
        super().__init__()
        self._a_cancel = threading.Event()
        self.processor.post(self._start_a)
        self.processor.post(self._start_b)

    def sampled(self) -> None:
        self.processor.post(self._start_b)  # b comes back after the sample

    # On the processor.

    def _start_a(self) -> None:
        cancel = self._a_cancel = threading.Event()
        self.processor.start_thread(lambda: self._a(cancel))

    def _start_b(self) -> None:
        self.processor.start_thread(self._b)

    def _cancel_a(self) -> None:
        self._a_cancel.set()

    # The bare threads.

    def _a(self, cancel: threading.Event) -> None:
        self.started.put(time.perf_counter())
        cancel.wait()
        self.processor.post(self._start_a)  # a ends and posts

    def _b(self) -> None:
        self._fail_when_armed(self._cancel_a)  # b ends and posts

    def _wake(self) -> None:
        """Wake a (its Event is the last one the processor made) and b."""
        self._a_cancel.set()
        super()._wake()


@contextlib.contextmanager
def _supervised_pair(leaves: int, *, reuse_threads: bool = False) -> Iterator[Measure]:
    pair = _SupervisedPair()
    ready = [threading.Event() for _ in range(leaves)]
    root = _tree(ready, {"a": pair.a, "b": pair.b})
    sup = supervisor(root, logger=LOGGER, backoff=PAIR_BACKOFF, reuse_threads=reuse_threads)
    with _started(sup):
        _wait_all(ready, "restart_at_scale")
        pair.first_start()
        yield pair.measure


@contextlib.contextmanager
def _bare_pair(leaves: int) -> Iterator[Measure]:
    ready = [threading.Event() for _ in range(leaves)]
    with _bare_up(ready), contextlib.closing(_BarePair()) as pair:
        pair.first_start()
        yield pair.measure


_RESTART = "group {a, b}; b raises: from b's raise to the first line of a's next incarnation"
_RESTART_FLOOR = (
    "bare threads: b catches its error and posts; a processor thread sets a's Event; "
    "a ends and posts; the processor starts a new a"
)

_workload(
    "restart",
    threadsup=(_RESTART, functools.partial(_supervised_pair, 0)),
    floor=(_RESTART_FLOOR, functools.partial(_bare_pair, 0)),
    target=Target("ratio", 1.5),
)

_workload(
    "restart_at_scale",
    threadsup=(
        f"{_RESTART}; with {LEAVES:,} idle HEALTHY leaves elsewhere in the tree",
        lambda: _supervised_pair(_leaves()),
    ),
    floor=(
        f"{_RESTART_FLOOR}; with {LEAVES:,} idle bare threads alive",
        lambda: _bare_pair(_leaves()),
    ),
    target=Target("ratio", 1.5),
    # Alone, each version: 10,000 idle threads of one must not weigh on the other's samples.
    # Four blocks, not two: the machine's load drifts over a block, and with two one
    # version could get the quiet half (per-run ratios 1.07, 1.57 and 1.20 with two).
    sampling=_Sampling(
        repeats=100, sessions=("restart_at_scale", "restart_at_scale.floor"), blocks=4
    ),
)


# ---------------------------------------------------------------- failure_restart


class _SupervisedFailing(_Stamps):
    def root(self, token: CancelToken) -> None:
        token.run("worker", self.worker)
        token.signal(Signal.HEALTHY)
        token.wait()

    def worker(self, token: CancelToken) -> None:
        self.started.put(time.perf_counter())
        token.signal(Signal.HEALTHY)
        self.fail_when_armed(token)


class _BareFailing(_BareStamps):
    def __init__(self) -> None:
        super().__init__()
        self.processor.post(self._start)

    def _start(self) -> None:
        self.processor.start_thread(self._worker)

    def _worker(self) -> None:
        self.started.put(time.perf_counter())
        self._fail_when_armed(self._start)  # the thread ends and posts


@contextlib.contextmanager
def _failure_restart() -> Iterator[Measure]:
    failing = _SupervisedFailing()
    with _started(supervisor(failing.root, logger=LOGGER, backoff=NO_BACKOFF)):
        failing.first_start()
        yield failing.measure


@contextlib.contextmanager
def _failure_restart_floor() -> Iterator[Measure]:
    with contextlib.closing(_BareFailing()) as failing:
        failing.first_start()
        yield failing.measure


_workload(
    "failure_restart",
    threadsup=(
        "one runnable raises, Backoff(initial=0): from its raise to the first line of its "
        "next incarnation",
        _failure_restart,
    ),
    floor=(
        "a bare thread catches its error and posts; a processor thread starts a new one",
        _failure_restart_floor,
    ),
    target=Target("ratio", 1.5),
)


# ---------------------------------------------------------------- spawn and stop


class _Population:
    """Starts the leaves (`spawn`) and stops them (`stop`), timing each. The spawn
    and stop rows share one, so that each tree is built once and stopped once."""

    def spawn(self) -> float:
        self.close()
        ready = [threading.Event() for _ in range(_leaves())]
        gc.collect()
        started = time.perf_counter()
        self._start(ready)
        _wait_all(ready, type(self).__name__)
        return time.perf_counter() - started

    def stop(self) -> float:
        if not self._running():
            self.spawn()
        gc.collect()
        started = time.perf_counter()
        self._stop()
        return time.perf_counter() - started

    def close(self) -> None:
        if self._running():
            self._stop()

    def _start(self, ready: list[threading.Event]) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _running(self) -> bool:
        raise NotImplementedError


class _SupervisedPopulation(_Population):
    def __init__(self) -> None:
        self._sup: Supervisor | None = None

    def _start(self, ready: list[threading.Event]) -> None:
        self._sup = supervisor(_tree(ready), logger=LOGGER)
        self._sup.start()

    def _stop(self) -> None:
        sup, self._sup = self._sup, None
        if sup is not None:
            _stop(sup)

    def _running(self) -> bool:
        return self._sup is not None


class _BarePopulation(_Population):
    def __init__(self) -> None:
        self._bare = _Bare()

    def _start(self, ready: list[threading.Event]) -> None:
        self._bare.start(ready)

    def _stop(self) -> None:
        self._bare.stop()

    def _running(self) -> bool:
        return bool(self._bare.threads)


_SUPERVISED = _SupervisedPopulation()
_BARE = _BarePopulation()


@contextlib.contextmanager
def _population_row(population: _Population, measure: Measure) -> Iterator[Measure]:
    """Yield ``measure`` (the population's `spawn` or `stop`); stop its leaves on exit."""
    try:
        yield measure
    finally:
        population.close()


#: The spawn and stop rows of a version share its session: the trees one builds, the other stops.
_SPAWN_SAMPLING = _Sampling(
    repeats=5, quick_repeats=3, warmup=0, sessions=("spawn", "spawn.floor"), blocks=5
)

_workload(
    "spawn",
    threadsup=(
        f"{LEAVES:,} leaves, {LEAVES // GROUP} groups of {GROUP} under the root: from "
        "Supervisor(...) until every leaf signalled HEALTHY",
        lambda: _population_row(_SUPERVISED, _SUPERVISED.spawn),
    ),
    floor=(
        f"{LEAVES:,} bare threads each set a ready Event: from the first start until all are set",
        lambda: _population_row(_BARE, _BARE.spawn),
    ),
    target=Target("ratio", 1.2),
    sampling=_SPAWN_SAMPLING,
)

_workload(
    "stop",
    threadsup=(
        "stop() of the spawn row's tree, until every thread is joined",
        lambda: _population_row(_SUPERVISED, _SUPERVISED.stop),
    ),
    floor=(
        "set each bare thread's own Event, join them all",
        lambda: _population_row(_BARE, _BARE.stop),
    ),
    target=Target("ratio", 1.0),
    sampling=_SPAWN_SAMPLING,
)


# ---------------------------------------------------------------- idle


def _cpu_over_window() -> float:
    """Process CPU seconds over the idle window, scaled to `IDLE_WINDOW`."""
    window = IDLE_WINDOW
    if quick():
        note(_SCALE_NOTE)
        window = QUICK_IDLE_WINDOW
    before = time.process_time()
    time.sleep(window)
    return (time.process_time() - before) * IDLE_WINDOW / window


@contextlib.contextmanager
def _idle(up: _Up) -> Iterator[Measure]:
    """`_cpu_over_window`, with `IDLE_LEAVES` leaves that ``up`` starts and stops."""
    with up([threading.Event() for _ in range(IDLE_LEAVES)]):
        gc.collect()
        yield _cpu_over_window


_workload(
    "idle",
    threadsup=(
        f"process CPU time over {IDLE_WINDOW:g} s with {IDLE_LEAVES:,} HEALTHY idle leaves",
        functools.partial(_idle, _tree_up),
    ),
    floor=(
        f"process CPU time over {IDLE_WINDOW:g} s with {IDLE_LEAVES:,} bare threads in "
        "Event.wait() (for reference: the target is absolute)",
        functools.partial(_idle, _bare_up),
    ),
    target=Target("value", 0.010),
    # Alone, each version: the process's CPU time is the measure.
    sampling=_Sampling(
        repeats=3, quick_repeats=1, warmup=0, sessions=("idle", "idle.floor"), blocks=3
    ),
)


# ---------------------------------------------------------------- memory


def _traced(up: _Up) -> float:
    """Python heap per leaf: traced bytes that ``up`` holds while its leaves are
    up, divided by their number."""
    ready = [threading.Event() for _ in range(IDLE_LEAVES)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with up(ready):
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / IDLE_LEAVES


_workload(
    "memory",
    threadsup=(
        f"Python heap (tracemalloc) per supervised HEALTHY idle leaf, {IDLE_LEAVES:,} leaves "
        f"in groups of {GROUP}",
        lambda: contextlib.nullcontext(functools.partial(_traced, _tree_up)),
    ),
    floor=(
        "Python heap (tracemalloc) per bare thread waiting on an Event of its own",
        lambda: contextlib.nullcontext(functools.partial(_traced, _bare_up)),
    ),
    target=Target("excess", 4096),
    unit="B",
    # One session for both versions, away from the other rows' threads: a sample starts
    # and stops its own leaves, so the two alternate sample by sample.
    sampling=_Sampling(repeats=5, quick_repeats=1, warmup=1, sessions=("memory", "memory")),
)
