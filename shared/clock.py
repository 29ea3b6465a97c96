"""Time. Every datetime in the product is timezone-aware UTC.

Code that decides by the time (a grace period, a due attempt, an expiry)
reads it from a :class:`Clock` it was given, never from ``datetime.now``
directly, so tests can set the time instead of waiting for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


def from_unix(seconds: int) -> datetime:
    """Stripe timestamps are integer unix seconds."""
    return datetime.fromtimestamp(seconds, UTC)


def to_unix(moment: datetime) -> int:
    return int(moment.timestamp())


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class SettableClock:
    """A clock that stands still until moved: for tests and replays."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a clock keeps aware UTC time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        self._now += delta
