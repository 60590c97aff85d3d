"""Issue 6: what supervision costs over the floor, the same work on bare threads.

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
import logging
import queue
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from typing import Callable

from benchmarks import Measure, Target, note, quick, register
from threadsup import Backoff, CancelToken, Runnable, Signal, Supervisor

#: Leaves in a full run, and with ``--quick``.
LEAVES = 10_000
QUICK_LEAVES = 1_000
#: Leaves per group: the tree is the root, LEAVES / GROUP group nodes, and their leaves.
GROUP = 100
#: The idle and memory rows' leaves, in both modes.
IDLE_LEAVES = 1_000
#: The idle row's window: the issue's 10 s, and 1 s with ``--quick`` (scaled to 10 s).
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


class _Drop(logging.Handler):
    """Takes every record and drops it: logging costs what it costs, prints nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


#: The supervisors' base logger: default level (WARNING, from the root logger).
LOGGER = logging.getLogger("threadsup_floor")
LOGGER.addHandler(_Drop())
LOGGER.propagate = False


class _Failure(Exception):
    """What the failing runnables raise."""


def _leaves() -> int:
    """How many leaves the scalable rows start in this run."""
    if quick():
        note(_SCALE_NOTE)
        return QUICK_LEAVES
    return LEAVES


def _wait_all(events: list[threading.Event], what: str) -> None:
    deadline = time.monotonic() + MASS_TIMEOUT
    for event in events:
        if not event.wait(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"{what}: not every thread got ready in {MASS_TIMEOUT:g} s")


def _stop(sup: Supervisor) -> None:
    if not sup.stop(MASS_TIMEOUT):
        raise RuntimeError(f"a supervisor did not stop within {MASS_TIMEOUT:g} s")


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


class _SupervisedPair(_Stamps):
    """a idles, b raises when armed; a restarts because b died."""

    def a(self, token: CancelToken) -> None:
        self.started.put(time.perf_counter())
        token.signal(Signal.HEALTHY)
        token.wait()

    def b(self, token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        armed = threading.Event()
        self.armed.put(armed)
        token.wait_for(armed)
        self.fail()


class _BarePair(_Stamps):
    """The floor of the restart rows: a and b on bare threads, a `_BareProcessor`."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = _Gate()
        self._a_cancel = threading.Event()
        self.processor = _BareProcessor()
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
        try:
            armed = self._gate.event()
            self.armed.put(armed)
            armed.wait()
            if not self._gate.closed:
                self.fail()
        except _Failure:
            self.processor.post(self._cancel_a)  # b ends and posts

    def close(self) -> None:
        """Stop the processor, then wake a (its Event is the last one the processor
        made) and b, and join every thread."""

        def wake() -> None:
            self._a_cancel.set()
            self._gate.close()

        self.processor.close(wake)


@contextlib.contextmanager
def _supervised_pair(leaves: int) -> Iterator[Measure]:
    pair = _SupervisedPair()
    ready = [threading.Event() for _ in range(leaves)]
    sup = Supervisor(_tree(ready, {"a": pair.a, "b": pair.b}), logger=LOGGER, backoff=PAIR_BACKOFF)
    sup.start()
    try:
        _wait_all(ready, "restart_at_scale")
        pair.first_start()
        yield pair.measure
    finally:
        _stop(sup)


@contextlib.contextmanager
def _bare_pair(leaves: int) -> Iterator[Measure]:
    bare = _Bare()
    pair: _BarePair | None = None
    try:
        ready = [threading.Event() for _ in range(leaves)]
        bare.start(ready)
        _wait_all(ready, "restart_at_scale.floor")
        pair = _BarePair()
        pair.first_start()
        yield pair.measure
    finally:
        try:
            if pair is not None:
                pair.close()
        finally:
            bare.close()


_RESTART = "group {a, b}; b raises: from b's raise to the first line of a's next incarnation"
_RESTART_FLOOR = (
    "bare threads: b catches its error and posts; a processor thread sets a's Event; "
    "a ends and posts; the processor starts a new a"
)


@register(
    "restart",
    _RESTART,
    baseline="restart.floor",
    target=Target("ratio", 1.5),
    tags={"workload": "restart", "version": "threadsup"},
)
@contextlib.contextmanager
def _restart() -> Iterator[Measure]:
    with _supervised_pair(0) as measure:
        yield measure


@register("restart.floor", _RESTART_FLOOR, tags={"workload": "restart", "version": "floor"})
@contextlib.contextmanager
def _restart_floor() -> Iterator[Measure]:
    with _bare_pair(0) as measure:
        yield measure


@register(
    "restart_at_scale",
    f"{_RESTART}; with {LEAVES:,} idle HEALTHY leaves elsewhere in the tree",
    repeats=100,
    baseline="restart_at_scale.floor",
    target=Target("ratio", 1.5),
    session="restart_at_scale",
    blocks=2,
    tags={"workload": "restart_at_scale", "version": "threadsup"},
)
@contextlib.contextmanager
def _restart_at_scale() -> Iterator[Measure]:
    with _supervised_pair(_leaves()) as measure:
        yield measure


@register(
    "restart_at_scale.floor",
    f"{_RESTART_FLOOR}; with {LEAVES:,} idle bare threads alive",
    repeats=100,
    session="restart_at_scale.floor",
    blocks=2,
    tags={"workload": "restart_at_scale", "version": "floor"},
)
@contextlib.contextmanager
def _restart_at_scale_floor() -> Iterator[Measure]:
    with _bare_pair(_leaves()) as measure:
        yield measure


# ---------------------------------------------------------------- failure_restart


class _SupervisedFailing(_Stamps):
    def worker(self, token: CancelToken) -> None:
        self.started.put(time.perf_counter())
        token.signal(Signal.HEALTHY)
        armed = threading.Event()
        self.armed.put(armed)
        token.wait_for(armed)
        self.fail()


class _BareFailing(_Stamps):
    def __init__(self) -> None:
        super().__init__()
        self._gate = _Gate()
        self.processor = _BareProcessor()
        self.processor.post(self._start)

    def _start(self) -> None:
        self.processor.start_thread(self._worker)

    def _worker(self) -> None:
        try:
            self.started.put(time.perf_counter())
            armed = self._gate.event()
            self.armed.put(armed)
            armed.wait()
            if not self._gate.closed:
                self.fail()
        except _Failure:
            self.processor.post(self._start)  # the thread ends and posts

    def close(self) -> None:
        self.processor.close(self._gate.close)


@register(
    "failure_restart",
    "one runnable raises, Backoff(initial=0): from its raise to the first line of its "
    "next incarnation",
    baseline="failure_restart.floor",
    target=Target("ratio", 1.5),
    tags={"workload": "failure_restart", "version": "threadsup"},
)
@contextlib.contextmanager
def _failure_restart() -> Iterator[Measure]:
    failing = _SupervisedFailing()

    def root(token: CancelToken) -> None:
        token.run("worker", failing.worker)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = Supervisor(root, logger=LOGGER, backoff=NO_BACKOFF)
    sup.start()
    try:
        failing.first_start()
        yield failing.measure
    finally:
        _stop(sup)


@register(
    "failure_restart.floor",
    "a bare thread catches its error and posts; a processor thread starts a new one",
    tags={"workload": "failure_restart", "version": "floor"},
)
@contextlib.contextmanager
def _failure_restart_floor() -> Iterator[Measure]:
    failing = _BareFailing()
    try:
        failing.first_start()
        yield failing.measure
    finally:
        failing.close()


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
        self._sup = Supervisor(_tree(ready), logger=LOGGER)
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


@register(
    "spawn",
    f"{LEAVES:,} leaves, {LEAVES // GROUP} groups of {GROUP} under the root: from "
    "Supervisor(...) until every leaf signalled HEALTHY",
    repeats=5,
    quick_repeats=3,
    warmup=0,
    baseline="spawn.floor",
    target=Target("ratio", 1.2),
    session="spawn",
    blocks=5,
    tags={"workload": "spawn", "version": "threadsup"},
)
@contextlib.contextmanager
def _spawn() -> Iterator[Measure]:
    try:
        yield _SUPERVISED.spawn
    finally:
        _SUPERVISED.close()


@register(
    "spawn.floor",
    f"{LEAVES:,} bare threads each set a ready Event: from the first start until all are set",
    repeats=5,
    quick_repeats=3,
    warmup=0,
    session="spawn.floor",
    blocks=5,
    tags={"workload": "spawn", "version": "floor"},
)
@contextlib.contextmanager
def _spawn_floor() -> Iterator[Measure]:
    try:
        yield _BARE.spawn
    finally:
        _BARE.close()


@register(
    "stop",
    "stop() of the spawn row's tree, until every thread is joined",
    repeats=5,
    quick_repeats=3,
    warmup=0,
    baseline="stop.floor",
    target=Target("ratio", 1.0),
    session="spawn",
    blocks=5,
    tags={"workload": "stop", "version": "threadsup"},
)
@contextlib.contextmanager
def _stop_tree() -> Iterator[Measure]:
    try:
        yield _SUPERVISED.stop
    finally:
        _SUPERVISED.close()


@register(
    "stop.floor",
    "set each bare thread's own Event, join them all",
    repeats=5,
    quick_repeats=3,
    warmup=0,
    session="spawn.floor",
    blocks=5,
    tags={"workload": "stop", "version": "floor"},
)
@contextlib.contextmanager
def _stop_floor() -> Iterator[Measure]:
    try:
        yield _BARE.stop
    finally:
        _BARE.close()


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


@register(
    "idle",
    f"process CPU time over {IDLE_WINDOW:g} s with {IDLE_LEAVES:,} HEALTHY idle leaves",
    repeats=3,
    quick_repeats=1,
    warmup=0,
    baseline="idle.floor",
    target=Target("value", 0.010),
    session="idle",
    blocks=3,
    tags={"workload": "idle", "version": "threadsup"},
)
@contextlib.contextmanager
def _idle() -> Iterator[Measure]:
    ready = [threading.Event() for _ in range(IDLE_LEAVES)]
    sup = Supervisor(_tree(ready), logger=LOGGER)
    sup.start()
    try:
        _wait_all(ready, "idle")
        if not sup.wait_settled(MASS_TIMEOUT):
            raise RuntimeError("the idle tree did not settle")
        gc.collect()
        yield _cpu_over_window
    finally:
        _stop(sup)


@register(
    "idle.floor",
    f"process CPU time over {IDLE_WINDOW:g} s with {IDLE_LEAVES:,} bare threads in "
    "Event.wait() (for reference: the target is absolute)",
    repeats=3,
    quick_repeats=1,
    warmup=0,
    session="idle.floor",
    blocks=3,
    tags={"workload": "idle", "version": "floor"},
)
@contextlib.contextmanager
def _idle_floor() -> Iterator[Measure]:
    bare = _Bare()
    try:
        ready = [threading.Event() for _ in range(IDLE_LEAVES)]
        bare.start(ready)
        _wait_all(ready, "idle.floor")
        gc.collect()
        yield _cpu_over_window
    finally:
        bare.close()


# ---------------------------------------------------------------- memory


def _traced(start: Callable[[list[threading.Event]], Callable[[], None]]) -> float:
    """Python heap per leaf: traced bytes that ``start`` holds once its leaves are
    ready, divided by their number. ``start`` returns what stops them."""
    ready = [threading.Event() for _ in range(IDLE_LEAVES)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stop = start(ready)
        try:
            _wait_all(ready, "memory")
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            stop()
    finally:
        tracemalloc.stop()
    return held / IDLE_LEAVES


def _start_supervised(ready: list[threading.Event]) -> Callable[[], None]:
    sup = Supervisor(_tree(ready), logger=LOGGER)
    sup.start()
    try:
        if not sup.wait_settled(MASS_TIMEOUT):
            raise RuntimeError("the memory tree did not settle")
    except BaseException:
        _stop(sup)
        raise
    return lambda: _stop(sup)


def _start_bare(ready: list[threading.Event]) -> Callable[[], None]:
    bare = _Bare()
    try:
        bare.start(ready)
    except BaseException:
        bare.close()
        raise
    return bare.close


@register(
    "memory",
    f"Python heap (tracemalloc) per supervised HEALTHY idle leaf, {IDLE_LEAVES:,} leaves "
    f"in groups of {GROUP}",
    repeats=5,
    quick_repeats=1,
    warmup=1,
    baseline="memory.floor",
    target=Target("excess", 4096),
    unit="B",
    session="memory",
    tags={"workload": "memory", "version": "threadsup"},
)
@contextlib.contextmanager
def _memory() -> Iterator[Measure]:
    yield lambda: _traced(_start_supervised)


@register(
    "memory.floor",
    "Python heap (tracemalloc) per bare thread waiting on an Event of its own",
    repeats=5,
    quick_repeats=1,
    warmup=1,
    unit="B",
    session="memory",
    tags={"workload": "memory", "version": "floor"},
)
@contextlib.contextmanager
def _memory_floor() -> Iterator[Measure]:
    yield lambda: _traced(_start_bare)
