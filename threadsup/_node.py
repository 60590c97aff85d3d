"""The supervision tree: its nodes, their states, and what an exit does to them.

Every field of a `Node` and every token flag is changed under `Tree.lock`, by
the processor or by a runnable's own thread, and only for as long as a
decision takes: user code (runnables, callbacks, log handlers) never runs
under it.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, NoReturn

from threadsup import _logs
from threadsup._errors import (
    Cancelled,
    DuplicateName,
    InvalidName,
    InvalidSignal,
    NodeNotNew,
    require_runnable,
)
from threadsup._policy import DEFAULT_POLICY, Backoff, ChildPolicy
from threadsup._token import CancelToken, Runnable, Signal

if TYPE_CHECKING:
    from threadsup._events import Kept

_NAME = re.compile(r"[a-z0-9_]{1,64}")


class State(enum.Enum):
    """The state of a node's current incarnation."""

    #: Scheduled or running, and has not signalled anything yet.
    NEW = "NEW"
    #: Signalled HEALTHY: ready to serve.
    HEALTHY = "HEALTHY"
    #: Signalled DONE: its work is finished; it runs again only if its group or an
    #: ancestor restarts.
    DONE = "DONE"
    #: Returned without DONE, or raised, while its token was live. Restarts after backoff.
    DEAD = "DEAD"
    #: Exited after its token was cancelled. Restarts at once if its parent is live.
    CANCELLED = "CANCELLED"


#: States whose node waits for a restart once its subtree is idle.
_RESTARTABLE = (State.DEAD, State.CANCELLED)


@dataclass(frozen=True)
class NodeStatus:
    """One node as `Supervisor.snapshot` saw it."""

    dn: str
    state: State
    #: The node's thread is alive: its runnable has not returned yet.
    running: bool
    #: How many times this node has been restarted.
    restarts: int
    #: One line on the node's last failure, kept until the next one.
    last_error: str | None
    #: Seconds since its token was cancelled, once the node has outlived its
    #: shutdown timeout without exiting; ``None`` otherwise.
    stuck_for: float | None = None
    #: Threads of this DN abandoned while stuck (``on_stuck="abandon"``) and
    #: still running.
    abandoned: int = 0
    #: The node's restart type: ``permanent``, ``transient`` or ``temporary``.
    restart: str = "permanent"
    #: The DNs of the node's group, itself included.
    group: tuple[str, ...] = ()
    #: When the current incarnation started (`time.time`), or ``None``.
    started_at: float | None = None
    #: Since when the current incarnation is HEALTHY (`time.time`), or ``None``.
    healthy_since: float | None = None
    #: When a pending backoff restart is due (`time.time`), or ``None``.
    next_restart_at: float | None = None
    #: Why the node gave up restarting (its intensity was exceeded), or ``None``.
    gave_up: str | None = None
    #: Added at run time with `CancelToken.spawn`.
    dynamic: bool = False

    @property
    def stuck(self) -> bool:
        """Cancelled, still running, and past its shutdown timeout."""
        return self.stuck_for is not None


class SupervisedThread(threading.Thread):
    """A daemon thread started by a supervisor, which knows its tree."""

    def __init__(self, tree: Tree, name: str, target: Callable[..., object], *args: object) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.tree = tree


class Tree:
    """What all nodes of one supervisor share."""

    def __init__(
        self,
        base_logger: logging.Logger,
        backoff: Backoff,
        shutdown_timeout: float,
        *,
        reuse_threads: bool = False,
    ) -> None:
        #: Guards every node field and token flag. Reentrant, so that a signal
        #: handler interrupting a holder in the same thread cannot deadlock.
        self.lock = threading.RLock()
        #: Guards tokens' waiters and callbacks; never held while taking `lock`.
        self.token_lock = threading.Lock()
        self.events = _logs.EventLog(base_logger)
        self.backoff = backoff
        #: How long a cancelled runnable may take to exit, unless its policy says.
        self.shutdown_timeout = shutdown_timeout
        #: Whether incarnations reuse parked threads, unless their policy says.
        self.reuse_threads = reuse_threads
        #: Set once the supervisor is asked to stop: nothing restarts after that.
        self.stopping = False
        #: When a runnable last started, exited or signalled (for `wait_settled`).
        self.last_activity = time.monotonic()
        # Set by the processor: where nodes go to be started, and exits reported.
        self.schedule: Callable[[tuple[Node, ...]], None] = _unwired
        #: Runs a function at a `time.monotonic` deadline on a thread of its own;
        #: returns a function that disarms it.
        self.call_at: Callable[[float, Callable[[], None]], Callable[[], None]] = _unwired
        #: Where exits go: the node, the group members it revived, the tokens it cancelled.
        self.exited: Callable[[Node, tuple[Node, ...], tuple[CancelToken, ...]], None] = _unwired
        #: Where just-cancelled tokens go, so that runnables slow to exit are seen.
        self.watch: Callable[[tuple[CancelToken, ...]], None] = _unwired
        #: Stops the supervisor when the root gives up, with the chain of failures.
        self.give_up: Callable[[list[tuple[str, str]]], None] = _unwired
        #: Under the lock: the thread of an abandoned incarnation has exited.
        self.abandoned_exited: Callable[[threading.Thread], None] = _unwired
        #: Under the lock: a node signalled HEALTHY or DONE.
        self.signalled: Callable[[Node], None] = _unwired
        #: Threads running ``on_cancel`` callbacks, for `Processor.join`; guarded
        #: by `token_lock`.
        self.helpers: list[threading.Thread] = []
        #: Tokens whose callbacks were taken to run and have not finished, under
        #: `token_lock`: the processor looks for stuck callbacks while any run, so
        #: a stopping tree ends only once none does.
        self.callbacks_running = 0
        #: Called when `callbacks_running` drops to 0 in a stopping tree.
        self.callbacks_idle: Callable[[], None] = _unwired

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # Firing cancelled tokens, outside the lock.

    def wake(self, tokens: Sequence[CancelToken]) -> Callbacks:
        """Release every waiter of these marked tokens, and take their callbacks
        for `Callbacks.run`, which the caller must do: waking never waits for a
        callback."""
        pending = []
        released = []
        with self.token_lock:
            for token in tokens:
                waiters, callbacks = token._take()
                if waiters:
                    released.extend(waiters)
                if callbacks:
                    pending.append((token, callbacks))
            self.callbacks_running += len(pending)
        for waiter in released:
            waiter.release()
        return Callbacks(self, pending)

    def callbacks_ran(self) -> None:
        """One token's callbacks, taken by `wake`, have run: a stopping tree may
        have waited for the last of them to end (see `callbacks_running`)."""
        with self.token_lock:
            # Never below 0, even should an interrupted `Callbacks.run` run some twice.
            self.callbacks_running = max(0, self.callbacks_running - 1)
            idle = not self.callbacks_running
        if idle and self.stopping:
            self.callbacks_idle()

    def fire(self, tokens: Sequence[CancelToken], *, raise_interrupts: bool = False) -> None:
        """Wake these marked tokens' waiters, then run their callbacks
        (see `Callbacks.run`)."""
        self.wake(tokens).run(raise_interrupts=raise_interrupts)

    def start_helper(self, name: str, target: Callable[..., object], *args: object) -> bool:
        """Run ``target(*args)`` on a helper thread that `Processor.join` waits for;
        ``False`` if no thread could be started."""
        thread = SupervisedThread(self, name, target, *args)
        try:
            thread.start()
        except Exception:  # "can't start new thread": the caller runs it itself
            return False
        with self.token_lock:
            self.helpers = alive(self.helpers)
            self.helpers.append(thread)
        return True

    @staticmethod
    def check_name(name: object, parent_dn: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidName(
                f"invalid child name {name!r} under {parent_dn}: "
                "use 1 to 64 characters of a-z, 0-9 and _"
            )


def _unwired(*_: object) -> NoReturn:
    raise RuntimeError("the tree is not wired to a processor")


class Callbacks:
    """The ``on_cancel`` callbacks of tokens just woken, by token."""

    __slots__ = ("_pending", "_tree")

    def __init__(
        self, tree: Tree, pending: list[tuple[CancelToken, list[Callable[[], object]]]]
    ) -> None:
        self._tree = tree
        self._pending = pending

    def run(self, *, raise_interrupts: bool = False) -> None:
        """Run the first token's callbacks in this thread and each other token's on
        a thread of its own, so that one node's blocking callback never holds up
        another's. ``raise_interrupts``: this is the caller's own thread, to which
        a callback's `KeyboardInterrupt` or `SystemExit` goes back."""
        pending, self._pending = self._pending, []
        try:
            while len(pending) > 1:
                self._run_elsewhere(*pending[-1])
                pending.pop()
        except BaseException:  # Ctrl-C in this loop: the rest still run, and none is lost
            for token, callbacks in pending:
                self._run_elsewhere(token, callbacks)
            raise
        if pending:
            token, callbacks = pending[0]
            token._run_callbacks(callbacks, raise_interrupts)

    def _run_elsewhere(self, token: CancelToken, callbacks: list[Callable[[], object]]) -> None:
        name = f"threadsup-cancel {token.dn}"
        if not self._tree.start_helper(name, token._run_callbacks, callbacks):
            token._run_callbacks(callbacks)  # no thread to be had: here, then


def alive(threads: list[threading.Thread]) -> list[threading.Thread]:
    """``threads`` less those that ended, once there are enough to be worth a look.

    An exited thread is seen alive only for the instant after it reports its
    exit, so the list stays short; pruning it only past a bound keeps a storm
    of exits from costing a scan each.
    """
    if len(threads) < 64:
        return threads
    return [thread for thread in threads if thread.is_alive()]


class Node:
    """A runnable's place in the tree, kept across its incarnations.

    ``busy`` counts the running threads of the node's subtree, itself included,
    so that "no thread of the subtree runs" is one comparison.
    """

    __slots__ = (
        "_logger",
        "anchor",
        "attached",
        "backlog",
        "busy",
        "children",
        "death_count",
        "deaths",
        "delays",
        "dn",
        "dynamic",
        "gave_up",
        "group",
        "healthy_since",
        "last_error",
        "name",
        "parent",
        "policy",
        "removed",
        "removing",
        "restart_due",
        "restarts",
        "runnable",
        "running",
        "spawned_deaths",
        "spawned_restarts",
        "started_at",
        "state",
        "stuck",
        "thread",
        "token",
        "tree",
    )

    def __init__(
        self,
        tree: Tree,
        name: str,
        runnable: Runnable,
        parent: Node | None,
        policy: ChildPolicy = DEFAULT_POLICY,
        *,
        dynamic: bool = False,
    ) -> None:
        self.tree = tree
        self.name = name
        self.runnable = runnable
        self.policy = policy
        #: Added by `CancelToken.spawn`: leaves the tree once it will not run again.
        self.dynamic = dynamic
        self.parent = parent
        self.dn: str = name if parent is None else f"{parent.dn}.{name}"
        #: The node whose metrics count this one's: itself, unless it or an
        #: ancestor is dynamic; then the nearest ancestor that has no dynamic
        #: ancestor, so that a child per connection is no series of its own.
        self.anchor: Node = self
        if parent is not None and (dynamic or parent.anchor is not parent):
            self.anchor = parent.anchor
        self.children: dict[str, Node] = {}
        #: The members of this node's group, itself included, shared by all of them.
        self.group: tuple[Node, ...] = (self,)
        self.state = State.NEW
        self.token = CancelToken(self)
        #: The thread of the current incarnation, from its start to its exit.
        self.thread: threading.Thread | None = None
        self.running = False
        #: Cancelled, running, and past its shutdown timeout.
        self.stuck = False
        self.busy = 0
        self.restarts = 0
        #: How many times this node has died (escalations from a child included).
        self.death_count = 0
        #: Restarts and deaths of the nodes this one is the `anchor` of, itself
        #: excepted; kept here, so they never decrease when such a node leaves.
        self.spawned_restarts = 0
        self.spawned_deaths = 0
        self.last_error: str | None = None
        #: The delays before consecutive DEAD restarts; None until the first one.
        self.delays: Iterator[float] | None = None
        #: False once an ancestor's restart discarded this node.
        self.attached = True
        #: When a pending backoff restart is due (monotonic), or None.
        self.restart_due: float | None = None
        #: When the current incarnation started, and since when it is HEALTHY (monotonic).
        self.started_at: float | None = None
        self.healthy_since: float | None = None
        #: When the node's recent failures happened, for its restart intensity.
        self.deaths: deque[float] = deque()
        #: Why the node gave up, once its failures exceeded its intensity.
        self.gave_up: str | None = None
        #: Asked to leave the tree (`Supervisor.remove`); set once it has.
        self.removing = False
        self.removed: threading.Event | None = None
        self._logger: logging.Logger | None = None
        #: The node's last records, made by `threadsup._events.Backlog` on the first.
        self.backlog: deque[Kept] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.dn} {self.state.name}>"

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            self._logger = self.tree.events.node_logger(self.dn)
        return self._logger

    @property
    def backoff(self) -> Backoff:
        return self.policy.backoff or self.tree.backoff

    @property
    def reuses_thread(self) -> bool:
        """Whether its incarnations run on parked threads, and park theirs."""
        reuse = self.policy.reuse_thread
        return self.tree.reuse_threads if reuse is None else reuse

    @property
    def ended_for_good(self) -> bool:
        """Exited, and nothing but an ancestor's restart runs it again."""
        return self.state is State.DONE or (
            self.state in _RESTARTABLE
            and (self.policy.restart == "temporary" or self.gave_up is not None)
        )

    def walk(self) -> Iterator[Node]:
        """This node and its descendants, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    # Called by runnables, through their token.

    def add_group(
        self,
        token: CancelToken,
        runnables: Mapping[str, Runnable],
        policy: ChildPolicy,
        *,
        dynamic: bool = False,
    ) -> None:
        """Create children in one group and schedule them; all or nothing.

        A static group may be added only while NEW; a dynamic child (`spawn`)
        whenever the token is live.
        """
        if not isinstance(runnables, Mapping):
            raise TypeError(
                f"run_group() of {self.dn} takes a mapping of names to runnables, "
                f"not {type(runnables).__name__}"
            )
        members = list(runnables.items())
        for name, runnable in members:
            self.tree.check_name(name, self.dn)
            require_runnable(runnable, f"child {name!r} of {self.dn}")
        if not members:
            return
        # Built before taking the lock, which the processor and the new threads'
        # signals wait for: a node is nobody else's until it joins `children`.
        group = tuple(
            Node(self.tree, name, runnable, self, policy, dynamic=dynamic)
            for name, runnable in members
        )
        with self.tree.lock:
            if token.cancelled:
                raise Cancelled(self.dn)
            if self.state is not State.NEW and not dynamic:
                raise NodeNotNew(
                    f"{self.dn} is {self.state.name}: start children before signalling HEALTHY"
                )
            for name, _ in members:
                if name in self.children:
                    raise DuplicateName(f"{self.dn} already has a child named {name!r}")
            for child in group:
                child.group = group
                self.children[child.name] = child
            self.tree.schedule(group)  # one request for the group, not one a member

    def apply_signal(self, token: CancelToken, signal: Signal) -> None:
        with self.tree.lock:
            if token.cancelled:
                raise Cancelled(self.dn)
            expected = State.NEW if signal is Signal.HEALTHY else State.HEALTHY
            if self.state is not expected:
                raise InvalidSignal(
                    f"{self.dn} signalled {signal.name} while {self.state.name}: "
                    f"{signal.name} is allowed only from {expected.name}"
                )
            self.tree.signalled(self)
            if signal is Signal.HEALTHY:
                self.state = State.HEALTHY
                self.healthy_since = time.monotonic()
                if not self.backoff.stable:
                    self.delays = None
            else:
                self.state = State.DONE
                self.delays = None
            self.tree.touch()
        if signal is Signal.HEALTHY:
            self.tree.events.emit(
                logging.DEBUG, _logs.HEALTHY, self.dn, "%s is healthy", self.dn, node=self
            )
        else:
            self.tree.events.emit(
                logging.INFO, _logs.DONE, self.dn, "%s is done", self.dn, node=self
            )

    # The incarnation's thread.

    def run_incarnation(self, token: CancelToken) -> None:
        """The body of every runnable thread: run, then decide and report the exit."""
        failure: BaseException | None = None
        # Only this policy interrupts: for the others, no window to open or close,
        # and no lock taken to close it.
        interruptible = self.policy.on_stuck == "interrupt"
        try:
            try:
                # Handed over here, before anything the runnable logs itself (and
                # after the records queued before it, its restart's among them).
                # Costs nothing with DEBUG off; else a blocked handler holds the
                # runnable back as it would the runnable's first log line.
                self.tree.events.emit(
                    logging.DEBUG,
                    _logs.STARTED,
                    self.dn,
                    "%s started",
                    self.dn,
                    delivery="now",
                    node=self,
                )
                token.interruptible = interruptible
                self.runnable(token)
            finally:
                if interruptible:
                    self._end_interruptible(token)
        except BaseException as exc:  # every exit is the supervisor's to judge
            failure = exc
        exit = self.decide_exit(token, failure)
        if exit is None:
            self.tree.events.emit(
                logging.WARNING,
                _logs.ABANDONED_EXITED,
                self.dn,
                "the abandoned thread of %s has exited at last",
                self.dn,
                node=self,
            )
        else:
            self.report_exit(token, failure, exit)

    def _end_interruptible(self, token: CancelToken) -> None:
        """Close the window in which ``on_stuck="interrupt"`` may raise in this thread.

        An interrupt is only sent under the lock while the flag is set, so once
        it is cleared none can follow; one sent just before is raised at the
        first Python call after it, which `_checkpoint` provides and this loop
        absorbs.
        """
        while True:
            try:
                with self.tree.lock:
                    token.interruptible = False
                _checkpoint()
                return
            except Cancelled:
                continue

    def decide_exit(self, token: CancelToken, failure: BaseException | None) -> Exit | None:
        """Judge an exit the moment it happens, under the lock; ``None`` for an
        abandoned incarnation, which no longer has a say in the tree.

        Deciding here rather than on the processor keeps a death that races a
        sibling's cancellation from being misfiled as CANCELLED.
        """
        error = describe(failure)  # user code (``__str__``): never under the lock
        with self.tree.lock:
            token.exited = True
            if token.abandoned:
                self.tree.abandoned_exited(threading.current_thread())
                return None
            self.tree.touch()
            if token.cancelled:
                if self.state is State.DEAD:  # a child gave up and escalated here
                    return Exit(State.DEAD, [], (), reported=True)
                self.state = State.CANCELLED
                return Exit(State.CANCELLED, [], ())
            if failure is None and (self.state is State.DONE or self.policy.restart != "permanent"):
                self.state = State.DONE
                return Exit(State.DONE, [], ())
            self.state = State.DEAD
            self.last_error = error
            gave_up: list[GiveUp] = []
            cancelled, revived = self._die(time.monotonic(), [], gave_up)
            return Exit(State.DEAD, cancelled, revived, gave_up=tuple(gave_up))

    def report_exit(self, token: CancelToken, failure: BaseException | None, exit: Exit) -> None:
        """Log an exit, wake the tokens it cancelled, tell the processor, and only
        then run their callbacks, so that none of them can delay the report.

        The exit's records (the death's, then the give-ups it caused) are
        delivered once the processor has acted on the exit (it flushes the log
        then), so that delivering them never delays the restart.
        """
        callbacks = Callbacks(self.tree, [])
        try:
            events = self.tree.events
            if exit.state is State.DEAD and not exit.reported:
                events.emit(
                    logging.ERROR,
                    _logs.DIED,
                    self.dn,
                    "%s died: %s",
                    self.dn,
                    self.last_error,
                    exc_info=failure,
                    logger=self.logger,
                    delivery="after_flush",
                    node=self,
                    error=self.last_error,
                )
                for give_up in exit.gave_up:
                    give_up.emit(events)
            elif exit.state is not State.DONE:
                events.emit(
                    logging.DEBUG,
                    _logs.CANCELLED,
                    self.dn,
                    "%s cancelled",
                    self.dn,
                    exc_info=failure,
                    delivery="after_flush",
                    node=self,
                )
            else:
                events.emit(
                    logging.DEBUG,
                    _logs.EXITED,
                    self.dn,
                    "%s returned",
                    self.dn,
                    delivery="after_flush",
                    node=self,
                )
            callbacks = self.tree.wake(exit.cancelled)
        finally:
            # One request for the exit and the cancellations it caused.
            self.tree.exited(self, exit.revived, tuple(exit.cancelled))
        callbacks.run()

    def _die(
        self, now: float, failures: list[tuple[str, str]], gave_up: list[GiveUp]
    ) -> tuple[list[CancelToken], tuple[Node, ...]]:
        """What a failure does, once ``state`` is DEAD and ``last_error`` says why.

        A temporary node only takes its subtree down. Another counts the failure
        against its intensity: within it, its subtree and group are cancelled
        for a restart; past it, it gives up and its parent dies in its place,
        up to the root, whose giving up stops the supervisor. The give-ups are
        added to ``gave_up``, in order, to be logged once the lock is released.
        """
        failures.append((self.dn, self.last_error or ""))
        self.death_count += 1
        if self.anchor is not self:
            self.anchor.spawned_deaths += 1
        if self.policy.restart == "temporary":
            return cancel_subtree(self), ()
        if self.healthy_since is not None and now - self.healthy_since >= self.backoff.stable:
            self.delays = None
        if not self._within_intensity(now):
            return self._give_up(now, failures, gave_up)
        return self._cancel_for_death()

    def _within_intensity(self, now: float) -> bool:
        limit = self.policy.max_restarts
        if limit is None:
            return True
        self.deaths.append(now)
        while self.deaths and self.deaths[0] <= now - self.policy.within:
            self.deaths.popleft()
        return len(self.deaths) <= limit

    def _give_up(
        self, now: float, failures: list[tuple[str, str]], gave_up: list[GiveUp]
    ) -> tuple[list[CancelToken], tuple[Node, ...]]:
        self.gave_up = (
            f"{len(self.deaths)} failure{'s' if len(self.deaths) != 1 else ''} "
            f"within {self.policy.within:g} s "
            f"(max_restarts={self.policy.max_restarts})"
        )
        gave_up.append(
            GiveUp(self, self.gave_up, self.parent.dn if self.parent else "the supervisor")
        )
        cancelled = cancel_subtree(self)
        parent = self.parent
        if parent is None:
            self.tree.give_up(failures)
            return cancelled, ()
        parent.state = State.DEAD
        parent.last_error = describe_line(f"child {self.name} gave up: {self.last_error}")
        more, revived = parent._die(now, failures, gave_up)
        return cancelled + more, revived

    def _cancel_for_death(self) -> tuple[list[CancelToken], tuple[Node, ...]]:
        """Cancel this node's subtree and its group: the rule for a DEAD node.

        Group members that were DONE become CANCELLED, so that they restart with
        the rest: those whose exit the processor has already seen are handed to
        it as revived; the others restart when their exit arrives. A member not
        started yet finds its token cancelled and restarts at once.
        """
        cancelled = cancel_subtree(self)
        revived = []
        for member in self.group:
            if member is self:
                continue
            if member.state is State.DONE:
                member.state = State.CANCELLED
                if not member.running:
                    revived.append(member)
            cancelled.extend(cancel_subtree(member))
        return cancelled, tuple(revived)

    # Called by the processor, under the lock.

    def next_delay(self) -> float:
        if self.delays is None:
            self.delays = self.backoff.delays()
        return next(self.delays)

    def reset(self) -> None:
        """Prepare a new incarnation: discard the children, give a fresh token."""
        for child in self.children.values():
            for discarded in child.walk():
                discarded.attached = False
                discarded.backlog = None  # a token outliving its node keeps the node, not this
        self.children = {}
        self.state = State.NEW
        self.token = CancelToken(self)
        self.restart_due = None
        self.healthy_since = None
        self.restarts += 1
        if self.anchor is not self:
            self.anchor.spawned_restarts += 1

    def moment(self) -> _Moment:
        """What may change of this node, copied under the lock for `status`."""
        return _Moment(
            self.state,
            self.running,
            self.thread,
            self.restarts,
            self.last_error,
            self.token.cancelled_at if self.stuck else None,
            self.started_at,
            self.healthy_since,
            self.restart_due,
            self.gave_up,
        )

    def status(
        self, moment: _Moment, now: float, wall: float, abandoned: int, loop_ended: bool
    ) -> NodeStatus:
        """The node as `moment` saw it, built without the lock (the rest of what
        it reads never changes); ``now`` is `time.monotonic`, ``wall`` the same
        moment's `time.time`."""

        def wall_time(when: float | None) -> float | None:
            return None if when is None else wall - (now - when)

        stuck_since = moment.stuck_since
        thread = moment.thread
        return NodeStatus(
            self.dn,
            moment.state,
            # Once the loop has ended (failed, say), no exit is heard of any more:
            # the thread itself says whether it still runs.
            moment.running and (not loop_ended or thread is None or thread.is_alive()),
            moment.restarts,
            moment.last_error,
            stuck_for=None if stuck_since is None else now - stuck_since,
            abandoned=abandoned,
            restart=self.policy.restart,
            group=tuple(member.dn for member in self.group),
            started_at=wall_time(moment.started_at),
            healthy_since=wall_time(moment.healthy_since),
            next_restart_at=wall_time(moment.restart_due),
            gave_up=moment.gave_up,
            dynamic=self.dynamic,
        )


class _Moment(NamedTuple):
    """The changing part of a `NodeStatus`, as `Node.moment` copies it."""

    state: State
    running: bool
    thread: threading.Thread | None
    restarts: int
    last_error: str | None
    #: When the token of a stuck node was cancelled (`time.monotonic`).
    stuck_since: float | None
    started_at: float | None
    healthy_since: float | None
    restart_due: float | None
    gave_up: str | None


class GiveUp(NamedTuple):
    """A node giving up, decided under the lock, logged after the death that caused it."""

    node: Node
    #: Why, as in `NodeStatus.gave_up`.
    reason: str
    #: The DN of the parent that dies in its place, or "the supervisor".
    escalated_to: str

    def emit(self, events: _logs.EventLog) -> None:
        """Log it, for delivery with the exit's records."""
        node = self.node
        events.emit(
            logging.ERROR,
            _logs.GAVE_UP,
            node.dn,
            "%s gave up after %s; escalating to %s",
            node.dn,
            self.reason,
            self.escalated_to,
            delivery="after_flush",
            node=node,
            error=node.last_error,
        )


@dataclass(frozen=True)
class Exit:
    """What `Node.decide_exit` decided, for `Node.report_exit` to carry out."""

    state: State
    #: Tokens marked cancelled by the decision: fire them outside the lock.
    cancelled: list[CancelToken]
    #: Group members moved from DONE to CANCELLED, for the processor to restart.
    revived: tuple[Node, ...]
    #: The death was reported when a child's giving up escalated to this node.
    reported: bool = False
    #: The give-ups the death caused, from the dying node up: log them after it.
    gave_up: tuple[GiveUp, ...] = ()


def cancel_subtree(node: Node) -> list[CancelToken]:
    """Mark the tokens of ``node`` and its descendants; return those newly marked,
    for `fire` once the lock is released.

    A token already cancelled has cancelled descendants (no child starts under
    a cancelled token), so the walk stops there.
    """
    marked = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.token._mark():
            marked.append(current.token)
            stack.extend(current.children.values())
    return marked


def fire(tree: Tree, tokens: list[CancelToken]) -> None:
    """Outside the lock, in the caller's own thread: have the processor watch the
    runnables of what `cancel_subtree` marked for being slow to exit, and wake
    them (`Tree.fire`); a callback's `KeyboardInterrupt` reaches the caller."""
    if tokens:
        tree.watch(tuple(tokens))
    tree.fire(tokens, raise_interrupts=True)


def drop(node: Node) -> None:
    """Take a dynamic child out of the tree for good, under the lock; each node
    leaving (its subtree's too) logs ``removed``, and its backlog goes."""
    parent = node.parent
    if parent is not None and parent.children.get(node.name) is node:
        del parent.children[node.name]
    for gone in node.walk():
        gone.attached = False
        node.tree.events.emit(
            logging.DEBUG, _logs.REMOVED, gone.dn, "%s left the tree", gone.dn, node=gone
        )
        gone.backlog = None  # a token outliving its node keeps the node, not this
    if node.removed is not None:
        node.removed.set()


# Readiness and the one-line summary: the rules `Supervisor.ready` and
# `Supervisor.summary` apply, and through them the systemd notifier.

#: The states in which a node counts as up for `ready`.
_UP = (State.HEALTHY, State.DONE)
#: The order of the states in a `summary`: the nodes that are up first.
_SUMMARY_ORDER = (State.HEALTHY, State.DONE, State.NEW, State.DEAD, State.CANCELLED)
#: The states whose nodes a summary names (the stuck ones too): those to look at.
_NAMED = (State.NEW, State.DEAD)
#: How many DNs a summary names per state.
SUMMARY_NAMES = 3
#: The longest summary, in characters.
SUMMARY_LENGTH = 200


def ready(root: Node) -> bool:
    """Under the lock: whether the root and every permanent node (the root is
    one) are HEALTHY or DONE: see `unready`."""
    return next(unready(root), None) is None


def unready(root: Node) -> Iterator[Node]:
    """Under the lock: the nodes that keep the tree from being ready, parents
    before children: the root and the permanent nodes not HEALTHY or DONE.

    Transient and temporary nodes do not count, and neither does the subtree of
    one that will not run again (a temporary node that died, say): its children
    will not come back either.
    """
    stack = [root]
    while stack:
        node = stack.pop()
        if node.state not in _UP:
            if node.policy.restart == "permanent":
                yield node
            elif node.ended_for_good:
                continue
        stack.extend(reversed(node.children.values()))


def summary(root: Node) -> str:
    """Under the lock: the tree on one short line, such as
    ``12 nodes: 11 HEALTHY, 1 DEAD (root.db)``, naming the first few nodes
    that are NEW, DEAD or stuck (which count in their state too)."""
    counts = dict.fromkeys(_SUMMARY_ORDER, 0)
    named: dict[State, list[str]] = {state: [] for state in _NAMED}
    stuck: list[str] = []
    stuck_count = 0
    for node in root.walk():
        state = node.state
        counts[state] += 1
        dns = named.get(state)
        if dns is not None and len(dns) < SUMMARY_NAMES:
            dns.append(node.dn)
        if node.stuck:
            stuck_count += 1
            if len(stuck) < SUMMARY_NAMES:
                stuck.append(node.dn)
    parts = [
        _counted(count, state.name, named.get(state, []))
        for state, count in counts.items()
        if count
    ]
    if stuck_count:
        parts.append(_counted(stuck_count, "stuck", stuck))
    total = sum(counts.values())
    return describe_line(
        f"{total} node{'' if total == 1 else 's'}: {', '.join(parts)}", SUMMARY_LENGTH
    )


def _counted(count: int, label: str, dns: list[str]) -> str:
    """``3 NEW (root.a, root.b, +1 more)``: a count, and the first DNs counted."""
    if not dns:
        return f"{count} {label}"
    more = f", +{count - len(dns)} more" if count > len(dns) else ""
    return f"{count} {label} ({', '.join(dns)}{more})"


# The census: what `threadsup.prometheus` reports, read under the lock in one
# walk that copies only what the metrics need.


class Spawned:
    """The nodes one node is the `Node.anchor` of, itself excepted: how many
    are in each state, and how many are stuck."""

    __slots__ = ("states", "stuck")

    def __init__(self) -> None:
        self.states = dict.fromkeys(State, 0)
        self.stuck = 0


class Figures(NamedTuple):
    """One node that is its own `Node.anchor`, as `census` read it; times are
    `time.monotonic`."""

    dn: str
    state: State
    restarts: int
    deaths: int
    gave_up: bool
    stuck: bool
    healthy_since: float | None
    restart_due: float | None
    spawned_restarts: int
    spawned_deaths: int
    #: ``None`` while it anchors no other node.
    spawned: Spawned | None


def census(root: Node) -> list[Figures]:
    """Under the lock: the figures of every node that is its own anchor,
    parents before children, with the nodes each anchors counted in it."""
    anchors = []
    spawned: dict[Node, Spawned] = {}
    for node in root.walk():
        anchor = node.anchor
        if anchor is node:
            anchors.append(node)
            continue
        counts = spawned.get(anchor)
        if counts is None:
            counts = spawned[anchor] = Spawned()
        counts.states[node.state] += 1
        counts.stuck += node.stuck
    return [
        Figures(
            node.dn,
            node.state,
            node.restarts,
            node.death_count,
            node.gave_up is not None,
            node.stuck,
            node.healthy_since,
            node.restart_due,
            node.spawned_restarts,
            node.spawned_deaths,
            spawned.get(node),
        )
        for node in anchors
    ]


def _checkpoint() -> None:
    """A Python-level call, at which a pending asynchronous exception is raised."""


def describe(failure: BaseException | None) -> str:
    """One line on a failure, for `NodeStatus.last_error`: never fails, however
    broken the exception (its type's name when its ``__str__`` raises)."""
    if failure is None:
        return "returned without signalling DONE"
    name = type(failure).__name__
    try:
        text = str(failure)
    except BaseException:  # whatever a runnable raises is a death, described somehow
        return name
    return describe_line(f"{name}: {text}" if text else name)


def describe_line(text: str, limit: int = 300) -> str:
    """``text`` on one line of at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else f"{line[: limit - 3]}..."
