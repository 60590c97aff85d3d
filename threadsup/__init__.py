"""threadsup: Erlang/OTP-style supervision trees for blocking, thread-based code."""

from threadsup.errors import (
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
from threadsup.events import Event
from threadsup.logs import JsonFormatter, configure_json_logging
from threadsup.node import NodeStatus, State
from threadsup.policy import Backoff
from threadsup.service import ExitStatus, run
from threadsup.supervisor import Supervisor
from threadsup.support import CommandFailed, ServeError, command, periodic, serve
from threadsup.token import CancelToken, Runnable, ScopedToken, Signal

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
    "periodic",
    "run",
    "serve",
]
