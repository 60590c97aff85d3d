"""Logging: lifecycle records with ``dn`` and ``event`` fields, and JSON output.

Every lifecycle record is built in the thread where its event happens, so its
time, thread name and traceback are that thread's, and then handed to a
dispatcher thread that calls the handlers. A slow, blocking or failing handler
therefore delays only the delivery of records, never an exit report, a restart
or the processor; Python's per-handler lock would otherwise make every
runnable that logs wait behind it.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import traceback
from typing import IO, Any, Optional

from pythonjsonlogger.json import JsonFormatter

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


class EventLog:
    """Writes one supervisor's lifecycle records on ``<base>.supervisor``.

    Every record carries the node's DN in ``dn`` and the event's name in
    ``event``. Logging never raises into the supervisor: a failing filter or
    handler is reported on stderr, as ``logging`` does for failing handlers.
    At most `MAX_PENDING` records wait for the dispatcher; past that, records
    are counted and dropped, and a WARNING says how many once it catches up.
    Before the dispatcher starts and after it ends, records are handled in the
    calling thread.
    """

    #: Records waiting for delivery beyond which new ones are dropped.
    MAX_PENDING = 10_000

    def __init__(self, base: logging.Logger) -> None:
        self.base = base
        self.logger = logging.getLogger(f"{base.name}.supervisor")
        self._pending: queue.SimpleQueue[tuple[logging.Logger, logging.LogRecord] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._dispatching = False
        self._waiting = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._dispatch, name="threadsup-log", daemon=True)

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
        **fields: Any,
    ) -> None:
        """Log a record on ``logger`` (the supervisor's by default), built now."""
        target = logger or self.logger
        try:
            if not target.isEnabledFor(level):
                return
            fields.update(dn=dn, event=event)
            caller = sys._getframe(1)  # where the event happened, for %(lineno)s and friends
            record = target.makeRecord(
                target.name,
                level,
                caller.f_code.co_filename,
                caller.f_lineno,
                msg,
                args,
                None if exc_info is None else (type(exc_info), exc_info, exc_info.__traceback__),
                func=caller.f_code.co_name,
                extra=fields,
            )
            with self._lock:
                dispatch = self._dispatching and self._waiting < self.MAX_PENDING
                if dispatch:
                    self._waiting += 1
                    self._pending.put((target, record))
                elif self._dispatching:
                    self._dropped += 1
                    return
            if not dispatch:
                target.handle(record)
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

    def close(self) -> None:
        """Let the dispatcher end once it has handled every record built so far."""
        with self._lock:
            if self._dispatching:
                self._dispatching = False
                self._pending.put(None)

    def join(self, timeout: float | None) -> bool:
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _dispatch(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            logger, record = item
            try:
                logger.handle(record)
            except Exception:
                _report_logging_failure()
            with self._lock:
                self._waiting -= 1
                dropped = 0 if self._waiting else self._dropped  # report once caught up
                self._dropped -= dropped
            if dropped:
                self.logger.warning(
                    "threadsup dropped %d log records while its handlers were behind",
                    dropped,
                    extra={"dn": "root", "event": "records_dropped", "dropped": dropped},
                )


def _report_logging_failure() -> None:
    if logging.raiseExceptions and sys.stderr is not None:
        sys.stderr.write("--- threadsup: logging failed ---\n")
        traceback.print_exc(file=sys.stderr)


class _NodeFields(logging.Filter):
    """Gives every record the ``dn`` and ``event`` fields, deriving the DN from
    a node logger's name where the record has none."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self._prefix = f"{base}."

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "dn"):
            name = record.name
            node = name[len(self._prefix) :] if name.startswith(self._prefix) else ""
            record.dn = node if node.split(".", 1)[0] == "root" else None
        if not hasattr(record, "event"):
            record.event = "log"
        return True


def configure_json_logging(
    level: int = logging.INFO,
    *,
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Send the supervisor's records, and its runnables', to ``stream`` as JSON lines.

    ``logger`` is the supervisor's base logger (``threadsup`` by default). Each
    line holds ``time``, ``level``, ``logger``, ``message``, ``dn`` and
    ``event`` (``"log"`` for a runnable's own records), plus any ``extra``
    fields. Calling it again replaces the handler it installed before. Returns
    the handler, so a caller can remove it.
    """
    base = logger if logger is not None else logging.getLogger("threadsup")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(dn)s %(event)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_NodeFields(base.name))
    setattr(handler, _JSON_HANDLER_MARK, True)
    for old in [h for h in base.handlers if getattr(h, _JSON_HANDLER_MARK, False)]:
        base.removeHandler(old)
    base.addHandler(handler)
    base.setLevel(level)
    return handler


_JSON_HANDLER_MARK = "_threadsup_json"
