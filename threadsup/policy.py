"""Restart policies: backoff delays, restart types, intensity, shutdown.

Everything here is a frozen, validated value, so a bad policy fails where it
is written rather than when a node first dies.
"""

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
    ``[1 - jitter, 1 + jitter]``. A DONE signal starts the count again, and so
    does HEALTHY once the node has stayed HEALTHY for ``stable`` seconds (0: at
    once), which ends healthy-then-crash loops.
    """

    initial: float = 0.5
    multiplier: float = 1.5
    maximum: float = 60.0
    jitter: float = 0.5
    stable: float = 0.0

    def __post_init__(self) -> None:
        for field, value in (
            ("initial", self.initial),
            ("multiplier", self.multiplier),
            ("maximum", self.maximum),
            ("jitter", self.jitter),
            ("stable", self.stable),
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

#: OTP's restart types: ``permanent`` always restarts; ``transient`` restarts
#: only after a failure (a normal return ends it as DONE); ``temporary`` never
#: restarts, also not with its group.
Restart = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[Restart, ...] = ("permanent", "transient", "temporary")


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
    #: The restart type: ``permanent``, ``transient`` or ``temporary``.
    restart: Restart = "permanent"
    #: At most this many failures within ``within`` seconds; one more and the
    #: node gives up and its parent is treated as dead. ``None``: no limit.
    max_restarts: int | None = None
    #: The sliding window of ``max_restarts``, in seconds.
    within: float = 60.0
    #: The delays between restarts; ``None`` takes the supervisor's.
    backoff: Backoff | None = None

    def __post_init__(self) -> None:
        if self.shutdown_timeout is not None:
            check_seconds("shutdown_timeout", self.shutdown_timeout)
        _check_choice("on_stuck", self.on_stuck, ON_STUCK)
        _check_choice("restart", self.restart, RESTART_TYPES)
        if self.max_restarts is not None and (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise ValueError(f"max_restarts must be an int >= 0 or None, not {self.max_restarts!r}")
        check_seconds("within", self.within)
        if self.within == 0:
            raise ValueError("within must be more than 0 seconds")
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a threadsup.Backoff or None, not {self.backoff!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_seconds(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


DEFAULT_POLICY = ChildPolicy()
