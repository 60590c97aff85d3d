"""Logging: lifecycle records with ``dn`` and ``event`` fields, and JSON output.

Runnable threads log their own lifecycle records (started, healthy, done, died,
cancelled) in their own thread. The processor never calls a handler itself: it
builds its records and hands them to a dispatcher thread, so that a slow or
failing handler cannot stall restarts.
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
    logger is reported on stderr, as ``logging`` does for failing handlers.
    """

    def __init__(self, base: logging.Logger) -> None:
        self.base = base
        self.logger = logging.getLogger(f"{base.name}.supervisor")
        self._later: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
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
        """Log a record now, in the calling thread."""
        target = logger or self.logger
        try:
            if target.isEnabledFor(level):
                fields.update(dn=dn, event=event)
                target.log(level, msg, *args, exc_info=exc_info, extra=fields, stacklevel=2)
        except Exception:
            _report_logging_failure()

    def emit_later(
        self, level: int, event: str, dn: str, msg: str, *args: object, **fields: Any
    ) -> None:
        """Build a record in the calling thread; the dispatcher thread handles it."""
        try:
            if self.logger.isEnabledFor(level):
                fields.update(dn=dn, event=event)
                record = self.logger.makeRecord(
                    self.logger.name, level, __file__, 0, msg, args, None, extra=fields
                )
                self._later.put(record)
        except Exception:
            _report_logging_failure()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Let the dispatcher end once it has handled every record built so far."""
        self._later.put(None)

    def join(self, timeout: float | None) -> bool:
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _dispatch(self) -> None:
        while True:
            record = self._later.get()
            if record is None:
                return
            try:
                self.logger.handle(record)
            except Exception:
                _report_logging_failure()


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
