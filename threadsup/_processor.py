"""The processor: the one thread that starts runnables and decides restarts.

It drains a queue of requests (schedule a node, a runnable exited, stop, watch
cancelled runnables, arm a timer, a settle waiter arrived) and changes the tree
under the tree lock. It is event driven: with no request and nothing due it
blocks, using no CPU. Everything timed (backoff restarts, stuck-runnable
checks, deadline timers) waits in one heap whose head is the queue's ``get``
timeout. An exit costs work along the exiting node's path to the root, never a
walk of the whole tree.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import heapq
import itertools
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NamedTuple, Union

from threadsup import _logs
from threadsup._errors import Cancelled
from threadsup._node import (
    Node,
    State,
    SupervisedThread,
    Tree,
    alive,
    cancel_subtree,
    drop,
    fire,
)
from threadsup._park import Park, Worker
from threadsup._seconds import deadline_after, turn, wait_in_turns
from threadsup._token import CancelToken

#: How long nothing may start, exit or signal before the tree counts as settled.
SETTLE_SECONDS = 0.05
#: How often a settle waiter looks again while log records wait for delivery.
SETTLE_LOG_POLL = 0.005
#: Stuck warnings repeat at doubling intervals, from at least this...
STUCK_REPEAT_MIN = 1.0
#: ...up to this.
STUCK_REPEAT_MAX = 300.0
#: A node still NEW this long after it started gets one WARNING: it may never
#: signal HEALTHY.
STILL_NEW_SECONDS = 60.0
#: The still-NEW check looks at most this often, however many nodes start.
STILL_NEW_GRANULARITY = 1.0

_SCHEDULE, _EXITED, _STOP, _WAKE, _WATCH, _TIMER, _CHECK = range(7)


class _Timer:
    """A function to run at ``due`` on a thread of its own, unless disarmed."""

    __slots__ = ("armed", "due", "function")

    def __init__(self, due: float, function: Callable[[], None]) -> None:
        self.due = due
        self.function = function
        self.armed = True

    def disarm(self) -> None:
        self.armed = False


class _Periodic(_Timer):
    """A function to run on the loop itself every ``interval`` seconds, unless disarmed."""

    __slots__ = ("failed", "interval")

    def __init__(self, due: float, function: Callable[[], None], interval: float) -> None:
        super().__init__(due, function)
        self.interval = interval
        #: Whether it has raised once: that was logged, and later failures are not.
        self.failed = False

    def run(self, events: _logs.EventLog, dn: str) -> None:
        """Call the function, which must never raise into the loop."""
        if not self.armed:
            return
        try:
            self.function()
        except BaseException as exc:  # a periodic check's bug must not stop the tree
            if not self.failed:
                self.failed = True
                events.emit(
                    logging.ERROR,
                    _logs.PERIODIC_FAILED,
                    dn,
                    "a periodic call of the processor (%r) failed; it goes on being "
                    "called, and its later failures are not logged",
                    self.function,
                    exc_info=exc,
                    error=exc,
                )


class _StuckCheck:
    """Looks at a cancelled incarnation again once it had time to exit, and at
    its ``on_cancel`` callbacks once they had time to return."""

    __slots__ = ("interval", "node", "token")

    def __init__(self, node: Node, token: CancelToken, interval: float) -> None:
        self.node = node
        self.token = token
        self.interval = interval

    def runnable_running(self) -> bool:
        """Whether the incarnation still runs: an exit still queued is no stuck thread."""
        return self.node.token is self.token and self.node.running and not self.token.exited

    def current(self) -> bool:
        return (
            self.runnable_running()
            or self.token._unfired()
            or self.token.callbacks_thread is not None
        )


class _StillNew:
    """The heap's reminder to look for nodes that stayed NEW too long."""

    __slots__ = ()


_STILL_NEW = _StillNew()


class _StuckReport(NamedTuple):
    """The WARNING on a stuck runnable, or on ``on_cancel`` callbacks that have
    not returned (``on_stuck`` is then ``None``), written once the lock is released."""

    node: Node
    thread: threading.Thread
    cancelled_for: float
    on_stuck: str | None

    def emit(self, events: _logs.EventLog, frames: dict[int, FrameType]) -> None:
        node = self.node
        if self.on_stuck is None:
            events.emit(
                logging.WARNING,
                _logs.CALLBACK_STUCK,
                node.dn,
                "the on_cancel callbacks of %s have not returned %.1f s after it was "
                "cancelled (callbacks should not block; other nodes' callbacks run "
                "meanwhile); thread %s is at:\n%s",
                node.dn,
                self.cancelled_for,
                self.thread.name,
                stack_of(self.thread, frames),
                node=node,
                cancelled_for=self.cancelled_for,
            )
            return
        events.emit(
            logging.WARNING,
            _logs.STUCK,
            node.dn,
            "%s has not stopped %.1f s after it was cancelled (on_stuck=%r: %s); "
            "its thread is at:\n%s",
            node.dn,
            self.cancelled_for,
            self.on_stuck,
            {
                "wait": "its subtree restarts once it exits",
                "abandon": "abandoned, its subtree restarts without it",
                "interrupt": "Cancelled raised in its thread",
            }[self.on_stuck],
            stack_of(self.thread, frames),
            node=node,
            cancelled_for=self.cancelled_for,
            on_stuck=self.on_stuck,
        )


class _Request(NamedTuple):
    kind: int
    node: Node | None = None
    #: SCHEDULE: the nodes to start; EXITED: the revived group members.
    nodes: tuple[Node, ...] = ()
    #: EXITED and WATCH: tokens just cancelled, whose runnables must exit in time.
    tokens: tuple[CancelToken, ...] = ()
    timer: _Timer | None = None


#: A heap entry: (due, order, what). A Node stands for its backoff restart.
_Due = tuple[float, int, Union[Node, _Timer, _StuckCheck, _StillNew]]
_Launch = Sequence["tuple[Node, CancelToken]"]


class Processor:
    """Runs the supervision loop of one tree on a thread of its own."""

    def __init__(self, tree: Tree, root: Node, park: Park) -> None:
        self._tree = tree
        self._root = root
        #: Where incarnations that reuse threads are launched.
        self._park = park
        # SimpleQueue.put is reentrant: `stop` may be posted from a signal handler.
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._due: list[_Due] = []
        self._order = itertools.count()
        #: Heap size at which entries that no longer matter are swept out.
        self._sweep_at = 1024
        #: Events of `wait_settled` callers; guarded by the tree lock.
        self._settle_waiters: set[threading.Event] = set()
        #: Runnable threads that reported their exit, possibly still finishing.
        self._lingering: list[threading.Thread] = []
        #: Threads of stuck runnables restarted without them and still running,
        #: by thread: their DN. An abandoned thread leaves it when it exits.
        self._abandoned: dict[threading.Thread, str] = {}
        #: Nodes started and still NEW, with when they started (monotonic), oldest
        #: first, until they signal, exit or get their one still-NEW warning.
        self._new_since: dict[Node, float] = {}
        #: Whether the heap holds the next still-NEW look.
        self._still_new_armed = False
        #: Nodes whose `Supervisor.restart` has not happened yet: their next
        #: restart skips the backoff, and is pending work for `wait_settled`.
        self._restarts_asked: set[Node] = set()
        self._looping = False
        self._finished = False
        self._stop_begun = False
        #: When a stop was first asked for (`time.monotonic`): the exit hook waits
        #: no longer than ``shutdown_timeout`` after it.
        self.stop_asked_at: float | None = None
        self._pid = os.getpid()
        self.failure: BaseException | None = None
        #: The chain of failures that made the root give up, if it did.
        self.gave_up: list[tuple[str, str]] | None = None
        #: Set when the loop has ended: the tree stopped or finished.
        self.ended = threading.Event()
        #: Told when a stop begins and when the loop ends; see `on_phase`.
        self._phase_listeners: list[Callable[[], None]] = []
        self.thread = SupervisedThread(tree, "threadsup-processor", self._loop)
        tree.schedule = self.schedule
        tree.exited = self.exited
        tree.watch = self.watch
        tree.call_at = self.call_at
        tree.give_up = self.give_up
        tree.abandoned_exited = self._abandoned_exited
        tree.callbacks_idle = functools.partial(self._requests.put, _Request(_WAKE))
        tree.signalled = self._signalled

    # Any thread.

    def start(self) -> None:
        """Start the log dispatcher and the loop; see `abandon_start` if this fails."""
        self._pid = os.getpid()
        self._tree.events.start()
        self.thread.start()

    def abandon_start(self) -> None:
        """After a `start` that failed or was interrupted (Ctrl-C), wherever it
        stopped: a loop already under way stops the tree as usual; one that has
        not got going never will, and nothing is left running."""
        with self._tree.lock:
            self._tree.stopping = True
            looping = self._looping
            if not looping:
                self._finished = True  # a loop that starts after all ends at once
        if looping:
            self.stop()
        else:
            self._tree.events.close()
            self.ended.set()

    def schedule(self, nodes: tuple[Node, ...]) -> None:
        self._requests.put(_Request(_SCHEDULE, nodes=nodes))

    def exited(
        self, node: Node, revived: tuple[Node, ...], cancelled: tuple[CancelToken, ...]
    ) -> None:
        self._requests.put(_Request(_EXITED, node, revived, cancelled))

    def watch(self, tokens: tuple[CancelToken, ...]) -> None:
        """Check the runnables of these just-cancelled tokens once their shutdown
        timeout passes."""
        self._requests.put(_Request(_WATCH, tokens=tokens))

    def call_at(self, due: float, function: Callable[[], None]) -> Callable[[], None]:
        """Run ``function`` at ``due`` on a thread of its own; return its disarm."""
        timer = _Timer(due, function)
        self._requests.put(_Request(_TIMER, timer=timer))
        return timer.disarm

    def every(self, interval: float, function: Callable[[], None]) -> Callable[[], None]:
        """Run ``function`` on the loop thread every ``interval`` seconds, from
        ``interval`` from now until the loop ends; return its disarm.

        Being the loop's, the calls stop when the loop is held up (say, waiting
        for the tree lock): what proves it alive. ``function`` must be quick and
        must not block, since the loop waits for it. It is never called under
        the tree lock, and it never keeps the tree from settling. What it
        raises is logged (the first time) and goes no further.
        """
        periodic = _Periodic(time.monotonic() + interval, function, interval)
        self._requests.put(_Request(_TIMER, timer=periodic))
        return periodic.disarm

    def stop(self) -> None:
        """Ask for the tree to stop. Takes no lock: safe from a signal handler."""
        if self.stop_asked_at is None:
            self.stop_asked_at = time.monotonic()
        self._requests.put(_Request(_STOP))

    def on_phase(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when a stop begins and when the loop ends, from the
        processor thread, maybe under the tree lock: it must be quick and never
        raise (a `queue.SimpleQueue.put`). Before `start`."""
        self._phase_listeners.append(listener)

    def stop_from_tree(self) -> None:
        """Stop, called by a thread of the tree: the tree is cancelled before this
        returns, so the caller's own exit right after counts as a cancelled one."""
        with self._tree.lock:
            self._tree.stopping = True
            tokens = cancel_subtree(self._root)
        self.stop()
        fire(self._tree, tokens)

    def give_up(self, failures: list[tuple[str, str]]) -> None:
        """The root gave up: stop the tree, and let `wait` say why."""
        if self.gave_up is None:
            self.gave_up = list(failures)
        self.stop()

    def ask_restart(self, node: Node) -> None:
        """Under the lock: `Supervisor.restart` asked for ``node`` to restart;
        until it has, the tree is not settled."""
        self._restarts_asked.add(node)

    def check(self, node: Node) -> None:
        """Restart ``node`` if it is ready to be (after a `Supervisor.restart`)."""
        self._requests.put(_Request(_CHECK, node))

    def add_settle_waiter(self, event: threading.Event) -> None:
        with self._tree.lock:
            if self._finished:
                event.set()
                return
            self._settle_waiters.add(event)
        self._requests.put(_Request(_WAKE))

    def remove_settle_waiter(self, event: threading.Event) -> None:
        with self._tree.lock:
            self._settle_waiters.discard(event)

    @property
    def shutdown_timeout(self) -> float:
        return self._tree.shutdown_timeout

    def join(self, timeout: float | None) -> bool:
        """Wait until the loop and every thread the supervisor started have ended.

        ``timeout`` is a checked number of seconds; ``None`` or infinity waits for ever.
        """
        if self.forked():
            return True
        until = deadline_after(timeout)
        if not wait_in_turns(self.ended.wait, until):
            return False
        with self._tree.lock:
            threads = [self.thread, *self._lingering, *self._abandoned]
        threads.extend(self._park.threads())  # closed with the loop: none parks any more
        with self._tree.token_lock:
            threads.extend(self._tree.helpers)
        for thread in threads:
            if thread.ident is None:  # never started
                continue
            if not wait_in_turns(functools.partial(_joined, thread), until):
                return False
        return wait_in_turns(self._tree.events.join, until)

    def forked(self) -> bool:
        """Whether this is a forked child of the process the tree runs in: it has
        none of the tree's threads, so there is nothing to stop or wait for."""
        return os.getpid() != self._pid

    def abandoned(self) -> Counter[str]:
        """How many abandoned threads still run, by DN; under the lock."""
        return Counter(self._abandoned.values())

    def runnable_threads(self) -> list[tuple[str, threading.Thread]]:
        """Every runnable thread still running, abandoned ones too, with its DN;
        under the lock."""
        threads = [(node.dn, node.thread) for node in self._root.walk() if node.thread is not None]
        threads.extend((dn, thread) for thread, dn in self._abandoned.items())
        return [(dn, thread) for dn, thread in threads if thread.is_alive()]

    def blocked_callbacks(self) -> list[str]:
        """The names of the threads still running ``on_cancel`` callbacks."""
        with self._tree.token_lock:
            helpers = list(self._tree.helpers)
        return [thread.name for thread in helpers if thread.is_alive()]

    # The processor thread.

    def _loop(self) -> None:
        with self._tree.lock:
            if self._finished:  # `start` was abandoned before the loop got going
                return
            self._looping = True
        try:
            while not self._finished:
                try:
                    request = self._requests.get(timeout=self._timeout())
                except queue.Empty:
                    pass
                else:
                    self._handle(request)
                self._run_due()
                if self._settle_waiters:
                    self._release_settled()
        except BaseException as exc:  # a bug in threadsup: say so, then stop the tree
            self.failure = exc
            self._tree.events.emit(
                logging.CRITICAL,
                _logs.PROCESSOR_FAILED,
                self._root.dn,
                "the threadsup processor failed; cancelling the tree",
                exc_info=exc,
                error=exc,
            )
            with self._tree.lock:
                self._tree.stopping = True
                # No loop is left to hear of their exits: `join` waits for the threads.
                for node in self._root.walk():
                    if node.thread is not None:
                        self._lingering.append(node.thread)
                    elif node.running:  # prepared, never launched
                        node.running = False
        finally:
            with self._tree.lock:
                self._finished = True
                for event in self._settle_waiters:
                    event.set()
                self._settle_waiters.clear()
                # However the tree ended (stopped, finished, failed), no token of
                # it stays live: a helper thread still waiting on one must wake.
                tokens = self._cancel_everything()
            if tokens:  # on a helper, which `join` waits for: a callback may block
                self._run_elsewhere([functools.partial(self._tree.fire, tokens)])
            self._park.close()
            self._tree.events.close()
            self.ended.set()
            self._tell_phase()

    def _handle(self, request: _Request) -> None:
        kind, node = request.kind, request.node
        launch: _Launch = ()
        cancelled: list[CancelToken] = []
        with self._tree.lock:
            if kind == _SCHEDULE:
                launch = [started for node in request.nodes for started in self._admit(node)]
            elif kind == _EXITED:
                assert node is not None
                self._watch(request.tokens)
                launch = self._on_exit(node, request.nodes)
            elif kind == _STOP:
                cancelled = self._begin_stop()
            elif kind == _WATCH:
                self._watch(request.tokens)
            elif kind == _TIMER:
                assert request.timer is not None
                self._push(request.timer.due, request.timer)
            elif kind == _CHECK:
                assert node is not None
                launch = self._restart_if_ready(node)
            elif kind == _WAKE and not self._root.busy:
                self._finish_if_over()  # the last callbacks may have ended
        if cancelled:  # not `fire()`: `_begin_stop` has already watched them
            self._run_elsewhere([functools.partial(self._tree.fire, cancelled)])
        self._launch(launch)
        if kind == _EXITED:
            self._tree.events.flush()  # the exit's record, held back until now

    def _push(self, due: float, what: Node | _Timer | _StuckCheck | _StillNew) -> None:
        heapq.heappush(self._due, (due, next(self._order), what))
        if len(self._due) >= self._sweep_at:
            self._due = [entry for entry in self._due if self._matters(entry)]
            heapq.heapify(self._due)
            self._sweep_at = max(1024, 2 * len(self._due))

    def _admit(self, node: Node) -> _Launch:
        """A scheduled node: start it unless its subtree was cancelled meanwhile."""
        if not node.attached or node.running or node.state is not State.NEW:
            return ()
        if node.token.cancelled:
            node.state = State.CANCELLED
            return self._restart_if_ready(node)
        return [self._prepare(node)]

    def _on_exit(self, node: Node, revived: tuple[Node, ...]) -> _Launch:
        # A worker may park and run more incarnations: the park tracks it for `join`.
        if node.thread is not None and not isinstance(node.thread, Worker):
            self._lingering = alive(self._lingering)
            self._lingering.append(node.thread)
        return self._release(node, revived)

    def _release(self, node: Node, revived: tuple[Node, ...]) -> _Launch:
        """A node's thread no longer counts: restart what that made ready."""
        node.running = False
        node.thread = None
        node.stuck = False
        self._new_since.pop(node, None)
        idle = []
        current: Node | None = node
        while current is not None:
            current.busy -= 1
            if current.busy == 0:
                idle.append(current)
            current = current.parent
        launch: list[tuple[Node, CancelToken]] = []
        for candidate in (*idle, *revived):
            if candidate.dynamic and (candidate.removing or candidate.ended_for_good):
                drop(candidate)
            else:
                launch.extend(self._restart_if_ready(candidate))
        if not self._root.busy:
            self._finish_if_over()
        return launch

    def _ready(self, node: Node) -> bool:
        """The contract's restart rule: DEAD or CANCELLED, subtree idle, parent live."""
        if (
            not node.attached
            or node.busy
            or node.restart_due is not None
            or node.state not in (State.DEAD, State.CANCELLED)
            or node.ended_for_good
        ):
            return False
        return not self._parent_cancelled(node)

    def _parent_cancelled(self, node: Node) -> bool:
        parent = node.parent
        return parent.token.cancelled if parent is not None else self._tree.stopping

    def _restart_if_ready(self, node: Node) -> _Launch:
        if not self._ready(node):
            return ()
        requested = node in self._restarts_asked
        delay = node.next_delay() if node.state is State.DEAD and not requested else 0.0
        self._tree.events.emit(
            logging.INFO,
            _logs.RESTART_SCHEDULED,
            node.dn,
            "%s (%s) restarts in %.3f s%s",
            node.dn,
            node.state.name,
            delay,
            ", as sup.restart() asked" if requested else "",
            node=node,
            delay=delay,
            requested=requested,
        )
        if delay > 0:
            node.restart_due = time.monotonic() + delay
            self._push(node.restart_due, node)
            return ()
        return [self._renew(node)]

    def _renew(self, node: Node) -> tuple[Node, CancelToken]:
        """A new incarnation of ``node``, prepared for launch."""
        node.reset()
        self._restarts_asked.discard(node)
        return self._prepare(node)

    def _prepare(self, node: Node) -> tuple[Node, CancelToken]:
        """Count the node as running before its thread exists, so that its
        subtree never looks idle in between."""
        node.running = True
        node.started_at = now = time.monotonic()
        current: Node | None = node
        while current is not None:
            current.busy += 1
            current = current.parent
        self._new_since[node] = now
        if not self._still_new_armed:
            self._still_new_armed = True
            self._push(now + STILL_NEW_SECONDS, _STILL_NEW)
        self._tree.touch()
        return node, node.token

    def _launch(self, launch: _Launch) -> None:
        """Start threads, outside the lock: a start can take 100 ms on a busy machine."""
        for node, token in launch:
            try:
                if node.reuses_thread:
                    self._park.launch(node, token)
                    continue
                thread = SupervisedThread(self._tree, node.dn, node.run_incarnation, token)
                node.thread = thread
                thread.start()
            except Exception as exc:  # "can't start new thread", MemoryError: a death
                node.thread = None
                self._failed_start(node, token, exc)

    def _failed_start(self, node: Node, token: CancelToken, error: Exception) -> None:
        exit = node.decide_exit(token, error)
        if exit is None:  # abandoned: never, for a thread that did not start
            return
        if exit.state is State.DEAD:
            self._tree.events.emit(
                logging.ERROR,
                _logs.DIED,
                node.dn,
                "%s died: %s",
                node.dn,
                node.last_error,
                node=node,
                error=node.last_error,
            )
            for give_up in exit.gave_up:
                give_up.emit(self._tree.events)
        # Not `fire()`: its WATCH would be a second request for what the EXITED
        # request below already carries to `_watch`.
        if exit.cancelled:
            self._run_elsewhere([functools.partial(self._tree.fire, exit.cancelled)])
        self.exited(node, exit.revived, tuple(exit.cancelled))

    def _watch(self, tokens: tuple[CancelToken, ...]) -> None:
        for token in tokens:
            node = token._node
            running = node.token is token and node.running and not token.exited
            # Callbacks not yet run: the check looks at them too, wherever they run.
            if (running or token._unfired()) and token.cancelled_at is not None:
                timeout = node.policy.shutdown_timeout
                if timeout is None:
                    timeout = self._tree.shutdown_timeout
                if timeout == math.inf:
                    continue  # it may take for ever to exit: never stuck
                check = _StuckCheck(node, token, max(timeout, STUCK_REPEAT_MIN))
                self._push(token.cancelled_at + timeout, check)

    def _run_due(self) -> None:
        if not self._due or self._due[0][0] > time.monotonic():
            return
        launch: list[tuple[Node, CancelToken]] = []
        calls: list[Callable[[], None]] = []
        periodic: list[_Periodic] = []
        stuck: list[_StuckReport] = []
        still_new: list[Node] = []
        with self._tree.lock:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, _, what = heapq.heappop(self._due)
                if isinstance(what, Node):
                    if what.restart_due == due:
                        what.restart_due = None
                        if self._ready(what):
                            launch.append(self._renew(what))
                elif isinstance(what, _Periodic):
                    if what.armed:
                        periodic.append(what)
                        # Late (the loop was held up): no burst of catching up.
                        next_due = due + what.interval
                        self._push(next_due if next_due > now else now + what.interval, what)
                elif isinstance(what, _Timer):
                    if what.armed:
                        calls.append(what.function)
                elif isinstance(what, _StillNew):
                    still_new.extend(self._still_new(now))
                elif what.current():
                    launch.extend(self._stuck(what, now, stuck))
        if stuck:  # a stack takes milliseconds to format: not under the lock, nor on the loop
            calls.append(functools.partial(_report_stuck, self._tree.events, stuck))
        self._run_elsewhere(calls)
        self._launch(launch)
        for entry in periodic:
            entry.run(self._tree.events, self._root.dn)
        for node in still_new:
            self._tree.events.emit(
                logging.WARNING,
                _logs.STILL_NEW,
                node.dn,
                "%s is still NEW %.0f s after it started: did it forget "
                "token.signal(Signal.HEALTHY)?",
                node.dn,
                STILL_NEW_SECONDS,
                node=node,
            )

    def _stuck(self, check: _StuckCheck, now: float, reports: list[_StuckReport]) -> _Launch:
        """A cancelled runnable outlived its shutdown timeout, or its callbacks
        have not returned: escalate, and say so."""
        node, token = check.node, check.token
        assert token.cancelled_at is not None
        callbacks = token.callbacks_thread
        if callbacks is not None:
            reports.append(_StuckReport(node, callbacks, now - token.cancelled_at, None))
        launch: _Launch = ()
        if check.runnable_running():
            assert node.thread is not None
            node.stuck = True
            on_stuck = node.policy.on_stuck
            if on_stuck == "interrupt" and token.interruptible:
                token.interrupted = True  # its thread never parks: see `threadsup._park`
                _interrupt(node.thread)
            reports.append(_StuckReport(node, node.thread, now - token.cancelled_at, on_stuck))
            if on_stuck == "abandon":
                token.abandoned = True
                node.state = State.CANCELLED
                self._abandoned[node.thread] = node.dn
                launch = self._release(node, ())
        if check.current():
            self._push(now + check.interval, check)
            check.interval = min(2 * check.interval, STUCK_REPEAT_MAX)
        return launch

    def _still_new(self, now: float) -> list[Node]:
        """The nodes that have been NEW for `STILL_NEW_SECONDS`, each once; and
        the next look, at most once every `STILL_NEW_GRANULARITY` seconds."""
        due = []
        for node, since in self._new_since.items():  # oldest first
            if since + STILL_NEW_SECONDS > now:
                break
            due.append(node)
        for node in due:
            del self._new_since[node]
        self._still_new_armed = bool(self._new_since)
        if self._still_new_armed:
            since = next(iter(self._new_since.values()))
            self._push(max(since + STILL_NEW_SECONDS, now + STILL_NEW_GRANULARITY), _STILL_NEW)
        return due

    def _signalled(self, node: Node) -> None:
        """Under the lock: ``node`` signalled, so it is NEW no longer."""
        self._new_since.pop(node, None)

    def _abandoned_exited(self, thread: threading.Thread) -> None:
        """Under the lock: an abandoned thread has exited at last; forget it, but
        for the instant `join` must still wait for it to end."""
        self._abandoned.pop(thread, None)
        self._lingering = alive(self._lingering)
        self._lingering.append(thread)

    def _begin_stop(self) -> list[CancelToken]:
        if self._stop_begun:
            return []
        self._stop_begun = True
        self._tree.stopping = True
        for _, _, what in self._due:
            if isinstance(what, Node):
                what.restart_due = None
        self._due = [entry for entry in self._due if not isinstance(entry[2], Node)]
        heapq.heapify(self._due)
        # Every node, not `cancel_subtree`, which passes a marked token by as if
        # its subtree were marked and woken: a Ctrl-C landing in the main thread
        # inside `Supervisor.restart` can leave tokens marked with nobody woken,
        # or a subtree half marked, and stop would wait for those runnables in vain.
        tokens = self._cancel_everything()
        self._watch(tuple(tokens))
        if not self._root.busy:
            self._finish_if_over()
        self._tell_phase()
        return tokens

    def _tell_phase(self) -> None:
        for listener in self._phase_listeners:
            listener()

    def _finish_if_over(self) -> None:
        """With no thread left: end when stopping, or when every node is DONE.
        Not while callbacks run, which the stuck checks watch."""
        if self._tree.callbacks_running:
            return  # `callbacks_idle` wakes the loop to look again
        if self._tree.stopping or all(node.ended_for_good for node in self._root.walk()):
            self._tree.stopping = True
            self._finished = True

    def _cancel_everything(self) -> list[CancelToken]:
        """Mark every token of the tree; return those with something to fire."""
        return [
            node.token for node in self._root.walk() if node.token._mark() or node.token._unfired()
        ]

    def _matters(self, entry: _Due) -> bool:
        """Whether a heap entry can still do anything; drops dead restarts."""
        due, _, what = entry
        if isinstance(what, _StillNew):
            return True
        if isinstance(what, _Timer):
            return what.armed
        if isinstance(what, _StuckCheck):
            return what.current()
        if what.restart_due != due:
            return False
        if what.attached and not self._parent_cancelled(what):
            return True
        what.restart_due = None
        return False

    def _release_settled(self) -> None:
        with self._tree.lock:
            if not self._requests.empty() or self._restart_waiting():
                return
            if self._tree.events.delivering():
                return  # `_timeout` looks again shortly
            if time.monotonic() - self._tree.last_activity >= SETTLE_SECONDS:
                for event in self._settle_waiters:
                    event.set()
                self._settle_waiters.clear()

    def _restart_waiting(self) -> bool:
        """Whether a backoff restart, or one `Supervisor.restart` asked for, is
        still to happen; sweeps out the rest."""
        self._due = [entry for entry in self._due if self._matters(entry)]
        heapq.heapify(self._due)
        self._restarts_asked = {
            node
            for node in self._restarts_asked
            if node.attached
            and node.policy.restart != "temporary"
            and not self._parent_cancelled(node)
        }
        return bool(self._restarts_asked) or any(isinstance(e[2], Node) for e in self._due)

    def _timeout(self) -> float | None:
        deadline = self._due[0][0] if self._due else None
        if (
            self._settle_waiters
            and not self._restarts_asked
            and not any(isinstance(e[2], Node) for e in self._due)
        ):
            # Only once no restart waits can the tree settle; before that, the
            # restart's own deadline wakes the loop.
            settle = self._tree.last_activity + SETTLE_SECONDS
            if self._tree.events.delivering():  # records still on their way to handlers
                settle = max(settle, time.monotonic() + SETTLE_LOG_POLL)
            deadline = settle if deadline is None else min(deadline, settle)
        # A far deadline (a huge backoff or timeout) is looked at again in turns.
        return turn(deadline)

    def _run_elsewhere(self, calls: list[Callable[[], None]]) -> None:
        """Run user-facing callbacks on a thread of their own, never on the loop."""
        if calls and not self._tree.start_helper("threadsup-cancel", _call_all, calls):
            _call_all(calls)  # no thread to be had: better late callbacks than none


def _joined(thread: threading.Thread, timeout: float | None) -> bool:
    thread.join(timeout)
    return not thread.is_alive()


def _call_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


def current_frames() -> dict[int, FrameType]:
    """`sys._current_frames`, with the garbage collector paused.

    Before Python 3.13 it builds its dict holding the interpreter's thread-list
    lock: a collection starting there can run a weakref callback that waits for
    the GIL, while the GIL's holder waits for that lock to start or end a thread,
    and the process hangs (CPython gh-106883). With thousands of threads, as in
    a storm of stuck runnables, that is likely.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def _report_stuck(events: _logs.EventLog, reports: list[_StuckReport]) -> None:
    frames = current_frames()  # once for all: it costs a dict entry per thread
    for report in reports:
        report.emit(events, frames)


def stack_of(thread: threading.Thread, frames: dict[int, FrameType]) -> str:
    frame = frames.get(thread.ident or 0)
    if frame is None:
        return "  (no stack: the thread has ended)"
    return "".join(traceback.format_stack(frame)).rstrip()


def _interrupt(thread: threading.Thread) -> None:
    """Raise `Cancelled` in ``thread`` at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(Cancelled)
    )
