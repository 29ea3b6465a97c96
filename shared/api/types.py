"""Field types the API's models share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, WithJsonSchema

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def _in_utc(value: datetime) -> datetime:
    try:
        moment = value.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:59-23:00 is past the calendar in UTC
        raise ValueError("outside the representable range") from exc
    if moment < _EARLIEST:
        raise ValueError("before 1970-01-01T00:00:00Z")
    return moment


# What the validator takes, documented as such: clients (and fuzzers) may send
# unix seconds as well as an ISO 8601 string with its offset.
_ACCEPTED = WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
    mode="validation",
)
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc), _ACCEPTED]
"""A point in time with its offset (ISO 8601 or unix seconds), held in UTC."""
