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

from threadsup._seconds import check_interval, check_seconds


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between consecutive restarts of a DEAD node.

    Before the n-th consecutive restart (n = 0, 1, 2, ...) the supervisor waits
    ``min(initial * multiplier ** n, maximum)``, multiplied by a random factor in
    ``[1 - jitter, 1 + jitter]``. A DONE signal starts the count again, and so
    does HEALTHY once the node has stayed HEALTHY for ``stable`` seconds (0: at
    once), which ends healthy-then-crash loops.

    ``initial``, ``maximum`` and ``stable`` are seconds, infinity included:
    ``maximum=inf`` caps nothing; ``initial=inf`` makes every delay
    ``maximum``, and with ``maximum=inf`` too a DEAD node waits for ever (until
    `Supervisor.restart` or a restart of an ancestor); ``stable=inf`` keeps
    HEALTHY from ever resetting the count.
    """

    initial: float = 0.5
    multiplier: float = 1.5
    maximum: float = 60.0
    jitter: float = 0.5
    stable: float = 0.0

    def __post_init__(self) -> None:
        for field in ("initial", "maximum", "stable"):
            check_seconds(f"Backoff.{field}", getattr(self, field))
        for field, value in (("multiplier", self.multiplier), ("jitter", self.jitter)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Backoff.{field} must be a number, not {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"Backoff.{field} must be a finite number, not {value!r}")
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, not {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
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
            waits = _saturating(expo)
        for wait in waits:
            delay = min(float(wait), self.maximum)
            if self.jitter and delay != math.inf:  # inf * 0 would be NaN
                delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
            yield delay


def _saturating(waits: Iterator[float]) -> Iterator[float]:
    """``waits``, then infinity once its arithmetic overflows: with no finite
    ``maximum``, ``initial * multiplier ** n`` passes the float range at last."""
    try:
        yield from waits
    except OverflowError:
        pass
    yield from itertools.repeat(math.inf)


#: What the supervisor does with a cancelled runnable still running after its
#: shutdown timeout.
OnStuck = Literal["wait", "abandon", "interrupt"]
ON_STUCK: tuple[OnStuck, ...] = ("wait", "abandon", "interrupt")

#: OTP's restart types: ``permanent`` always restarts; ``transient`` restarts
#: only after a failure (a normal return ends it as DONE); ``temporary`` never
#: restarts, also not with its group.
Restart = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[Restart, ...] = ("permanent", "transient", "temporary")


@dataclass(frozen=True, init=False)
class ChildPolicy:
    """How the supervisor treats one child: the keyword arguments of ``run``,
    ``run_group`` and ``spawn``. Built by keyword only, so that a new field can
    never shift the meaning of a caller's positions."""

    #: Seconds a cancelled runnable may take to exit before it counts as stuck;
    #: ``None`` takes the supervisor's ``shutdown_timeout``.
    shutdown_timeout: float | None
    #: ``"wait"`` (the contract: its subtree restarts once it exits), ``"abandon"``
    #: (restart without it, leaving its thread detached) or ``"interrupt"`` (raise
    #: `Cancelled` inside its thread; reaches Python code, not a call blocked in C).
    on_stuck: OnStuck
    #: The restart type: ``permanent``, ``transient`` or ``temporary``.
    restart: Restart
    #: At most this many failures within ``within`` seconds; one more and the
    #: node gives up and its parent is treated as dead. ``None``: no limit.
    max_restarts: int | None
    #: The sliding window of ``max_restarts``, in seconds.
    within: float
    #: The delays between restarts; ``None`` takes the supervisor's.
    backoff: Backoff | None
    #: Whether the node's incarnations may run on a parked thread, and park
    #: theirs when they end; ``None`` follows the supervisor's ``reuse_threads``.
    reuse_thread: bool | None

    def __init__(
        self,
        *,
        shutdown_timeout: float | None = None,
        on_stuck: OnStuck = "wait",
        restart: Restart = "permanent",
        max_restarts: int | None = None,
        within: float = 60.0,
        backoff: Backoff | None = None,
        reuse_thread: bool | None = None,
        where: str = "the child policy",
    ) -> None:
        """``where`` says where the policy was given, for the messages:
        ``"run() on root.a"``."""
        if shutdown_timeout is not None:
            check_seconds(f"shutdown_timeout of {where}", shutdown_timeout)
        _check_choice("on_stuck", on_stuck, ON_STUCK)
        _check_choice("restart", restart, RESTART_TYPES)
        if max_restarts is not None and (
            isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0
        ):
            raise ValueError(f"max_restarts must be an int >= 0 or None, not {max_restarts!r}")
        check_interval(f"within of {where}", within)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a threadsup.Backoff or None, not {backoff!r}")
        if reuse_thread is not None and not isinstance(reuse_thread, bool):
            raise TypeError(
                f"reuse_thread of {where} must be True, False or None (follow the "
                f"supervisor's reuse_threads), not {reuse_thread!r}"
            )
        # Frozen: the fields are set the way dataclasses set them, past __setattr__.
        for name, value in (
            ("shutdown_timeout", shutdown_timeout),
            ("on_stuck", on_stuck),
            ("restart", restart),
            ("max_restarts", max_restarts),
            ("within", within),
            ("backoff", backoff),
            ("reuse_thread", reuse_thread),
        ):
            object.__setattr__(self, name, value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


DEFAULT_POLICY = ChildPolicy()
