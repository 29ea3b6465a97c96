"""Time as an injectable dependency, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def from_unix(seconds: int) -> datetime:
    """Stripe timestamps are integer unix seconds."""
    return datetime.fromtimestamp(seconds, UTC)
