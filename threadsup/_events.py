"""Observing a tree: `Supervisor.subscribe`'s events, and each node's log backlog.

Both come from the lifecycle records of `threadsup._logs.EventLog`: every record
is one `Event`, published when the log dispatcher hands the record over (so in
the records' order, off the tree lock and off the processor), and is kept in
the backlog of its node, with the records of the node's own logger.

Each subscriber has a bounded queue and a delivery thread of its own: a
callback that raises or blocks delays nothing but its own events. The backlog
lives on its `Node`: it goes with the node.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

from threadsup import _logs
from threadsup._node import Node, State, SupervisedThread, Tree, describe
from threadsup._seconds import deadline_after, remaining

if TYPE_CHECKING:
    from threadsup._logs import _Pending

#: How long the subscribers may go on delivering their queued events once the
#: tree has stopped; past that, one still in its callback is abandoned.
DELIVERY_GRACE = 1.0
#: A subscriber's failures are logged at most once in this many seconds.
FAILURE_REPORT_INTERVAL = 60.0
#: Events a subscriber's queue holds by default; past that they are dropped.
MAX_QUEUED = 1000

_numbers = itertools.count(1)


@dataclass(frozen=True)
class Event:
    """Something that happened to a node, as `Supervisor.subscribe` reports it.

    One per lifecycle record, with the same name: ``kind`` is the record's
    ``event`` field, ``dn`` its ``dn``.
    """

    #: What happened: ``started``, ``healthy``, ``died``, ``restart_scheduled``, ...
    kind: str
    #: The node's DN.
    dn: str
    #: When it happened (`time.time`).
    at: float
    #: The node's state right after it.
    state: State
    #: The node's restart count then.
    restarts: int
    #: The failure the event reports, on one line as in `NodeStatus.last_error`
    #: (a death's, a callback's exception), or ``None``.
    error: str | None


#: What a subscriber's callback is given.
Callback = Callable[[Event], object]


class Subscribers:
    """The subscribers of one tree, and the threads delivering their events."""

    def __init__(self, tree: Tree, root: Node) -> None:
        self._tree = tree
        #: The node of the events emitted without one: the supervisor's own.
        self.root = root
        self._lock = threading.Lock()
        self._all: tuple[_Subscriber, ...] = ()
        self._started = False
        #: Set once the tree has stopped and every event has been published.
        self._closed = False
        #: When `join` stops waiting for the subscribers (`time.monotonic`).
        self._grace_ends: float | None = None
        #: Read without the lock by `EventLog.emit`: whether to make events.
        self.listening = False

    def subscribe(self, callback: Callback, max_queued: int) -> Callable[[], None]:
        """Start delivering events to ``callback``; return its unsubscribe."""
        subscriber = _Subscriber(self, callback, max_queued)
        with self._lock:
            if self._closed:
                return subscriber.unsubscribe  # the tree has stopped: no event will come
            start = self._started
            self._all = (*self._all, subscriber)
            self.listening = True
        if start:
            try:
                subscriber.thread.start()
            except BaseException:  # "can't start new thread": not subscribed after all
                self.remove(subscriber)
                raise
        return subscriber.unsubscribe

    def remove(self, subscriber: _Subscriber) -> None:
        with self._lock:
            self._all = tuple(s for s in self._all if s is not subscriber)
            self.listening = bool(self._all) and not self._closed

    def start(self) -> None:
        """Start the delivery threads of those who subscribed before the tree started."""
        with self._lock:
            self._started = True
            waiting = self._all
        for subscriber in waiting:
            subscriber.thread.start()

    def publish(self, item: _Pending) -> None:
        """Queue ``item``'s event for every subscriber; by the log dispatcher, in order."""
        facts = item.facts
        assert facts is not None
        error = facts.error
        event = Event(
            item.fields["event"],
            item.fields["dn"],
            item.time_ns / 1e9,
            facts.state,
            facts.restarts,
            describe(error) if isinstance(error, BaseException) else error,
        )
        for subscriber in self._all:
            subscriber.put(event)

    def close(self) -> None:
        """No event comes any more: each delivery thread ends once it has
        delivered its queue, within `DELIVERY_GRACE`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.listening = False
            self._grace_ends = time.monotonic() + DELIVERY_GRACE
            closing = self._all
        for subscriber in closing:
            subscriber.close()

    def join(self, timeout: float | None) -> bool:
        """Wait for the delivery threads to end, after `close`; ``False`` on timeout.

        Past `DELIVERY_GRACE` from the close, a subscriber still delivering (its
        callback blocked, say) is abandoned, with a WARNING: it delivers
        nothing more, and its thread ends once the callback returns.
        """
        with self._lock:
            grace_ends = self._grace_ends
            subscribers = tuple(s for s in self._all if s.active)
        if grace_ends is None:
            return True  # not closed: `EventLog.join` has waited for the dispatcher
        until = deadline_after(timeout)
        for subscriber in subscribers:
            left = grace_ends - time.monotonic()
            wait = remaining(until)
            if subscriber.thread.ident is not None and left > 0:
                subscriber.thread.join(left if wait is None else min(left, wait))
        late = [s for s in subscribers if s.thread.is_alive()]
        if not late:
            return True
        if time.monotonic() < grace_ends:
            return False
        for subscriber in late:
            subscriber.abandon()
        return True

    def report(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        **fields: Any,
    ) -> None:
        """Log a record of the subscribers' on the supervisor's logger."""
        self._tree.events.emit(
            level, kind, self.root.dn, msg, *args, exc_info=exc_info, error=exc_info, **fields
        )


class _Subscriber:
    """One callback, its queue of events and its delivery thread."""

    def __init__(self, owner: Subscribers, callback: Callback, max_queued: int) -> None:
        self._owner = owner
        self._callback = callback
        self._max_queued = max_queued
        self._queue: deque[Event] = deque()
        self._cond = threading.Condition(threading.Lock())
        #: Not unsubscribed, nor abandoned.
        self._active = True
        #: The tree has stopped: deliver what is queued, then end.
        self._closing = False
        self._waiting = False
        #: Events dropped since the last report.
        self._dropped = 0
        #: When the last failure was reported (`time.monotonic`), and the failures since.
        self._reported_at: float | None = None
        self._failures = 0
        self.thread = SupervisedThread(
            owner._tree, f"threadsup-subscriber {next(_numbers)}", self._deliver
        )

    def __repr__(self) -> str:
        return f"<subscriber {_logs._repr(self._callback)} on thread {self.thread.name!r}>"

    @property
    def active(self) -> bool:
        """Neither unsubscribed nor abandoned."""
        return self._active

    def put(self, event: Event) -> None:
        with self._cond:
            if not self._active or self._closing:
                return
            if len(self._queue) >= self._max_queued:
                self._dropped += 1
                return
            self._queue.append(event)
            if self._waiting:
                self._cond.notify()

    def unsubscribe(self) -> None:
        """Deliver no more events to this callback (one under way completes);
        idempotent, and allowed from the callback itself."""
        self._stop()
        self._owner.remove(self)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def abandon(self) -> None:
        undelivered = self._stop()
        self._owner.report(
            logging.WARNING,
            _logs.SUBSCRIBER_ABANDONED,
            "%r was still delivering %.1f s after the tree stopped: abandoned, with %d "
            "events undelivered; its thread ends once its callback returns",
            self,
            DELIVERY_GRACE,
            undelivered,
            subscriber=self.thread.name,
            undelivered=undelivered,
        )

    def _stop(self) -> int:
        """Stop delivering; return how many events are left undelivered."""
        with self._cond:
            self._active = False
            undelivered = len(self._queue) + self._dropped
            self._queue.clear()
            self._cond.notify()
        return undelivered

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while self._active and not self._queue and not self._closing:
                    self._waiting = True
                    self._cond.wait()
                    self._waiting = False
                if not self._active:
                    return
                event = self._queue.popleft() if self._queue else None  # None: closing
                dropped = 0
                if not self._queue:  # caught up: report the drops
                    dropped, self._dropped = self._dropped, 0
            if dropped:
                self._owner.report(
                    logging.WARNING,
                    _logs.EVENTS_DROPPED,
                    "%r dropped %d events while its callback was behind (its queue holds %d)",
                    self,
                    dropped,
                    self._max_queued,
                    subscriber=self.thread.name,
                    dropped=dropped,
                )
            if event is None:
                return
            self._call(event)

    def _call(self, event: Event) -> None:
        try:
            self._callback(event)
        except BaseException as exc:  # a subscriber never harms the tree, nor stops its delivery
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        last = self._reported_at
        if last is not None and now - last < FAILURE_REPORT_INTERVAL:
            self._failures += 1
            return
        since, self._failures = self._failures, 0
        self._reported_at = now
        self._owner.report(
            logging.ERROR,
            _logs.SUBSCRIBER_FAILED,
            "%r raised %s; it stays subscribed (its failures are logged at most once "
            "every %.0f s: %d more since the last)",
            self,
            type(exc).__name__,
            FAILURE_REPORT_INTERVAL,
            since,
            exc_info=exc,
            subscriber=self.thread.name,
        )


#: What a backlog holds: a record, or a lifecycle record's makings, built when read.
Kept = Union[logging.LogRecord, "_Pending"]


class Backlog(logging.Handler):
    """Keeps the last ``size`` records of every node, on the node.

    On the base logger, it takes the records of the node loggers (and of the
    loggers below them) that logging creates; `EventLog` hands it the
    lifecycle records at INFO and above whatever the level. One lock guards every
    node's deque.
    """

    def __init__(self, events: _logs.EventLog, root: Node, size: int) -> None:
        super().__init__()
        self._events = events
        self._root = root
        self._tree = root.tree
        self.size = size
        self._prefix = f"{events.base.name}."
        self._lock = threading.Lock()

    def attach(self) -> None:
        self._events.base.addHandler(self)

    def detach(self) -> None:
        self._events.base.removeHandler(self)

    def handle(self, record: logging.LogRecord) -> bool:
        """`emit`, without `logging.Handler.handle`'s filters and lock: no
        filter is ever added here, and `keep` takes a lock of its own."""
        self.emit(record)
        return True

    def keep(self, node: Node | None, item: Kept) -> None:
        """Append ``item`` to the backlog of ``node`` (the root when None)."""
        target = node if node is not None else self._root
        with self._lock:
            kept = target.backlog
            if kept is None:  # made on the first record: most nodes never log
                kept = target.backlog = deque(maxlen=self.size)
            kept.append(item)

    def records(self, node: Node) -> list[logging.LogRecord]:
        """``node``'s records, oldest first."""
        with self._lock:
            kept = list(node.backlog or ())
        return [item if isinstance(item, logging.LogRecord) else item.record() for item in kept]

    def emit(self, record: logging.LogRecord) -> None:
        self._last_resort(record)
        name = record.name
        if not name.startswith(self._prefix) or record is self._events.handing:
            return  # not a node's; or a lifecycle record, kept when emitted
        thread = threading.current_thread()
        if isinstance(thread, SupervisedThread) and thread.tree is not self._tree:
            return  # another tree's, on the same base logger
        node = self._node(name[len(self._prefix) :])
        if node is not None:
            self.keep(node, record)

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Hand ``record`` to `logging.lastResort` (stderr) when no other handler
        takes it: logging only prints a record that found no handler, and a
        backlog must not silence the warnings of a program that configured none.
        Of several backlogs on the way, the first does it."""
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        logger: logging.Logger | None = logging.getLogger(record.name)
        first = None
        while logger is not None:
            for handler in logger.handlers:
                if not isinstance(handler, Backlog):
                    return
                first = first or handler
            logger = logger.parent if logger.propagate else None
        if first is self:
            last.handle(record)

    def _node(self, dn: str) -> Node | None:
        """The node of the logger ``<base>.<dn>``: the deepest node on that path
        (a logger below a node's counts as the node's). Read without the tree
        lock: each step is one atomic dict lookup, and a node that has left
        just keeps the record until it is collected."""
        first, _, rest = dn.partition(".")
        if first != self._root.name:
            return None
        node = self._root
        if rest:
            for name in rest.split("."):
                child = node.children.get(name)
                if child is None:
                    break
                node = child
        return node
