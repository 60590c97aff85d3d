"""Restart delays: how long a DEAD node waits before its next incarnation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

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
