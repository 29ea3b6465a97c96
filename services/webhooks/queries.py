"""Reading the ledger: filtered, keyset-paginated listing and single events."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

# Summary columns for listings; the payload only on the single-event view.
_SUMMARY = (
    "e.id, e.type, e.api_version, e.livemode, e.created_at, e.received_at,"
    " e.replay_count, e.last_replayed_at, COALESCE(i.duplicate_count, 0) AS duplicate_count"
)
_FROM = "FROM events e LEFT JOIN inbox i ON i.event_id = e.id AND i.queue = $1"


@dataclass(frozen=True)
class EventFilter:
    type: str | None = None
    created_gte: datetime | None = None
    created_lt: datetime | None = None
    cursor: tuple[datetime, str] | None = None
    limit: int = 50


def encode_cursor(created_at: datetime, event_id: str) -> str:
    raw = orjson.dumps([created_at.isoformat(), event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raise ValueError (TypeError, OverflowError) for anything that is not a cursor we issued."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, event_id = orjson.loads(base64.urlsafe_b64decode(padded))
    value = datetime.fromisoformat(created)
    if value.tzinfo is None or not isinstance(event_id, str):
        raise ValueError("not a cursor we issued")
    return value.astimezone(UTC), event_id


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "api_version": row["api_version"],
        "livemode": row["livemode"],
        "created": row["created_at"].isoformat(),
        "received_at": row["received_at"].isoformat(),
        "duplicates": row["duplicate_count"],
        "replay_count": row["replay_count"],
        "last_replayed_at": row["last_replayed_at"].isoformat()
        if row["last_replayed_at"]
        else None,
    }


async def list_events(
    pool: asyncpg.Pool[Any], queue: str, flt: EventFilter
) -> tuple[list[dict[str, Any]], str | None]:
    clauses: list[str] = []
    args: list[Any] = [queue]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if flt.type is not None:
        clauses.append(f"e.type = {arg(flt.type)}")
    if flt.created_gte is not None:
        clauses.append(f"e.created_at >= {arg(flt.created_gte)}")
    if flt.created_lt is not None:
        clauses.append(f"e.created_at < {arg(flt.created_lt)}")
    if flt.cursor is not None:
        created, event_id = flt.cursor
        clauses.append(f"(e.created_at, e.id) < ({arg(created)}, {arg(event_id)})")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only placeholders are interpolated; values travel as parameters.
    sql = (
        f"SELECT {_SUMMARY} {_FROM} {where}"
        f" ORDER BY e.created_at DESC, e.id DESC LIMIT {arg(flt.limit + 1)}"
    )
    rows = await pool.fetch(sql, *args)
    page = rows[: flt.limit]
    next_cursor = None
    if len(rows) > flt.limit:
        last = page[-1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return [_summary(r) for r in page], next_cursor


async def get_event(pool: asyncpg.Pool[Any], queue: str, event_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {_SUMMARY}, e.payload {_FROM} WHERE e.id = $2",
        queue,
        event_id,
    )
    if row is None:
        return None
    return {**_summary(row), "payload": row["payload"]}


async def mark_replayed(pool: asyncpg.Pool[Any], event_id: str) -> None:
    await pool.execute(
        "UPDATE events SET replay_count = replay_count + 1, last_replayed_at = now() WHERE id = $1",
        event_id,
    )
