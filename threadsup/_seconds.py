"""Seconds: the one rule for every time value a caller passes, and the clamp
that keeps any of them from reaching a blocking call the platform refuses.

The rule: a number of seconds is an ``int`` or a ``float`` (a ``bool`` is not),
else `TypeError`; NaN or a negative is a `ValueError`. Infinity is a number of
seconds and means "for ever" (no deadline). Public calls check their arguments
first thing, so a bad one changes nothing.

Blocking calls raise `OverflowError` past a platform limit (measured on
Python 3.9 and 3.13, Linux): a lock, condition, event, ``SimpleQueue.get`` or
thread join past `threading.TIMEOUT_MAX` (about 292 years); a selector (epoll,
poll, and so ``serve_forever``) past 2**31 - 1 ms (24.8 days). No blocking call
of threadsup waits longer than `MAX_WAIT` at a time: a longer wait is taken in
turns (`wait_in_turns`), or looked at again by the loop that made it.
"""

from __future__ import annotations

import math
import time
from typing import Callable

#: The longest single blocking call: a day, far below every platform's limit.
MAX_WAIT = 86400.0


def check_seconds(name: str, value: object) -> float:
    """``value`` as a float once it is a number of seconds >= 0 (infinity included).

    ``name`` says what the value is, for the messages: ``"timeout of wait() on root.a"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    seconds = _as_float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return seconds


def check_timeout(name: str, value: object) -> float | None:
    """`check_seconds`, or ``None`` (no timeout) for ``None``."""
    return None if value is None else check_seconds(name, value)


def check_interval(name: str, value: object, minimum: float = 0.0) -> float:
    """`check_seconds`, refusing 0 too, and anything below ``minimum``: the period
    of something repeated."""
    seconds = check_seconds(name, value)
    if seconds == 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    if seconds < minimum:
        raise ValueError(f"{name} must be at least {minimum:g} seconds, not {value!r}")
    return seconds


def check_instant(name: str, value: object) -> float:
    """A `time.monotonic` time point: a number, not NaN; one in the past is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a time.monotonic() time in seconds, not {value!r}")
    instant = _as_float(value)
    if math.isnan(instant):
        raise ValueError(f"{name} must be a time.monotonic() time in seconds, not {value!r}")
    return instant


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int past the float range: as good as infinite
        return math.inf if value > 0 else -math.inf


def deadline_after(timeout: float | None) -> float | None:
    """The `time.monotonic` deadline of a checked timeout; ``None`` (no deadline)
    for ``None`` and infinity."""
    if timeout is None or timeout == math.inf:
        return None
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (0 once passed); ``None`` without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def turn(deadline: float | None) -> float | None:
    """The timeout of one blocking call towards ``deadline``: what is left, at
    most `MAX_WAIT`; ``None`` (block) without a deadline."""
    left = remaining(deadline)
    return None if left is None else min(left, MAX_WAIT)


def wait_in_turns(wait: Callable[[float | None], object], deadline: float | None) -> bool:
    """Call ``wait(timeout)`` until it returns true or ``deadline`` passes, each
    call given a `turn`; return whether it returned true.

    ``wait`` is ``Event.wait`` or alike: true once what it waits for has happened.
    """
    while True:
        if wait(turn(deadline)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
