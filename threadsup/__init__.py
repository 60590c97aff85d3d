"""threadsup: Erlang/OTP-style supervision trees for blocking, thread-based code."""

from threadsup._errors import (
    AlreadyStarted,
    Cancelled,
    DeadlineExceeded,
    DuplicateName,
    GaveUp,
    InvalidName,
    InvalidSignal,
    NodeNotNew,
    NotDynamic,
    NotMainThread,
    NotStarted,
    OwnThreadError,
    ProcessorFailed,
    ThreadsupError,
    UnknownNode,
)
from threadsup._events import Event
from threadsup._logs import JsonFormatter, configure_json_logging, configure_logging
from threadsup._node import NodeStatus, State
from threadsup._policy import Backoff
from threadsup._supervisor import Supervisor
from threadsup._token import CancelToken, Runnable, ScopedToken, Signal
from threadsup.service import ExitStatus, run
from threadsup.support import CommandFailed, ServeError, command, periodic, serve

__all__ = [
    "AlreadyStarted",
    "Backoff",
    "CancelToken",
    "Cancelled",
    "CommandFailed",
    "DeadlineExceeded",
    "DuplicateName",
    "Event",
    "ExitStatus",
    "GaveUp",
    "InvalidName",
    "InvalidSignal",
    "JsonFormatter",
    "NodeNotNew",
    "NodeStatus",
    "NotDynamic",
    "NotMainThread",
    "NotStarted",
    "OwnThreadError",
    "ProcessorFailed",
    "Runnable",
    "ScopedToken",
    "ServeError",
    "Signal",
    "State",
    "Supervisor",
    "ThreadsupError",
    "UnknownNode",
    "command",
    "configure_json_logging",
    "configure_logging",
    "periodic",
    "run",
    "serve",
]
