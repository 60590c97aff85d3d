"""Model-based test of the tree semantics.

A hypothesis `RuleBasedStateMachine` builds a random tree (depth up to 5, groups
of 1 to 4) of remote-controlled runnables, then applies random actions: signal
HEALTHY or DONE (in order or not), return, raise an `Exception`, raise a
`BaseException` (`KeyboardInterrupt`, `SystemExit`, a custom one, a `Cancelled`
of some other token), let an out-of-order signal's error escape, finish DONE in
one go (HEALTHY, DONE, return), restart a subtree with ``sup.restart(dn)``,
change how a node exits once cancelled, cancel the supervisor. After each action
the tree is let settle and ``sup.snapshot()`` is compared with a small
pure-Python model of the contract, exactly: every DN's state, ``running``,
``restarts`` and ``last_error``; how many incarnations every DN has had; and
which nodes were restarted, as what (DEAD or CANCELLED) and after which backoff
delay (from the ``restart_scheduled`` records; the backoff has no jitter, so the
delays are exact).

Invariants checked at every step, and between steps by a sampler thread that
snapshots the tree every few milliseconds:

- no two live incarnations of one DN (one has exited before the next starts);
- no orphan: a running incarnation belongs to the current incarnation of each
  of its ancestors (the contract allows a thread under a node whose own thread
  has ended, such as children of a node that returned DONE, so "a running
  thread under a node that is not running" is read as "under a node whose
  incarnation is over and has been replaced");
- no restart while a thread of the subtree runs: when any incarnation starts,
  every earlier incarnation of every DN in its subtree has exited;
- states move only along the contract's edges within one incarnation (NEW to
  HEALTHY to DONE, any of them to DEAD or CANCELLED, DEAD and CANCELLED final),
  ``running`` only goes from True to False and ``restarts`` does not change;
- the snapshot lists parents before children.

The machine runs twice: on a thread per incarnation, and with the supervisor
reusing threads (``reuse_threads=True``), where parked threads run the next
incarnations and every property above must hold the same.

``THREADSUP_SOAK=1`` selects a longer profile (more examples, longer runs,
bigger trees), which ``make soak`` runs.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from threadsup import Backoff, Cancelled, CancelToken, NodeStatus, Signal, State, Supervisor
from threadsup._errors import InvalidSignal
from threadsup._processor import current_frames
from threadsup.testing import (
    Harness,
    Incarnation,
    RemoteRunnable,
    check_no_new_threads,
    format_snapshot,
)

#: The long profile, for ``make soak``.
SOAK = os.environ.get("THREADSUP_SOAK", "").strip() not in ("", "0")

#: Fast and exact: 1 ms, 1.5 ms, 2.25 ms, 3.375 ms, then 5 ms for ever.
BACKOFF = Backoff(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)

MAX_DEPTH = 5
MAX_GROUP = 4
MAX_NODES = 30 if SOAK else 14

if SOAK:
    PROFILE = settings(
        max_examples=300,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
else:
    # No shrinking in CI: a failure is reported at once, with its whole run of steps,
    # rather than after minutes of re-running threads (and past pytest's timeout).
    PROFILE = settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )

#: What the runs exercised, across examples: tells a vacuous run from a real one.
COVERAGE: Counter[str] = Counter()

#: Bound of every wait for the tree to reach the model's state.
CONVERGE_TIMEOUT = 15.0

#: How a node exits once its token is cancelled: each makes it CANCELLED.
CANCEL_MODES = ("return", "raise", "raise_base", "raise_cancelled", "signal")

#: Edges within one incarnation, closed under transitivity (the sampler may miss steps).
REACHABLE: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.NEW, State.HEALTHY, State.DONE, State.DEAD, State.CANCELLED}),
    State.HEALTHY: frozenset({State.HEALTHY, State.DONE, State.DEAD, State.CANCELLED}),
    State.DONE: frozenset({State.DONE, State.DEAD, State.CANCELLED}),
    State.DEAD: frozenset({State.DEAD}),
    State.CANCELLED: frozenset({State.CANCELLED}),
}


class ModelCrash(BaseException):
    """A `BaseException` that is neither `Exception` nor one of Python's own."""


#: The exceptions a runnable may be told to raise, by kind.
CRASHES: dict[str, Callable[[int], BaseException]] = {
    "exception": lambda k: ValueError(f"boom {k}"),
    "base_exception": lambda k: ModelCrash(f"crash {k}"),
    "keyboard_interrupt": lambda k: KeyboardInterrupt(f"interrupt {k}"),
    "system_exit": lambda k: SystemExit(f"exit {k}"),
    # A Cancelled of some other token while the node's own is live: a death (rule 3).
    "stale_cancelled": lambda k: Cancelled(f"root.stale{k}"),
}


def one_line(exc: BaseException) -> str:
    """The contract's ``last_error`` for ``exc``, written independently of threadsup."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- tree shapes


@dataclass(frozen=True)
class Spec:
    """One node of the static shape: every incarnation builds the same children."""

    dn: str
    parent: str | None
    #: The groups of children this node starts, as DNs, in order.
    groups: tuple[tuple[str, ...], ...]
    #: The members of this node's own group, itself included.
    group: tuple[str, ...]


@st.composite
def tree_shapes(draw: st.DrawFn, max_nodes: int) -> dict[str, Spec]:
    """A tree of at most ``max_nodes`` nodes, depth at most 5, groups of 1 to 4,
    built depth first so that deep chains are as likely as wide levels."""
    budget = draw(st.integers(1, max_nodes)) - 1
    groups: dict[str, list[tuple[str, ...]]] = {}
    parent: dict[str, str | None] = {"root": None}
    member_of: dict[str, tuple[str, ...]] = {"root": ("root",)}
    order: list[str] = []

    def build(dn: str, depth: int) -> None:
        nonlocal budget
        order.append(dn)
        groups[dn] = []
        if depth >= MAX_DEPTH:
            return
        names = itertools.count()
        for _ in range(draw(st.integers(0, 2))):
            if budget <= 0:
                break
            size = draw(st.integers(1, min(MAX_GROUP, budget)))
            budget -= size
            group = tuple(f"{dn}.c{next(names)}" for _ in range(size))
            groups[dn].append(group)
            for child in group:
                parent[child] = dn
                member_of[child] = group
            for child in group:
                build(child, depth + 1)

    build("root", 1)
    return {dn: Spec(dn, parent[dn], tuple(groups[dn]), member_of[dn]) for dn in order}


# ------------------------------------------------------------------------------ runnables


class Probe:
    """The runnable of one DN: a `RemoteRunnable` whose setup starts the DN's
    groups of children, and which exits its chosen way once cancelled."""

    def __init__(self, spec: Spec, probes: dict[str, Probe], cancel_mode: str) -> None:
        self.spec = spec
        self.cancel_mode = cancel_mode
        self._probes = probes
        self._lock = threading.Lock()
        #: Tokens of the incarnations whose setup has started every child group.
        self._built: set[CancelToken] = set()
        self.remote = RemoteRunnable(self._setup, when_cancelled=self._when_cancelled)

    def _setup(self, token: CancelToken) -> None:
        for group in self.spec.groups:
            token.run_group({dn.rpartition(".")[2]: self._probes[dn].remote for dn in group})
        with self._lock:
            self._built.add(token)

    def built(self, token: CancelToken) -> bool:
        with self._lock:
            return token in self._built

    def _when_cancelled(self, token: CancelToken) -> None:
        mode = self.cancel_mode
        if mode == "raise":
            raise ValueError("raised once cancelled")
        if mode == "raise_base":
            raise ModelCrash("raised once cancelled")
        if mode == "raise_cancelled":
            token.raise_if_cancelled()
        if mode == "signal":
            token.signal(Signal.HEALTHY)  # raises Cancelled: the token is cancelled


# ------------------------------------------------------------------------------ the model


@dataclass
class ModelNode:
    """What the contract says one node's status is."""

    state: State = State.NEW
    running: bool = True
    restarts: int = 0
    last_error: str | None = None
    #: ``last_error`` is only known up to this prefix (an error threadsup words).
    error_is_prefix: bool = False
    #: Consecutive DEAD restarts since the last HEALTHY or DONE: the backoff's n.
    n: int = 0


@dataclass
class Restart:
    dn: str
    state: str
    delay: float


@dataclass
class Model:
    specs: dict[str, Spec]
    backoff: Backoff
    nodes: dict[str, ModelNode] = field(default_factory=dict)
    #: Incarnations of each DN so far, across the node objects that held the DN.
    incarnations: Counter[str] = field(default_factory=Counter)
    #: The restarts the last action must cause.
    restarts: list[Restart] = field(default_factory=list)
    #: Every node DONE with no thread left, or the supervisor cancelled: no more actions.
    over: bool = False

    def start(self) -> None:
        for dn in self.specs:
            self.nodes[dn] = ModelNode()
            self.incarnations[dn] += 1

    def descendants(self, dn: str) -> Iterator[str]:
        for group in self.specs[dn].groups:
            for child in group:
                yield child
                yield from self.descendants(child)

    def delay(self, n: int) -> float:
        b = self.backoff
        return float(min(b.initial * b.multiplier**n, b.maximum))

    # The contract's rules.

    def healthy(self, dn: str) -> bool:
        node = self.nodes[dn]
        if node.state is not State.NEW:
            return False
        node.state = State.HEALTHY
        node.n = 0
        return True

    def done(self, dn: str) -> bool:
        node = self.nodes[dn]
        if node.state is not State.HEALTHY:
            return False
        node.state = State.DONE
        node.n = 0
        return True

    def returned(self, dn: str) -> None:
        node = self.nodes[dn]
        if node.state is State.DONE:  # rule 1
            node.running = False
            if all(n.state is State.DONE and not n.running for n in self.nodes.values()):
                self.over = True
            return
        self.died(dn, "returned without signalling DONE")

    def died(self, dn: str, error: str, *, prefix: bool = False) -> None:
        """Rule 3: DEAD; its subtree and its group are cancelled and restarted."""
        node = self.nodes[dn]
        node.state = State.DEAD
        node.running = False
        node.last_error = error
        node.error_is_prefix = prefix
        delay = self.delay(node.n)
        node.n += 1
        members = [m for m in self.specs[dn].group if m != dn]
        for member in members:
            # Running members exit once cancelled; DONE ones are revived: CANCELLED.
            self.nodes[member].state = State.CANCELLED
            self.nodes[member].running = False
        self.restart(dn, "DEAD", delay)
        for member in members:
            self.restart(member, "CANCELLED", 0.0)

    def restart_requested(self, dn: str) -> None:
        """``sup.restart(dn)``: cancelled (a DONE node included), then back at once."""
        node = self.nodes[dn]
        node.state = State.CANCELLED
        node.running = False
        self.restart(dn, "CANCELLED", 0.0)

    def cancelled(self) -> None:
        """``sup.cancel()``: every running node exits CANCELLED; nothing restarts."""
        for node in self.nodes.values():
            if node.running:
                node.state = State.CANCELLED
                node.running = False
        self.over = True

    def restart(self, dn: str, state: str, delay: float) -> None:
        """The subtree at ``dn`` restarts as one: children are discarded and rebuilt."""
        self.restarts.append(Restart(dn, state, delay))
        node = self.nodes[dn]
        node.state = State.NEW
        node.running = True
        node.restarts += 1
        self.incarnations[dn] += 1
        for child in self.descendants(dn):
            self.nodes[child] = ModelNode()
            self.incarnations[child] += 1


# ---------------------------------------------------------------------------- the sampler


class Sampler:
    """Snapshots the tree every few milliseconds and checks each node's moves.

    The identity of an incarnation is its token, read under the tree lock with
    the snapshot: the public `NodeStatus` has no field that names it exactly.
    """

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.violations: list[str] = []
        self.samples = 0
        self._last: dict[CancelToken, NodeStatus] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.sample()

    def sample(self) -> None:
        tree = self.sup._tree
        with tree.lock:
            snap = self.sup.snapshot()
            tokens = {node.dn: node.token for node in self.sup._root.walk()}
        self.samples += 1
        seen: set[str] = set()
        for dn, status in snap.items():
            parent = dn.rpartition(".")[0]
            if parent and parent not in seen:
                self.violations.append(f"{dn} listed before its parent {parent}")
            seen.add(dn)
            token = tokens[dn]
            before = self._last.get(token)
            self._last[token] = status
            if before is None:
                continue
            if status.state not in REACHABLE[before.state]:
                self.violations.append(
                    f"{dn}: {before.state.name} -> {status.state.name} within one incarnation"
                )
            if status.running and not before.running and before.started_at is not None:
                self.violations.append(f"{dn}: running again within one incarnation")
            if status.restarts != before.restarts:
                self.violations.append(
                    f"{dn}: restarts {before.restarts} -> {status.restarts} without a new token"
                )


def diagnosis(sup: Supervisor) -> str:
    """The supervisor's insides, for a failure report: its nodes' bookkeeping, the
    processor's timers and queue, and the stack of its loop."""
    processor = sup._processor
    now = time.monotonic()
    lines = []
    with sup._tree.lock:
        for node in sup._root.walk():
            due = None if node.restart_due is None else round(node.restart_due - now, 4)
            lines.append(
                f"  {node.dn}: {node.state.name} running={node.running} busy={node.busy} "
                f"attached={node.attached} restart_due={due} "
                f"restart_asked={node in processor._restarts_asked} "
                f"token.cancelled={node.token.cancelled} thread={node.thread}"
            )
        for due, _, what in sorted(processor._due, key=lambda entry: entry[:2]):
            lines.append(f"  timer in {due - now:+.4f} s: {what!r}")
        lines.append(
            f"  requests queued: {processor._requests.qsize()}, finished: {processor._finished}, "
            f"processor alive: {processor.thread.is_alive()}, failure: {processor.failure!r}"
        )
    frame = current_frames().get(processor.thread.ident or 0)
    if frame is not None:
        lines.append("  processor stack:\n" + "".join(traceback.format_stack(frame)))
    return "insides:\n" + "\n".join(lines)


# ---------------------------------------------------------------------------- the machine


class TreeMachine(RuleBasedStateMachine):
    #: Whether the supervisor reuses threads across incarnations.
    reuse_threads = False

    def __init__(self) -> None:
        super().__init__()
        self.before = set(threading.enumerate())
        self.harness = Harness(stop_timeout=15.0)
        # Thousands of records with tracebacks: keep them from pytest's capture.
        self.harness.logger.propagate = False
        self.sup: Supervisor | None = None
        self.sampler: Sampler | None = None
        self.probes: dict[str, Probe] = {}
        self.model = Model({}, BACKOFF)
        self.errors = itertools.count(1)
        #: How many of the harness's records earlier steps accounted for.
        self.records_seen = 0
        #: How many incarnations of each DN the timeline checks have covered.
        self.checked: Counter[str] = Counter()
        self.steps = 0
        #: DONE nodes whose thread had ended before the current step.
        self.done_before: set[str] = set()

    # Building.

    @initialize(
        shape=tree_shapes(MAX_NODES),
        modes=st.lists(st.sampled_from(CANCEL_MODES), min_size=MAX_NODES, max_size=MAX_NODES),
    )
    def build(self, shape: dict[str, Spec], modes: list[str]) -> None:
        for spec, mode in zip(shape.values(), modes):
            self.probes[spec.dn] = Probe(spec, self.probes, mode)
        self.model = Model(shape, BACKOFF)
        self.sup = self.harness.start(
            self.probes["root"].remote, backoff=BACKOFF, reuse_threads=self.reuse_threads
        )
        self.model.start()
        self.sampler = Sampler(self.sup)
        self.sampler.start()
        self.converge("start")

    # Helpers.

    @property
    def supervisor(self) -> Supervisor:
        assert self.sup is not None
        return self.sup

    def live(self) -> bool:
        return self.sup is not None and not self.model.over

    def running(self) -> list[str]:
        return sorted(dn for dn, node in self.model.nodes.items() if node.running)

    def pick_running(self, data: st.DataObject) -> tuple[str, Incarnation]:
        dn = data.draw(st.sampled_from(self.running()), label="dn")
        return dn, self.probes[dn].remote.current

    # Actions.

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def signal_healthy(self, data: st.DataObject) -> None:
        dn, inc = self.pick_running(data)
        if self.model.healthy(dn):
            inc.healthy()
        else:
            with pytest.raises(InvalidSignal):
                inc.healthy()
        self.converge(f"signal HEALTHY {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def signal_done(self, data: st.DataObject) -> None:
        dn, inc = self.pick_running(data)
        if self.model.done(dn):
            inc.done()
        else:
            with pytest.raises(InvalidSignal):
                inc.done()
        self.converge(f"signal DONE {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def return_(self, data: st.DataObject) -> None:
        dn, inc = self.pick_running(data)
        self.model.returned(dn)
        inc.finish()
        self.converge(f"return {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def finish_done(self, data: st.DataObject) -> None:
        """The whole happy ending at once (HEALTHY if NEW, DONE, return): it makes
        DONE nodes common, whose group or ancestor then revives them."""
        dn, inc = self.pick_running(data)
        state = self.model.nodes[dn].state
        if state is State.NEW:
            self.model.healthy(dn)
            inc.healthy()
        if state is not State.DONE:
            self.model.done(dn)
            inc.done()
        self.model.returned(dn)
        inc.finish()
        self.converge(f"finish DONE {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data(), kind=st.sampled_from(sorted(CRASHES)))
    def raise_(self, data: st.DataObject, kind: str) -> None:
        dn, inc = self.pick_running(data)
        error = CRASHES[kind](next(self.errors))
        self.model.died(dn, one_line(error))
        inc.die(error)
        self.converge(f"raise {error!r} in {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def escape_bad_signal(self, data: st.DataObject) -> None:
        """An out-of-order signal whose error the runnable lets escape: a death."""
        dn, inc = self.pick_running(data)
        bad = Signal.DONE if self.model.nodes[dn].state is State.NEW else Signal.HEALTHY
        self.model.died(dn, "InvalidSignal: ", prefix=True)
        inc.exit_with(lambda token: token.signal(bad))
        self.converge(f"escape {bad.name} from {dn}")

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def restart_subtree(self, data: st.DataObject) -> None:
        dn = data.draw(st.sampled_from(sorted(self.model.nodes)), label="dn")
        self.model.restart_requested(dn)
        self.supervisor.restart(dn)
        self.converge(f"restart({dn!r})")

    @precondition(lambda self: self.live())
    @rule(data=st.data(), mode=st.sampled_from(CANCEL_MODES))
    def change_cancel_mode(self, data: st.DataObject, mode: str) -> None:
        """How a node exits once cancelled (return, raise ...): CANCELLED whatever it is."""
        dn = data.draw(st.sampled_from(sorted(self.probes)), label="dn")
        self.probes[dn].cancel_mode = mode

    @precondition(lambda self: self.live())
    @rule(roll=st.integers(0, 9))
    def cancel_supervisor(self, roll: int) -> None:
        if roll:  # a tenth of the time: cancelling ends the run
            return
        self.model.cancelled()
        self.supervisor.cancel()
        self.converge("cancel()")
        assert self.supervisor.wait(timeout=CONVERGE_TIMEOUT)

    @precondition(lambda self: self.sup is not None and self.model.over)
    @rule()
    def settle_again(self) -> None:
        """Once the tree has ended nothing may happen: it must stay as it is."""
        self.converge("nothing")
        if self.model.over:
            assert self.supervisor.wait(timeout=CONVERGE_TIMEOUT)

    # Checking.

    def converge(self, action: str) -> None:
        """Wait (bounded) for the tree to match the model, then check it stays so."""
        self.steps += 1
        sup = self.supervisor
        started = time.monotonic()
        deadline = started + CONVERGE_TIMEOUT
        problems: list[str] = []
        confirmed = False
        while True:
            sup.wait_settled(timeout=max(0.0, deadline - time.monotonic()))
            problems = self.mismatches()
            if not problems:
                if confirmed:
                    break
                confirmed = True  # once more after the next settle: no late change
                continue
            confirmed = False
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        self.check_timeline(action)
        assert not problems, (
            f"after {action}, the tree does not match the model:\n  "
            + "\n  ".join(problems)
            + f"\nsnapshot:\n{format_snapshot(sup.snapshot())}"
            + f"\n{diagnosis(sup)}"
        )
        took = round((time.monotonic() - started) * 1000)
        COVERAGE["slowest settle (ms)"] = max(COVERAGE["slowest settle (ms)"], took)
        COVERAGE["steps"] += 1
        COVERAGE[action.split(" ", 1)[0].split("(", 1)[0]] += 1
        for restart in self.model.restarts:
            COVERAGE[f"{restart.state} restart"] += 1
            if restart.state == "DEAD" and restart.delay > BACKOFF.initial:
                COVERAGE["longer backoff"] += 1
        COVERAGE["largest tree"] = max(COVERAGE["largest tree"], len(self.model.nodes))
        revived = {r.dn for r in self.model.restarts if r.state == "CANCELLED"} & self.done_before
        COVERAGE["DONE revived"] += len(revived)
        self.done_before = {
            dn for dn, n in self.model.nodes.items() if n.state is State.DONE and not n.running
        }
        self.records_seen = self._restart_records()[0]
        self.model.restarts = []

    def _restart_records(self) -> tuple[int, list[Restart]]:
        records = self.harness.logs.records
        found = []
        for record in records[self.records_seen :]:
            if getattr(record, "event", None) == "restart_scheduled":
                args = record.args
                assert isinstance(args, tuple)
                found.append(Restart(str(args[0]), str(args[1]), float(record.__dict__["delay"])))
        return len(records), found

    def mismatches(self) -> list[str]:
        problems = []
        snap = self.supervisor.snapshot()
        if sorted(snap) != sorted(self.model.nodes):
            problems.append(f"DNs {sorted(snap)} != model {sorted(self.model.nodes)}")
        for dn, node in self.model.nodes.items():
            status = snap.get(dn)
            if status is None:
                continue
            got = (status.state, status.running, status.restarts)
            want = (node.state, node.running, node.restarts)
            if got != want:
                problems.append(f"{dn}: (state, running, restarts) = {got}, model {want}")
            if node.error_is_prefix:
                ok = status.last_error is not None and status.last_error.startswith(
                    node.last_error or ""
                )
            else:
                ok = status.last_error == node.last_error
            if not ok:
                problems.append(
                    f"{dn}: last_error {status.last_error!r}, model {node.last_error!r}"
                )
            probe = self.probes[dn]
            count = probe.remote.count
            if count != self.model.incarnations[dn]:
                problems.append(f"{dn}: {count} incarnations, model {self.model.incarnations[dn]}")
            elif count:
                current = probe.remote.current
                if current.exited.is_set() == node.running:
                    problems.append(f"{dn}: its runnable exited={current.exited.is_set()}")
                if node.running and not probe.built(current.token):
                    problems.append(f"{dn}: its children are not all started yet")
        _, restarts = self._restart_records()
        problems.extend(self._compare_restarts(restarts))
        return problems

    def _compare_restarts(self, got: list[Restart]) -> list[str]:
        want = list(self.model.restarts)
        unmatched = []
        for restart in got:
            for i, expected in enumerate(want):
                if (
                    expected.dn == restart.dn
                    and expected.state == restart.state
                    and math.isclose(expected.delay, restart.delay, rel_tol=1e-9, abs_tol=1e-12)
                ):
                    del want[i]
                    break
            else:
                unmatched.append(restart)
        problems = []
        if unmatched:
            problems.append(f"restarts the model does not expect: {unmatched}")
        if want:
            problems.append(f"restarts expected and not (yet) logged: {want}")
        return problems

    def check_timeline(self, action: str) -> None:
        sampler = self.sampler
        assert sampler is not None
        assert not sampler.violations, f"after {action}: {sampler.violations}"
        for dn, probe in self.probes.items():
            incarnations = probe.remote.incarnations
            # No two live incarnations of one DN.
            for old, new in zip(incarnations, incarnations[1:]):
                assert old.exited_at is not None and old.exited_at <= new.started_at, (
                    f"after {action}: {dn} incarnation {new.index} started before "
                    f"{old.index} exited"
                )
            for inc in incarnations[self.checked[dn] :]:
                self._check_start(dn, inc, action)
            self.checked[dn] = len(incarnations)
            # No orphan: a live incarnation belongs to its parent's current one.
            parent = probe.spec.parent
            if incarnations and not incarnations[-1].exited.is_set() and parent is not None:
                latest = self.probes[parent].remote.current
                assert latest.started_at <= incarnations[-1].started_at, (
                    f"after {action}: {dn} still runs an incarnation started under an "
                    f"older incarnation of {parent}"
                )

    def _check_start(self, dn: str, inc: Incarnation, action: str) -> None:
        """No (re)start while a thread of the subtree runs."""
        for other in (dn, *self.model.descendants(dn)):
            for earlier in self.probes[other].remote.incarnations:
                if earlier.started_at >= inc.started_at:
                    break
                assert earlier.exited_at is not None and earlier.exited_at <= inc.started_at, (
                    f"after {action}: {dn} incarnation {inc.index} started while "
                    f"{other} incarnation {earlier.index} was still running"
                )

    def teardown(self) -> None:
        try:
            if self.sampler is not None:
                self.sampler.stop()
            self.harness.close()  # stops the supervisor; asserts it stopped in time
            if self.sup is not None:
                snap = self.sup.snapshot()
                assert not any(status.running for status in snap.values()), format_snapshot(snap)
                for dn, probe in self.probes.items():
                    if probe.remote.count:
                        assert probe.remote.current.exited.is_set(), dn
        finally:
            check_no_new_threads(self.before, timeout=10.0)


class ReusingTreeMachine(TreeMachine):
    """The same, with parked threads running the next incarnations."""

    reuse_threads = True


@pytest.mark.slow
@pytest.mark.timeout(3600 if SOAK else 300)
@pytest.mark.parametrize(
    "machine", [TreeMachine, ReusingTreeMachine], ids=["fresh_threads", "reused_threads"]
)
def test_the_tree_follows_the_model(machine: type[TreeMachine]) -> None:
    COVERAGE.clear()
    run_state_machine_as_test(machine, settings=PROFILE)  # type: ignore[no-untyped-call]
    print(dict(COVERAGE))
    assert COVERAGE["DEAD restart"] and COVERAGE["CANCELLED restart"], dict(COVERAGE)


def test_the_shapes_reach_the_contract_limits() -> None:
    """The shape strategy can draw depth 5 and groups of 4 (and nothing beyond)."""
    seen_depth, seen_group = 0, 0

    @settings(max_examples=300, deadline=None, database=None)
    def check(shape: dict[str, Spec]) -> None:
        nonlocal seen_depth, seen_group
        assert 1 <= len(shape) <= MAX_NODES
        for spec in shape.values():
            depth = spec.dn.count(".") + 1
            assert depth <= MAX_DEPTH
            assert all(1 <= len(group) <= MAX_GROUP for group in spec.groups)
            seen_depth = max(seen_depth, depth)
            seen_group = max(seen_group, *(len(group) for group in spec.groups), 0)

    given(tree_shapes(MAX_NODES))(check)()
    assert seen_depth == MAX_DEPTH
    assert seen_group == MAX_GROUP
