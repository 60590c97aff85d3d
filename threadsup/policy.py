"""Restart delays: how long a DEAD node waits before its next incarnation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import backoff as backoff_package


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between consecutive restarts of a DEAD node.

    Before the n-th consecutive restart (n = 0, 1, 2, ...) the supervisor waits
    ``min(initial * multiplier ** n, maximum)``, multiplied by a random factor in
    ``[1 - jitter, 1 + jitter]``. A HEALTHY or DONE signal starts the count again.
    """

    initial: float = 0.5
    multiplier: float = 1.5
    maximum: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for field, value in (
            ("initial", self.initial),
            ("multiplier", self.multiplier),
            ("maximum", self.maximum),
            ("jitter", self.jitter),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Backoff.{field} must be a number, not {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Backoff.{field} must be a finite number >= 0, not {value!r}")
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, not {self.multiplier!r}")
        if self.jitter > 1:
            raise ValueError(f"Backoff.jitter must be between 0 and 1, not {self.jitter!r}")

    def delays(self) -> Iterator[float]:
        """Yield the delay before each consecutive restart, jitter applied.

        Built on the ``backoff`` package's ``expo`` wait generator. A generator is
        not thread-safe: advance it only under the supervisor's lock.
        """
        if self.initial == 0 or self.maximum == 0:
            # expo would compute 0 * multiplier ** n for ever and overflow.
            waits: Iterator[float] = itertools.repeat(0.0)
        else:
            expo = backoff_package.expo(
                base=self.multiplier, factor=self.initial, max_value=self.maximum
            )
            # The generator yields a priming value first (None in backoff 2.x, 0 in
            # its fork python-backoff 3.x): discard it whatever it is.
            next(expo)
            waits = expo
        for wait in waits:
            delay = min(float(wait), self.maximum)
            if self.jitter:
                delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
            yield delay


#: What the supervisor does with a cancelled runnable still running after its
#: shutdown timeout.
OnStuck = Literal["wait", "abandon", "interrupt"]
ON_STUCK: tuple[OnStuck, ...] = ("wait", "abandon", "interrupt")


@dataclass(frozen=True)
class ChildPolicy:
    """How the supervisor treats one child: the keyword arguments of ``run``/``run_group``."""

    #: Seconds a cancelled runnable may take to exit before it counts as stuck;
    #: ``None`` takes the supervisor's ``shutdown_timeout``.
    shutdown_timeout: float | None = None
    #: ``"wait"`` (the contract: its subtree restarts once it exits), ``"abandon"``
    #: (restart without it, leaving its thread detached) or ``"interrupt"`` (raise
    #: `Cancelled` inside its thread; reaches Python code, not a call blocked in C).
    on_stuck: OnStuck = "wait"

    def __post_init__(self) -> None:
        if self.shutdown_timeout is not None:
            check_seconds("shutdown_timeout", self.shutdown_timeout)
        if self.on_stuck not in ON_STUCK:
            raise ValueError(
                f"on_stuck must be one of {', '.join(ON_STUCK)}, not {self.on_stuck!r}"
            )


def check_seconds(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


DEFAULT_POLICY = ChildPolicy()
