"""The exceptions threadsup raises.

`Cancelled` is a `BaseException`, like `asyncio.CancelledError`, so that the
``except Exception:`` loops of legacy workers do not swallow it. Every other
error derives from `ThreadsupError`, and also from the built-in type the
contract promises (`ValueError`, `RuntimeError`), so callers may catch either.
"""

from __future__ import annotations


def require_callable(value: object, what: str) -> None:
    """Raise `TypeError` naming ``what`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{what} must be a callable, not {value!r}")


class Cancelled(BaseException):
    """Raised by token operations once the token is cancelled.

    ``dn`` names the node whose token was cancelled (``None`` when unknown).
    """

    def __init__(self, dn: str | None = None) -> None:
        self.dn = dn
        super().__init__(f"{dn} was cancelled" if dn else "cancelled")


class ThreadsupError(Exception):
    """Base of every threadsup error other than `Cancelled`."""


class InvalidName(ThreadsupError, ValueError):
    """A child name is not a ``str`` matching ``[a-z0-9_]{1,64}``."""


class DuplicateName(ThreadsupError, ValueError):
    """A child name is already used by a child of the same node."""


class NodeNotNew(ThreadsupError, RuntimeError):
    """``run``/``run_group`` was called after the node signalled HEALTHY."""


class InvalidSignal(ThreadsupError, RuntimeError):
    """A signal arrived out of order (HEALTHY only from NEW, DONE only from HEALTHY)."""


class AlreadyStarted(ThreadsupError, RuntimeError):
    """`Supervisor.start` was called a second time."""


class OwnThreadError(ThreadsupError, RuntimeError):
    """`Supervisor.wait` was called from a thread of the tree it waits for."""


class DeadlineExceeded(ThreadsupError, TimeoutError):
    """A `CancelToken.fail_after` block ran past its deadline."""


class NotStarted(ThreadsupError, RuntimeError):
    """`Supervisor.wait` or `Supervisor.wait_settled` was called before `start`."""


class ProcessorFailed(ThreadsupError):
    """The supervisor's processor thread failed: a bug in threadsup.

    The tree was cancelled when it happened; ``__cause__`` holds the error.
    """


class GaveUp(ThreadsupError):
    """The root gave up: failures exceeded its restart intensity and the tree stopped.

    ``failures`` lists the chain of failures as ``(dn, last_error)`` pairs,
    innermost first: the node that gave up first, then each ancestor it took
    down, up to the root.
    """

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = list(failures)
        chain = "; ".join(f"{dn}: {error}" for dn, error in self.failures)
        super().__init__(f"the supervision tree gave up and stopped: {chain}")


class UnknownNode(ThreadsupError, KeyError):
    """No node of the tree has the given DN (now)."""

    def __str__(self) -> str:  # KeyError would show the message's repr
        return str(self.args[0])


class NotDynamic(ThreadsupError, ValueError):
    """`Supervisor.remove` was given a node that `CancelToken.spawn` did not add."""
