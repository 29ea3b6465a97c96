"""Cursor pagination, the same for every list in the API.

A list takes ``?limit=&cursor=`` and answers ``{"data": [...], "has_more",
"next_cursor"}``. The cursor is the sort key of the last row returned
(keyset pagination): pages stay stable while rows are added, and a page
costs the same however deep it is. It is opaque to clients; a cursor this
API did not issue is a 422 naming the ``cursor`` field.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.http.errors import invalid_field

T = TypeVar("T")
Row = TypeVar("Row")

MAX_LIMIT = 200


class PageQuery(BaseModel):
    """Query parameters of every list; extend it with the list's filters."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="Rows per page.")
    cursor: str | None = Field(
        default=None, max_length=512, description="`next_cursor` of the previous page."
    )


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


def encode_cursor(*values: str | int | datetime) -> str:
    encoded = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(encoded)).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: type) -> tuple[Any, ...]:
    """The values of a cursor, checked against ``kinds`` (str, int or datetime)."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError("shape")
        values: list[Any] = []
        for value, kind in zip(raw, kinds, strict=True):
            if kind is datetime:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError("naive time")
                values.append(parsed.astimezone(UTC))
            elif _is(value, kind):
                values.append(value)
            else:
                raise ValueError("type")
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise invalid_field("cursor", "not a cursor this API issued") from exc
    return tuple(values)


# Every int a cursor holds is a bigint key; every str goes into a text column.
_BIGINT = range(-(2**63), 2**63)


def _is(value: Any, kind: type) -> bool:
    # bool is an int to Python, never to a cursor.
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    # What Postgres cannot take as a parameter would fail the list's query
    # (a 500): an int beyond bigint, a string holding a NUL, which text
    # cannot store. No cursor this API issued holds either.
    if isinstance(value, int):
        return value in _BIGINT
    if isinstance(value, str):
        return "\x00" not in value
    return True


def page_of(
    rows: Sequence[Row],
    limit: int,
    view: Callable[[Row], T],
    cursor_of: Callable[[Row], tuple[str | int | datetime, ...]],
) -> Page[T]:
    """Build a page from ``limit + 1`` rows fetched in sort order."""
    shown = rows[:limit]
    more = len(rows) > limit
    return Page[T](
        data=[view(r) for r in shown],
        has_more=more,
        next_cursor=encode_cursor(*cursor_of(shown[-1])) if more and shown else None,
    )
