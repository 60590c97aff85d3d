"""Logging: lifecycle records with ``dn`` and ``event`` fields, and the
process's output as text or JSON lines.

Every lifecycle record is dated and attributed in the thread where its event
happens (its time, thread name, caller and traceback are that thread's), then
built and handed to the handlers by a dispatcher thread, a couple of
milliseconds later. A slow, blocking or failing handler therefore delays only
the delivery of records, never an exit report, a restart or the processor;
Python's per-handler lock would otherwise make every runnable that logs wait
behind it. Building the record off the event's thread, and a little later,
keeps a death's ERROR record (with its traceback) off the path of the restart
it causes.

Records reach the handlers one at a time, in the order they were emitted,
whichever thread hands them over: the order of their events, causes before
effects. The same hand-over publishes each record's `threadsup.Event` to the
subscribers (`threadsup.events`), so that records and events are one stream;
a record whose level its logger filters out is still made for them, and for the
node's backlog, but not handed to the handlers.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import queue
import sys
import threading
import time
import traceback
from types import CodeType
from typing import IO, TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Optional

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

if TYPE_CHECKING:
    from threadsup._events import Backlog, Subscribers
    from threadsup._node import Node, State

_ExcInfo = Optional[BaseException]

#: The event names of the lifecycle records, in the ``event`` field.
STARTED = "started"
HEALTHY = "healthy"
DONE = "done"
EXITED = "exited"
DIED = "died"
CANCELLED = "cancelled"
RESTART_SCHEDULED = "restart_scheduled"
STUCK = "stuck"
ABANDONED_EXITED = "abandoned_exited"
STOP_TIMED_OUT = "stop_timed_out"
GAVE_UP = "gave_up"
PROCESSOR_FAILED = "processor_failed"
CALLBACK_FAILED = "callback_failed"
CALLBACK_STUCK = "callback_stuck"
STILL_NEW = "still_new"
PERIODIC_FAILED = "periodic_failed"
NOTIFY_FAILED = "notify_failed"
#: The events of `threadsup.run`, on the root's DN.
SERVICE_STARTED = "service_started"
STOP_SIGNAL = "stop_signal"
RESTART_SIGNAL = "restart_signal"
THREAD_DUMP = "thread_dump"
SERVICE_EXIT = "service_exit"
#: EventLog's own, on the root's DN: records dropped while handlers were behind.
RECORDS_DROPPED = "records_dropped"
#: A child spawned at run time left the tree (removed, or dropped once it ended).
REMOVED = "removed"
#: The events of `Supervisor.subscribe`'s subscribers, on the root's DN.
EVENTS_DROPPED = "events_dropped"
SUBSCRIBER_FAILED = "subscriber_failed"
SUBSCRIBER_ABANDONED = "subscriber_abandoned"


#: How long the dispatcher lets a record that woke it wait before delivering it.
DELIVERY_DELAY = 0.002

#: When `EventLog.emit` hands a record to the handlers: ``"soon"``, by the
#: dispatcher, which it wakes; ``"after_flush"``, by the dispatcher once
#: `EventLog.flush` wakes it; ``"now"``, in the emitting thread.
Delivery = Literal["soon", "after_flush", "now"]


class EventLog:
    """Writes one supervisor's lifecycle records on ``<base>.supervisor``.

    Every record carries the node's DN in ``dn`` and the event's name in
    ``event``. Logging never raises into the supervisor: whatever a filter or
    handler raises (`SystemExit` included) is reported on stderr, as
    ``logging`` does for failing handlers, and delivery goes on. At most
    `MAX_PENDING` records wait for the dispatcher; past that, records are
    counted and dropped, and a WARNING says how many once it catches up.
    Before the dispatcher starts and after it ends, records are handled in the
    calling thread.
    """

    #: Records waiting for delivery beyond which new ones are dropped.
    MAX_PENDING = 10_000

    def __init__(self, base: logging.Logger) -> None:
        self.base = base
        self.logger = logging.getLogger(f"{base.name}.supervisor")
        #: Records to deliver, oldest first; guarded by `_lock`.
        self._records: collections.deque[_Pending] = collections.deque()
        #: Held by whichever thread hands records to the handlers, the dispatcher
        #: or one delivering in its own thread, so that they go out one at a time
        #: in the order queued. Reentrant: a handler may log a record "now".
        self._delivery = threading.RLock()
        #: Wakes the dispatcher: True to deliver, False to deliver and end.
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._dispatching = False
        #: A wake-up is queued that the dispatcher has not acted on yet.
        self._woken = False
        #: How many records were taken from `_records` but not yet handed over.
        self._handing = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._dispatch, name="threadsup-log", daemon=True)
        #: Set by the supervisor: where each record's event goes, and the node
        #: backlogs that keep the records (None: no backlog).
        self.subscribers: Subscribers | None = None
        self.backlog: Backlog | None = None
        #: The lifecycle record being handed to the handlers, which the backlog
        #: has already kept (under `_delivery`).
        self.handing: logging.LogRecord | None = None

    def node_logger(self, dn: str) -> logging.Logger:
        return logging.getLogger(f"{self.base.name}.{dn}")

    def emit(
        self,
        level: int,
        event: str,
        dn: str,
        msg: str,
        *args: object,
        exc_info: _ExcInfo = None,
        logger: logging.Logger | None = None,
        delivery: Delivery = "soon",
        node: Node | None = None,
        error: str | BaseException | None = None,
        **fields: Any,
    ) -> None:
        """Log a record on ``logger`` (the supervisor's by default).

        What only this thread knows (the time, the thread, the caller's line, the
        traceback) is taken now; the `logging.LogRecord` itself is built by the
        dispatcher, off the path of the exit or restart that logs it. With
        ``delivery="after_flush"`` the record waits for the next `flush`: for
        an exit's record, which the processor flushes once it has acted on the
        exit. With ``delivery="now"`` the handlers get it in this thread, after
        the records queued before it: for a record that must reach them before
        anything the caller does next. The caller must not hold the tree lock,
        since the handlers run then.

        ``node`` is the node the event is about (the root by default): its
        backlog keeps the record, and its state and restart count go into the
        event, as they are now. ``error`` is the event's failure, for
        `threadsup.Event.error`: a line, or an exception to describe.
        """
        target = logger or self.logger
        try:
            handled = target.isEnabledFor(level)
            subscribers = self.subscribers
            listening = subscribers is not None and subscribers.listening
            # The backlog keeps what logging would, and INFO and above whatever the
            # level: not the DEBUG started/healthy of every node, which would cost
            # each start a record built and kept that no operator reads.
            backlog = self.backlog if handled or level >= logging.INFO else None
            if not (handled or listening or backlog is not None):
                return  # nobody would see it: costs nothing more
            fields.update(dn=dn, event=event)
            caller = sys._getframe(1)  # where the event happened, for %(lineno)s and friends
            thread = threading.current_thread()
            facts: _Facts | None = None
            if listening:
                assert subscribers is not None
                subject = node if node is not None else subscribers.root
                facts = _Facts(subject.state, subject.restarts, error)
            pending = _Pending(
                target,
                level,
                msg,
                args,
                exc_info,
                fields,
                caller.f_code,
                caller.f_lineno,
                time.time_ns(),
                thread.ident,
                thread.name,
                handled,
                facts,
            )
            if backlog is not None:
                backlog.keep(node, pending)
            if not (handled or listening):
                return
            if not handled and delivery == "now":
                delivery = "soon"  # only for the subscribers: no handler runs here for it
            with self._lock:
                now = delivery == "now" or not self._dispatching
                if not now and len(self._records) >= self.MAX_PENDING:
                    self._dropped += 1
                    return
                # Queued even when delivered here, so as not to overtake those before it.
                self._records.append(pending)
                wake = not now and delivery == "soon" and not self._woken
                self._woken |= wake
            if now:
                self._deliver_queued()
            elif wake:
                self._wake.put(True)
        except Exception:
            _report_logging_failure()

    def start(self) -> None:
        with self._lock:
            self._dispatching = True
        try:
            self._thread.start()
        except Exception:  # "can't start new thread": records go out inline, as before start
            with self._lock:
                self._dispatching = False
            raise
        if self.backlog is not None:
            self.backlog.attach()
        if self.subscribers is not None:
            self.subscribers.start()

    def delivering(self) -> bool:
        """Whether records wait for delivery, or one is being delivered."""
        with self._lock:
            return bool(self._records) or self._handing > 0

    def flush(self) -> None:
        """Have the records emitted with ``delivery="after_flush"`` delivered."""
        with self._lock:
            wake = self._dispatching and bool(self._records) and not self._woken
            self._woken |= wake
        if wake:
            self._wake.put(True)

    def close(self) -> None:
        """Let the dispatcher end once it has handled every record built so far."""
        with self._lock:
            dispatching = self._dispatching
            if dispatching:
                self._dispatching = False
                self._wake.put(False)
        if not dispatching:  # never started, or ended already
            self._ended()

    def is_dispatcher(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is the dispatcher, where handlers usually run."""
        return thread is self._thread

    def join(self, timeout: float | None) -> bool:
        """Wait for the dispatcher, then for the subscribers (see `Subscribers.join`)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        return self.subscribers is None or self.subscribers.join(timeout)

    def _ended(self) -> None:
        """Every record the tree made has been handed over: let the subscribers
        end once they have delivered theirs, and stop filling the backlogs with
        lines of threads outliving the tree."""
        if self.backlog is not None:
            self.backlog.detach()
        if self.subscribers is not None:
            self.subscribers.close()

    def _dispatch(self) -> None:
        while True:
            deliver = self._wake.get()
            if deliver:
                # Delivery yields to supervision: the exit or restart that made the
                # record goes on without this thread taking the GIL from it, and a
                # burst of records goes out as one batch.
                time.sleep(DELIVERY_DELAY)
            with self._lock:
                self._woken = False  # a record from now on wakes this thread again
            self._deliver_queued()
            if not deliver:
                self._ended()
                return

    def _deliver_queued(self) -> None:
        """Hand the queued records to their handlers, oldest first, until none is left."""
        with self._delivery:
            while True:
                with self._lock:
                    if not self._records:
                        return
                    item = self._records.popleft()
                    self._handing += 1
                try:
                    if item.facts is not None and self.subscribers is not None:
                        self.subscribers.publish(item)
                    if item.handled:
                        self._hand(item)
                except BaseException:  # SystemExit too: no handler ends delivery
                    _report_logging_failure()
                with self._lock:
                    self._handing -= 1
                    dropped = 0 if self._records else self._dropped  # report once caught up
                    self._dropped -= dropped
                if dropped:  # queued, so this loop hands it over next
                    self.emit(
                        logging.WARNING,
                        RECORDS_DROPPED,
                        "root",
                        "threadsup dropped %d log records while its handlers were behind",
                        dropped,
                        delivery="after_flush",
                        dropped=dropped,
                    )

    def _hand(self, item: _Pending) -> None:
        record = item.record()
        # Nested when a handler logs a record "now": the outer one is handed on after.
        outer, self.handing = self.handing, record
        try:
            item.logger.handle(record)
        finally:
            self.handing = outer


class _Facts(NamedTuple):
    """What an event says of its node, taken when it happens."""

    state: State
    restarts: int
    error: str | BaseException | None


class _Pending(NamedTuple):
    """A record's makings, taken in the thread where its event happened."""

    logger: logging.Logger
    level: int
    msg: str
    args: tuple[object, ...]
    exc_info: _ExcInfo
    fields: dict[str, Any]
    code: CodeType
    lineno: int
    time_ns: int
    #: The thread's, not the thread itself: a backlog keeps this for a while.
    thread_ident: int | None
    thread_name: str
    #: Its logger is enabled for its level: the handlers get it.
    handled: bool
    #: For its event, when anyone subscribed.
    facts: _Facts | None

    def record(self) -> logging.LogRecord:
        """The `logging.LogRecord`, dated and attributed as if built at the event."""
        exc = self.exc_info
        record = self.logger.makeRecord(
            self.logger.name,
            self.level,
            self.code.co_filename,
            self.lineno,
            self.msg,
            self.args,
            None if exc is None else (type(exc), exc, exc.__traceback__),
            func=self.code.co_name,
            extra=self.fields,
        )
        created = self.time_ns / 1e9
        record.relativeCreated -= (record.created - created) * 1000
        record.created = created
        record.msecs = (self.time_ns % 1_000_000_000) // 1_000_000 + 0.0
        record.thread = self.thread_ident
        record.threadName = self.thread_name
        return record


def _report_logging_failure() -> None:
    if logging.raiseExceptions and sys.stderr is not None:
        sys.stderr.write("--- threadsup: logging failed ---\n")
        traceback.print_exc(file=sys.stderr)


def _node_prefix(base: str) -> str:
    """The prefix of the node loggers under the base logger named ``base``."""
    if not isinstance(base, str):
        raise TypeError(f"base must be the name of a logger (a str), not {type(base).__name__}")
    if not base:
        raise ValueError("base must be the name of the supervisor's base logger, not ''")
    return f"{base}."


def _node_fields(record: logging.LogRecord, prefix: str) -> tuple[str | None, str]:
    """``record``'s DN and event: its own ``dn`` and ``event`` fields where it has
    them (threadsup's lifecycle records), else the DN in the name of a node logger
    ``<prefix><dn>`` (None for other loggers) and ``"log"``."""
    fields = record.__dict__
    if "dn" in fields:
        dn: str | None = fields["dn"]
    else:
        name = record.name
        node = name[len(prefix) :] if name.startswith(prefix) else ""
        dn = node if node.split(".", 1)[0] == "root" else None
    return dn, fields.get("event", "log")


def _utc_time(record: logging.LogRecord) -> str:
    """``record``'s time in ISO 8601 UTC to the millisecond: ``2026-12-03T11:44:00.123Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not lose the record
        return object.__repr__(value)


#: The fields that start every JSON line, in this order.
_JSON_FIELDS = ("time", "level", "logger", "message", "dn", "event", "thread")


class JsonFormatter(_JsonFormatter):
    """Formats a record as one line of JSON, for programs that configure logging themselves.

    The line holds ``time`` (ISO 8601, UTC, to the millisecond), ``level``,
    ``logger``, ``message``, ``dn``, ``event`` and ``thread`` (the thread's
    name), then the record's ``extra`` fields, ``exception`` (the formatted
    exception and its traceback, as one string) and ``stack_info``, when it has
    them. ``dn`` is the record's own ``dn`` field (threadsup's lifecycle
    records), else the DN in the name of a node logger ``<base>.<dn>``, else
    null; ``event`` is ``"log"`` for a record without one. ``base`` is the
    supervisor's base logger name. A value JSON cannot hold (NaN, a cycle, an
    object whose encoding fails) is written as its ``repr``, and a record whose
    message cannot be formatted still makes a line (with ``format_error``):
    `format` never raises.
    """

    def __init__(self, base: str = "threadsup") -> None:
        super().__init__(
            " ".join(f"%({field})s" for field in _JSON_FIELDS),
            rename_fields={"exc_info": "exception"},
            # Infinity and NaN are not JSON: strict parsers reject the whole line.
            json_serializer=functools.partial(json.dumps, allow_nan=False),
        )
        self._prefix = _node_prefix(base)

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except (
            Exception
        ) as error:  # the message (bad arguments) or the traceback cannot be formatted
            msg = record.msg
            fields = self._fixed_fields(record, msg if isinstance(msg, str) else _repr(msg))
            fields.update(args=_repr(record.args), format_error=_repr(error))
            return self.jsonify_log_record(fields)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.update(self._fixed_fields(record, log_data.get("message")))

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except Exception:  # some value cannot be encoded: write those as their repr
            return super().jsonify_log_record(
                {
                    k if isinstance(k, str) else _repr(k): self._encodable(v)
                    for k, v in log_data.items()
                }
            )

    def _encodable(self, value: object) -> object:
        try:
            super().jsonify_log_record({"": value})
        except Exception:
            return _repr(value)
        return value

    def _fixed_fields(self, record: logging.LogRecord, message: object) -> dict[str, Any]:
        """The fields every line starts with, in `_JSON_FIELDS` order."""
        dn, event = _node_fields(record, self._prefix)
        return {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "dn": dn,
            "event": event,
            "thread": record.threadName,
        }


class _TextFormatter(logging.Formatter):
    """``2026-12-03T11:44:00.123Z INFO     threadsup.supervisor [root.a] root.a is done``:
    time (UTC), level, logger, DN when the record has one (as `JsonFormatter`
    finds it), message; a traceback or stack follows on the next lines."""

    def __init__(self, base: str = "threadsup") -> None:
        super().__init__()
        self._prefix = _node_prefix(base)

    def formatMessage(self, record: logging.LogRecord) -> str:
        dn, _ = _node_fields(record, self._prefix)
        where = record.name if dn is None else f"{record.name} [{dn}]"
        return f"{_utc_time(record)} {record.levelname:<8} {where} {record.message}"


#: The formats `configure_logging` takes, each a formatter given the base logger's name.
_FORMATTERS: dict[str, Callable[[str], logging.Formatter]] = {
    "text": _TextFormatter,
    "json": JsonFormatter,
}

#: The level names `configure_logging` takes, in any case.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The output formats of `configure_logging`.
LogFormat = Literal["text", "json"]


def _level(level: int | str) -> int:
    """The number of ``level``: an int, or one of `LEVELS` in any case."""
    accepted = f"one of {', '.join(name.lower() for name in LEVELS)} (in any case) or an int"
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"level must be {accepted}, not {type(level).__name__}")
    if isinstance(level, int):
        if level < 0:
            raise ValueError(f"level must be {accepted} >= 0, not {level}")
        return level
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use {accepted}")
    number: int = getattr(logging, name)
    return number


def configure_logging(
    level: int | str = logging.INFO,
    fmt: LogFormat = "text",
    *,
    stream: IO[str] | None = None,
    base: str = "threadsup",
) -> logging.Handler:
    """Send every record of the process, the program's and threadsup's, to ``stream``
    (stderr by default) once, as ``fmt``: ``"text"`` lines or `JsonFormatter`'s JSON lines.

    Installs one handler on the root logger, replacing all of its handlers
    (the program's own included: removed, not closed, so that no record goes
    out twice), and sets the root logger's ``level`` (an int, or a level name
    in any case). ``base`` is the supervisor's base logger name: for the DN of
    records, and to undo `configure_json_logging` on that logger (its handler
    removed, propagation and level restored), whose records then go out through
    the root logger like the others. Handlers on other loggers are left alone.
    Checks its arguments before changing anything. Returns the handler.
    """
    number = _level(level)
    formatter = _FORMATTERS.get(fmt) if isinstance(fmt, str) else None
    if formatter is None:
        raise ValueError(f"fmt must be one of {', '.join(map(repr, _FORMATTERS))}, not {fmt!r}")
    handler = _stream_handler(formatter(base), stream)
    threadsup_logger = logging.getLogger(base)
    if _remove_json_handlers(threadsup_logger):
        threadsup_logger.propagate = True
        threadsup_logger.setLevel(logging.NOTSET)
    root = logging.getLogger()
    # One assignment: a record logged meanwhile goes through the old handlers or
    # the new one, never both and never neither.
    root.handlers = [handler]
    root.setLevel(number)
    return handler


def configure_json_logging(
    level: int = logging.INFO,
    *,
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Send the supervisor's records, and its runnables', to ``stream`` as JSON lines.

    ``logger`` is the supervisor's base logger (``threadsup`` by default). Each
    line is `JsonFormatter`'s. The base logger stops propagating to the root
    logger, so that its records go out once, here, and not a second time
    through the root logger's handlers (``logging.basicConfig``'s). Calling it
    again replaces the handler it installed before. Returns the handler, so a
    caller can remove it.
    """
    base = logger if logger is not None else logging.getLogger("threadsup")
    handler = _stream_handler(JsonFormatter(base.name), stream)
    setattr(handler, _JSON_HANDLER_MARK, True)
    _remove_json_handlers(base)
    base.addHandler(handler)
    base.setLevel(level)
    base.propagate = False
    return handler


def _stream_handler(formatter: logging.Formatter, stream: IO[str] | None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr when None) with ``formatter``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    return handler


def _remove_json_handlers(logger: logging.Logger) -> bool:
    """Remove the handlers `configure_json_logging` installed on ``logger``: whether it had any."""
    installed = [h for h in logger.handlers if getattr(h, _JSON_HANDLER_MARK, False)]
    for handler in installed:
        logger.removeHandler(handler)
    return bool(installed)


_JSON_HANDLER_MARK = "_threadsup_json"
