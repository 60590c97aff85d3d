"""The processor: the one thread that starts runnables and decides restarts.

It drains a queue of requests (schedule a node, a runnable exited, stop, a
settle waiter arrived) and changes the tree under the tree lock. It is event
driven: with no request and no restart due it blocks, using no CPU. Backoff
restarts wait in a heap, and the queue's ``get`` timeout is the next one due.
An exit costs work along the exiting node's path to the root, never a walk of
the whole tree.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from threadsup import logs
from threadsup.node import Node, State, Tree, cancel_subtree
from threadsup.token import CancelToken

#: How long nothing may start, exit or signal before the tree counts as settled.
SETTLE_SECONDS = 0.05

_SCHEDULE, _EXITED, _STOP, _WAKE = range(4)


class _Request(NamedTuple):
    kind: int
    node: Node | None = None
    revived: tuple[Node, ...] = ()


_Launch = Sequence["tuple[Node, CancelToken]"]


class SupervisedThread(threading.Thread):
    """A daemon thread started by a supervisor, which knows its tree."""

    def __init__(self, tree: Tree, name: str, target: Callable[..., object], *args: object) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.tree = tree


class Processor:
    """Runs the supervision loop of one tree on a thread of its own."""

    def __init__(self, tree: Tree, root: Node) -> None:
        self._tree = tree
        self._root = root
        # SimpleQueue.put is reentrant: `stop` may be posted from a signal handler.
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        #: Pending backoff restarts: (due, order, node); stale once node.restart_due differs.
        self._due: list[tuple[float, int, Node]] = []
        self._order = itertools.count()
        #: Events of `wait_settled` callers; guarded by the tree lock.
        self._settle_waiters: set[threading.Event] = set()
        #: Runnable threads that reported their exit, possibly still finishing.
        self._lingering: list[threading.Thread] = []
        #: Short-lived threads firing cancellations the processor must not run itself.
        self._cancellers: list[threading.Thread] = []
        self._finished = False
        self.failure: BaseException | None = None
        #: Set when the loop has ended: the tree stopped or finished.
        self.ended = threading.Event()
        self.thread = SupervisedThread(tree, "threadsup-processor", self._loop)
        tree.schedule = self.schedule
        tree.exited = self.exited

    # Any thread.

    def start(self) -> None:
        self._tree.events.start()
        self.thread.start()

    def schedule(self, node: Node) -> None:
        self._requests.put(_Request(_SCHEDULE, node))

    def exited(self, node: Node, revived: tuple[Node, ...]) -> None:
        self._requests.put(_Request(_EXITED, node, revived))

    def stop(self) -> None:
        """Ask for the tree to stop. Takes no lock: safe from a signal handler."""
        self._requests.put(_Request(_STOP))

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

    def threads(self) -> list[threading.Thread]:
        """Every thread the supervisor started that may still be alive."""
        return [self.thread, *self._cancellers, *self._lingering]

    # The processor thread.

    def _loop(self) -> None:
        try:
            while not self._finished:
                try:
                    request = self._requests.get(timeout=self._timeout())
                except queue.Empty:
                    pass
                else:
                    self._handle(request)
                self._restart_due()
                if self._settle_waiters:
                    self._release_settled()
        except BaseException as exc:  # a bug in threadsup: say so, then stop the tree
            self.failure = exc
            self._tree.events.emit(
                logging.CRITICAL,
                "processor_failed",
                self._root.dn,
                "the threadsup processor failed; cancelling the tree",
                exc_info=exc,
            )
            with self._tree.lock:
                self._tree.stopping = True
                tokens = cancel_subtree(self._root)
            _fire_all(tokens)
        finally:
            with self._tree.lock:
                self._finished = True
                for event in self._settle_waiters:
                    event.set()
                self._settle_waiters.clear()
            self._tree.events.close()
            self.ended.set()

    def _handle(self, request: _Request) -> None:
        kind, node = request.kind, request.node
        launch: _Launch = ()
        cancelled: list[CancelToken] = []
        with self._tree.lock:
            if kind == _SCHEDULE:
                assert node is not None
                launch = self._admit(node)
            elif kind == _EXITED:
                assert node is not None
                launch = self._on_exit(node, request.revived)
            elif kind == _STOP:
                cancelled = self._begin_stop()
        self._fire_elsewhere(cancelled)
        self._launch(launch)

    def _admit(self, node: Node) -> _Launch:
        """A scheduled node: start it unless its subtree was cancelled meanwhile."""
        if not node.attached or node.running or node.state is not State.NEW:
            return ()
        if node.token.cancelled:
            node.state = State.CANCELLED
            return self._restart_if_ready(node)
        return [self._prepare(node)]

    def _on_exit(self, node: Node, revived: tuple[Node, ...]) -> _Launch:
        node.running = False
        if node.thread is not None:
            self._lingering = [t for t in self._lingering if t.is_alive()]
            self._lingering.append(node.thread)
            node.thread = None
        idle = []
        current: Node | None = node
        while current is not None:
            current.busy -= 1
            if current.busy == 0:
                idle.append(current)
            current = current.parent
        launch: list[tuple[Node, CancelToken]] = []
        for candidate in (*idle, *revived):
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
        ):
            return False
        parent = node.parent
        return not (parent.token.cancelled if parent is not None else self._tree.stopping)

    def _restart_if_ready(self, node: Node) -> _Launch:
        if not self._ready(node):
            return ()
        delay = node.next_delay() if node.state is State.DEAD else 0.0
        self._tree.events.emit_later(
            logging.INFO,
            logs.RESTART_SCHEDULED,
            node.dn,
            "%s (%s) restarts in %.3f s",
            node.dn,
            node.state.name,
            delay,
            delay=delay,
        )
        if delay > 0:
            node.restart_due = time.monotonic() + delay
            heapq.heappush(self._due, (node.restart_due, next(self._order), node))
            return ()
        node.reset()
        return [self._prepare(node)]

    def _prepare(self, node: Node) -> tuple[Node, CancelToken]:
        """Count the node as running before its thread exists, so that its
        subtree never looks idle in between."""
        node.running = True
        current: Node | None = node
        while current is not None:
            current.busy += 1
            current = current.parent
        self._tree.touch()
        return node, node.token

    def _launch(self, launch: _Launch) -> None:
        """Start threads, outside the lock: a start can take 100 ms on a busy machine."""
        for node, token in launch:
            thread = SupervisedThread(self._tree, node.dn, node.run_incarnation, token)
            node.thread = thread
            try:
                thread.start()
            except Exception as exc:  # "can't start new thread": a death like any other
                node.thread = None
                self._failed_start(node, token, exc)

    def _failed_start(self, node: Node, token: CancelToken, error: Exception) -> None:
        exit = node.decide_exit(token, error)
        if exit.state is State.DEAD:
            self._tree.events.emit_later(
                logging.ERROR, logs.DIED, node.dn, "%s died: %s", node.dn, node.last_error
            )
        self._fire_elsewhere(exit.cancelled)
        self.exited(node, exit.revived)

    def _restart_due(self) -> None:
        if not self._due or self._due[0][0] > time.monotonic():
            return
        launch: list[tuple[Node, CancelToken]] = []
        with self._tree.lock:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, _, node = heapq.heappop(self._due)
                if node.restart_due != due:
                    continue
                node.restart_due = None
                if self._ready(node):
                    node.reset()
                    launch.append(self._prepare(node))
        self._launch(launch)

    def _begin_stop(self) -> list[CancelToken]:
        if self._tree.stopping:
            return []
        self._tree.stopping = True
        for _, _, node in self._due:
            node.restart_due = None
        self._due.clear()
        tokens = cancel_subtree(self._root)
        if not self._root.busy:
            self._finish_if_over()
        return tokens

    def _finish_if_over(self) -> None:
        """With no thread left: end when stopping, or when every node is DONE."""
        root = self._root
        if self._tree.stopping or (
            root.state is State.DONE and all(node.state is State.DONE for node in root.walk())
        ):
            self._finished = True

    def _pending(self) -> bool:
        """Whether a backoff restart is still waiting; drops those no longer due."""
        waiting = []
        for entry in self._due:
            node = entry[2]
            if node.restart_due != entry[0]:
                continue
            parent = node.parent
            if node.attached and not (parent is not None and parent.token.cancelled):
                waiting.append(entry)
            else:
                node.restart_due = None
        heapq.heapify(waiting)
        self._due = waiting
        return bool(waiting)

    def _release_settled(self) -> None:
        with self._tree.lock:
            if (
                self._requests.empty()
                and not self._pending()
                and time.monotonic() - self._tree.last_activity >= SETTLE_SECONDS
            ):
                for event in self._settle_waiters:
                    event.set()
                self._settle_waiters.clear()

    def _timeout(self) -> float | None:
        deadline = self._due[0][0] if self._due else None
        if self._settle_waiters and not self._due:
            # Only once no restart waits can the tree settle; before that, the
            # restart's own deadline wakes the loop.
            deadline = self._tree.last_activity + SETTLE_SECONDS
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _fire_elsewhere(self, tokens: list[CancelToken]) -> None:
        """Fire tokens on a thread of their own: callbacks must not stall the loop."""
        if not tokens:
            return
        thread = SupervisedThread(self._tree, "threadsup-cancel", _fire_all, tokens)
        try:
            thread.start()
        except Exception:  # no thread to be had: better late callbacks than none
            _fire_all(tokens)
            return
        self._cancellers = [t for t in self._cancellers if t.is_alive()]
        self._cancellers.append(thread)


def _fire_all(tokens: list[CancelToken]) -> None:
    for token in tokens:
        token._fire()
