"""The exceptions threadsup raises.

`Cancelled` is a `BaseException`, like `asyncio.CancelledError`, so that the
``except Exception:`` loops of legacy workers do not swallow it. Every other
error derives from `ThreadsupError`, and also from the built-in type the
contract promises (`ValueError`, `RuntimeError`), so callers may catch either.
"""

from __future__ import annotations

import functools
import inspect
import types


def require_callable(value: object, what: str) -> None:
    """Raise `TypeError` naming ``what`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{what} must be a callable, not {value!r}")


#: What a runnable is, as every error about a bad one says.
_RUNNABLE = "a callable taking one positional argument, its CancelToken (def worker(token): ...)"
_ASYNC_ADVICE = (
    "threadsup runs blocking code, each runnable in a thread of its own: to run a coroutine, "
    "call asyncio.run() in a plain function, e.g. def worker(token): asyncio.run(main(token))"
)
#: Functions whose call returns an object instead of running their body: the
#: kind, what the call returns, and what to do instead.
_NEVER_RUN = (
    (inspect.iscoroutinefunction, "a coroutine function (async def)", "a coroutine", _ASYNC_ADVICE),
    (
        inspect.isasyncgenfunction,
        "an async generator function",
        "an async generator",
        _ASYNC_ADVICE,
    ),
    (
        inspect.isgeneratorfunction,
        "a generator function",
        "a generator",
        "To use a generator, iterate over it in a plain function, "
        "e.g. def worker(token): for item in produce(token): ...",
    ),
)
#: Stands for the token when binding a runnable's signature.
_TOKEN = object()


def require_runnable(value: object, what: str) -> None:
    """Raise `TypeError` naming ``what`` unless ``value`` can be a runnable.

    Rejects in the caller what would otherwise restart for ever: a value that is
    not callable, a coroutine, async generator or generator function (calling it
    never runs its body), and a callable that cannot take one positional
    argument. A callable whose signature `inspect` cannot tell (some builtins)
    is accepted.
    """
    if not callable(value):
        raise TypeError(f"{what} must be {_RUNNABLE}, not {value!r}")
    function, before = _what_runs(value)
    # Not `inspect.unwrap`: a plain function that `functools.wraps` a coroutine
    # function (and runs it with asyncio.run, say) is a fine runnable.
    for test, kind, product, advice in _NEVER_RUN:
        if test(function):
            its = "" if function is value else f"calls {function!r}, which "
            raise TypeError(
                f"{what} {value!r} {its}is {kind}: calling it only creates {product} and "
                f"never runs its body. A runnable must be {_RUNNABLE}. {advice}"
            )
    if (
        before is not None
        and isinstance(function, types.FunctionType)
        and _binds(function, before + 1)
    ):
        return  # the common case, judged from the code alone: ~1 µs, on every spawn
    try:
        signature = inspect.signature(value, follow_wrapped=False)  # ~10 µs
    except (TypeError, ValueError):  # no signature to be had: let the call tell
        return
    try:
        signature.bind(_TOKEN)
    except TypeError as exc:
        raise TypeError(
            f"{what} {value!r} cannot be called with one positional argument ({exc}). "
            f"A runnable must be {_RUNNABLE}"
        ) from None


def _what_runs(value: object) -> tuple[object, int | None]:
    """The function a call of ``value`` runs, through partials, bound methods and
    ``__call__``, and how many positional arguments it gets before the caller's;
    ``None`` when that is not known (keywords, a class, a C callable)."""
    before: int | None = 0
    while isinstance(value, functools.partial):
        if before is not None:
            before = None if value.keywords else before + len(value.args)
        value = value.func
    if isinstance(value, types.MethodType):
        return value.__func__, None if before is None else before + 1
    if isinstance(value, types.FunctionType):
        return value, before
    if isinstance(value, type):
        return value, None  # its call runs __new__ and __init__: leave it to inspect
    # A callable object: a call runs its class's __call__ (never the instance's).
    call = next(
        (vars(cls)["__call__"] for cls in type(value).__mro__ if "__call__" in vars(cls)), None
    )
    if isinstance(call, types.FunctionType):
        return call, None if before is None else before + 1
    if isinstance(call, staticmethod):
        return call.__func__, before
    return value, None


def _binds(function: types.FunctionType, given: int) -> bool:
    """Whether a call of ``function`` with ``given`` positional arguments binds."""
    code = function.__code__
    takes = code.co_argcount >= given or bool(code.co_flags & inspect.CO_VARARGS)
    required = code.co_argcount - len(function.__defaults__ or ())
    required_keywords = code.co_kwonlyargcount - len(function.__kwdefaults__ or ())
    return takes and required <= given and required_keywords == 0


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
    """`Supervisor.wait` or `Supervisor.wait_settled` was called before `Supervisor.start`."""


class NotMainThread(ThreadsupError, RuntimeError):
    """`threadsup.run` was called from a thread other than the main thread,
    where no signal handler can be installed."""


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
