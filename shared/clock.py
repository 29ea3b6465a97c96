"""Time conversions. Every datetime in the product is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def from_unix(seconds: int) -> datetime:
    """Stripe timestamps are integer unix seconds."""
    return datetime.fromtimestamp(seconds, UTC)
