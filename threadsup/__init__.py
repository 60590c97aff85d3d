"""threadsup: Erlang/OTP-style supervision trees for blocking, thread-based code."""

from threadsup.errors import (
    AlreadyStarted,
    Cancelled,
    DeadlineExceeded,
    DuplicateName,
    InvalidName,
    InvalidSignal,
    NodeNotNew,
    NotStarted,
    OwnThreadError,
    ProcessorFailed,
    ThreadsupError,
)
from threadsup.logs import configure_json_logging
from threadsup.node import NodeStatus, State
from threadsup.policy import Backoff
from threadsup.supervisor import Supervisor
from threadsup.token import CancelToken, Runnable, Signal

__all__ = [
    "AlreadyStarted",
    "Backoff",
    "CancelToken",
    "Cancelled",
    "DeadlineExceeded",
    "DuplicateName",
    "InvalidName",
    "InvalidSignal",
    "NodeNotNew",
    "NodeStatus",
    "NotStarted",
    "OwnThreadError",
    "ProcessorFailed",
    "Runnable",
    "Signal",
    "State",
    "Supervisor",
    "ThreadsupError",
    "configure_json_logging",
]
