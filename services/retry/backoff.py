"""When the next dunning attempt is due: exponential backoff with full jitter.

A pure function of the attempt number, the schedule and a random draw, so it
is tested without time or randomness. "Full jitter" (the whole delay is
random up to the exponential cap) spreads a day's failures across the window
instead of retrying them all at the same instant, which matters when a batch
of renewals failed together (an issuer outage, say).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Schedule:
    first_delay: timedelta
    factor: float
    max_delay: timedelta
    max_attempts: int

    def __post_init__(self) -> None:
        if self.first_delay <= timedelta(0) or self.max_delay <= timedelta(0):
            raise ValueError("delays must be positive")
        if self.factor < 1:
            raise ValueError("the factor must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("at least one attempt")

    def cap(self, attempt: int) -> timedelta:
        """The longest wait before ``attempt`` (1-based): min(max, first * factor**(n-1))."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        seconds = self.first_delay.total_seconds() * self.factor ** (attempt - 1)
        return min(self.max_delay, timedelta(seconds=seconds))


def delay_before(
    schedule: Schedule, attempt: int, draw: Callable[[], float] = random.random
) -> timedelta | None:
    """How long to wait before ``attempt``; None once ``max_attempts`` are spent.

    ``draw`` returns a number in [0, 1): the fraction of the cap to wait.
    """
    if attempt > schedule.max_attempts:
        return None
    fraction = draw()
    if not 0.0 <= fraction < 1.0:
        raise ValueError("draw must return a number in [0, 1)")
    return schedule.cap(attempt) * fraction
