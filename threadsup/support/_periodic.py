"""`periodic`: a runnable that calls a function on a fixed schedule until cancelled."""

from __future__ import annotations

import math
import time
from typing import Callable

from threadsup._seconds import check_interval
from threadsup._token import CancelToken, Signal

#: The shortest ``interval`` of `periodic`. A thread wakes up later than asked by about
#: that much on a busy machine (and by up to the 5 ms switch interval while another
#: thread holds the GIL): with a shorter interval most ticks would be missed and
#: warned about. Work that must run more often is a loop, not a schedule.
MIN_INTERVAL = 0.001


def periodic(interval: float, fn: Callable[[CancelToken], object]) -> Callable[[CancelToken], None]:
    """A runnable that calls ``fn(token)`` every ``interval`` seconds until cancelled.

    - The first call is at once; call ``k`` is due ``k * interval`` seconds
      after the start, on the monotonic clock, so the schedule does not drift.
      When a call overruns, the ticks it missed are skipped (with a WARNING),
      never made up in a burst.
    - HEALTHY after the first call that returns; ``fn`` must not signal.
    - An exception from ``fn`` is a death (restarted after the backoff delay,
      on a fresh schedule). Its return value is ignored.
    - Between calls it waits with ``token.wait()``, so cancellation ends it at
      once; a call in progress is not interrupted (``fn`` may watch the token).
    - ``interval=inf`` calls ``fn`` once, then waits for the cancellation.
      Below `MIN_INTERVAL` (1 ms) is a `ValueError`: a thread cannot keep
      such a schedule, so it would miss nearly every tick.
    """
    seconds = check_interval("interval of periodic()", interval, MIN_INTERVAL)
    if not callable(fn):
        raise TypeError(f"periodic() takes a callable fn(token), not {fn!r}")
    return _Periodic(seconds, fn)


class _Periodic:
    """The runnable `periodic` returns."""

    def __init__(self, interval: float, fn: Callable[[CancelToken], object]) -> None:
        self._interval = interval
        self._fn = fn

    def __repr__(self) -> str:
        return f"periodic({self._interval!r}, {self._fn!r})"

    def __call__(self, token: CancelToken) -> None:
        interval = self._interval
        start = time.monotonic()
        tick = 0
        healthy = False
        while not token.cancelled:
            self._fn(token)
            if token.cancelled:
                return
            if not healthy:
                token.signal(Signal.HEALTHY)
                healthy = True
            now = time.monotonic()
            following = max(tick + 1, math.floor((now - start) / interval) + 1)
            if following > tick + 1:
                token.logger.warning(
                    "call %d of %r took %.3g s, more than the %.3g s interval: skipped %d tick(s)",
                    tick,
                    self._fn,
                    now - (start + tick * interval),
                    interval,
                    following - tick - 1,
                    extra={"skipped": following - tick - 1},
                )
            tick = following
            due = start + tick * interval
            while True:
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                if token.wait(remaining):
                    return
