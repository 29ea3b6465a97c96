"""Times as the API writes them: ISO 8601 in UTC with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: int | datetime) -> str:
    """``moment`` (unix seconds or an aware datetime) as the API serialises it."""
    value = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int) else moment
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
