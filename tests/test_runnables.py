"""What may be a runnable: mistakes that would restart for ever are `TypeError`s in
the caller of `Supervisor`, `run`, `run_group` and `spawn`, and every kind of
callable that takes one positional argument is accepted."""

from __future__ import annotations

import asyncio
import functools
import inspect
import operator
from collections.abc import AsyncIterator, Iterator
from typing import Callable, NamedTuple

import pytest

from threadsup import CancelToken, Signal, State, Supervisor
from threadsup._errors import require_runnable
from threadsup.testing import (
    Harness,
    Incarnation,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_status,
)

ENTRY_POINTS = ["Supervisor", "run", "run_group", "spawn"]


# Kinds a runnable must not be.


async def coroutine_function(token: CancelToken) -> None:
    token.signal(Signal.HEALTHY)


async def async_generator_function(token: CancelToken) -> AsyncIterator[None]:
    yield


def generator_function(token: CancelToken) -> Iterator[None]:
    yield


class AsyncCall:
    async def __call__(self, token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)


def two_arguments(token: CancelToken, conn: object) -> None:
    healthy_until_cancelled(token)


def no_argument() -> None:
    pass


def keyword_only(token: CancelToken, *, retries: int) -> None:
    healthy_until_cancelled(token)


class NoToken:
    def __init__(self) -> None:
        pass


BAD: dict[str, tuple[object, str]] = {
    "coroutine function": (coroutine_function, "is a coroutine function (async def)"),
    "async generator function": (async_generator_function, "is an async generator function"),
    "generator function": (generator_function, "is a generator function"),
    "partial of a coroutine function": (
        functools.partial(coroutine_function),
        "which is a coroutine function",
    ),
    "async __call__": (AsyncCall(), "which is a coroutine function"),
    "two required arguments": (two_arguments, "missing a required argument: 'conn'"),
    "no argument": (no_argument, "too many positional arguments"),
    # From Python 3.12 on, "missing a required keyword-only argument: 'retries'".
    "required keyword-only": (keyword_only, "argument: 'retries'"),
    "class without the token": (NoToken, "too many positional arguments"),
}


# Kinds a runnable may be: each ends HEALTHY (or, for methodcaller, NEW) until cancelled.


def plain(token: CancelToken) -> None:
    healthy_until_cancelled(token)


def with_prefix(prefix: str, token: CancelToken) -> None:
    assert prefix == "x"
    healthy_until_cancelled(token)


def variadic(*args: CancelToken) -> None:
    healthy_until_cancelled(args[0])


def extra_defaults(token: CancelToken, retries: int = 3, delay: float = 0.1) -> None:
    healthy_until_cancelled(token)


def keyword_only_default(token: CancelToken, *, retries: int = 3) -> None:
    healthy_until_cancelled(token)


class NoSignature:
    """A callable whose signature `inspect` cannot tell, as some C callables on
    some Python versions (``operator.methodcaller`` before 3.13)."""

    @property
    def __signature__(self) -> inspect.Signature:
        raise ValueError("no signature found")

    def __call__(self, token: CancelToken) -> None:
        healthy_until_cancelled(token)


class Worker:
    def run(self, token: CancelToken) -> None:
        healthy_until_cancelled(token)

    def __call__(self, token: CancelToken) -> None:
        healthy_until_cancelled(token)


class Job:
    """A class is a runnable when its constructor takes the token."""

    def __init__(self, token: CancelToken) -> None:
        healthy_until_cancelled(token)


def runs_a_coroutine(main: Callable[[CancelToken], object]) -> Callable[[CancelToken], None]:
    """A decorator: the plain function it returns runs the coroutine function it
    wraps, so it is a fine runnable although `inspect.unwrap` finds a coroutine."""

    @functools.wraps(main)
    def worker(token: CancelToken) -> None:
        asyncio.run(main(token))  # type: ignore[arg-type]
        token.wait()

    return worker


@runs_a_coroutine
async def decorated(token: CancelToken) -> None:
    token.signal(Signal.HEALTHY)


GOOD: dict[str, object] = {
    "plain function": plain,
    "lambda": lambda token: healthy_until_cancelled(token),
    "partial": functools.partial(with_prefix, "x"),
    "partial with a keyword": functools.partial(extra_defaults, retries=1),
    "bound method": Worker().run,
    "class": Job,
    "callable object": Worker(),
    "*args": variadic,
    "extra defaulted parameters": extra_defaults,
    "defaulted keyword-only parameter": keyword_only_default,
    "sync wrapper of a coroutine function": decorated,
    "callable without a signature": NoSignature(),
    "C callable": operator.methodcaller("wait"),
}


class Parent(NamedTuple):
    sup: Supervisor
    inc: Incarnation


def _parent(harness: Harness, entry: str) -> Parent:
    """A root that runs what the test tells it to: NEW, or HEALTHY for spawn."""
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    if entry == "spawn":
        inc.healthy()
    return Parent(sup, inc)


def _add(inc: Incarnation, entry: str, runnable: object) -> None:
    """Have the parent start ``runnable`` as child ``a`` with ``entry``, beside a
    valid member ``ok`` for run_group; an error is raised here."""
    if entry == "run":
        inc.call(lambda t: t.run("a", runnable))  # type: ignore[arg-type]
    elif entry == "run_group":
        inc.call(lambda t: t.run_group({"ok": plain, "a": runnable}))  # type: ignore[dict-item]
    else:
        inc.call(lambda t: t.spawn("a", runnable))  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", list(BAD))
def test_a_runnable_that_would_restart_for_ever_is_a_type_error_in_the_caller(
    harness: Harness, entry: str, kind: str
) -> None:
    runnable, reason = BAD[kind]
    if entry == "Supervisor":
        with pytest.raises(TypeError) as err:
            Supervisor(runnable, logger=harness.logger)  # type: ignore[arg-type]
        where = "the root runnable"
    else:
        parent = _parent(harness, entry)
        with pytest.raises(TypeError) as err:
            _add(parent.inc, entry, runnable)
        where = "child 'a' of root"
    message = str(err.value)
    assert message.startswith(f"{where} {runnable!r} "), message
    assert reason in message, message
    assert "a callable taking one positional argument, its CancelToken" in message, message
    if "coroutine" in reason or "async" in reason:
        assert "asyncio.run(" in message, message
    if entry == "Supervisor":
        return
    # Nothing was created, not even the valid member of the group, and the parent
    # runs on as it was: it may start the same children with a good runnable.
    assert parent.sup.wait_settled(timeout=10)
    assert list(parent.sup.snapshot()) == ["root"]
    status = parent.sup.snapshot()["root"]
    assert (status.state, status.running, status.restarts) == (
        State.HEALTHY if entry == "spawn" else State.NEW,
        True,
        0,
    )
    _add(parent.inc, entry, plain)
    wait_status(parent.sup, "root.a", state=State.HEALTHY, running=True)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", list(GOOD))
def test_every_callable_taking_one_positional_argument_is_accepted_and_runs(
    harness: Harness, entry: str, kind: str
) -> None:
    if entry == "Supervisor":
        sup, dn = harness.start(GOOD[kind]), "root"  # type: ignore[arg-type]
    else:
        parent = _parent(harness, entry)
        _add(parent.inc, entry, GOOD[kind])
        sup, dn = parent.sup, "root.a"
    # methodcaller("wait") only waits: it never signals, so it stays NEW.
    state = State.NEW if kind.startswith("C callable") else State.HEALTHY
    wait_status(sup, dn, state=state, running=True)
    assert sup.wait_settled(timeout=10)
    status = sup.snapshot()[dn]
    assert (status.state, status.running, status.restarts, status.last_error) == (
        state,
        True,
        0,
        None,
    )


def test_the_callable_without_a_signature_is_one_inspect_cannot_tell() -> None:
    with pytest.raises(ValueError):
        inspect.signature(NoSignature())


def test_a_non_callable_says_what_a_runnable_must_be() -> None:
    with pytest.raises(TypeError, match=r"^child 'x' of root\.a must be a callable taking one"):
        require_runnable(42, "child 'x' of root.a")
