"""Reading the ledger: filtered, keyset-paginated listing and single events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.webhooks.contract import EventDetail, EventsQuery, EventSummary
from shared.api.pagination import Page, decode_cursor, page_of
from shared.db import DbConnection

# Summary columns for listings; the payload only on the single-event view.
_SUMMARY = (
    "e.id, e.type, e.api_version, e.livemode, e.created_at, e.received_at,"
    " e.replay_count, e.last_replayed_at, COALESCE(i.duplicate_count, 0) AS duplicate_count"
)
_FROM = "FROM events e LEFT JOIN inbox i ON i.event_id = e.id AND i.queue = $1"


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "api_version": row["api_version"],
        "livemode": row["livemode"],
        "created": row["created_at"],
        "received_at": row["received_at"],
        "duplicates": row["duplicate_count"],
        "replay_count": row["replay_count"],
        "last_replayed_at": row["last_replayed_at"],
    }


async def list_events(
    pool: asyncpg.Pool[Any], queue: str, query: EventsQuery
) -> Page[EventSummary]:
    clauses: list[str] = []
    args: list[Any] = [queue]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.type is not None:
        clauses.append(f"e.type = {arg(query.type)}")
    if query.created_gte is not None:
        clauses.append(f"e.created_at >= {arg(query.created_gte)}")
    if query.created_lt is not None:
        clauses.append(f"e.created_at < {arg(query.created_lt)}")
    if query.cursor is not None:
        created, event_id = decode_cursor(query.cursor, datetime, str)
        clauses.append(f"(e.created_at, e.id) < ({arg(created)}, {arg(event_id)})")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only placeholders are interpolated; values travel as parameters.
    sql = (
        f"SELECT {_SUMMARY} {_FROM} {where}"
        f" ORDER BY e.created_at DESC, e.id DESC LIMIT {arg(query.limit + 1)}"
    )
    rows = await pool.fetch(sql, *args)
    return page_of(
        rows,
        query.limit,
        lambda r: EventSummary.model_validate(_summary(r)),
        lambda r: (r["created_at"], r["id"]),
    )


async def get_event(pool: asyncpg.Pool[Any], queue: str, event_id: str) -> EventDetail | None:
    row = await pool.fetchrow(
        f"SELECT {_SUMMARY}, e.payload, e.payload_text {_FROM} WHERE e.id = $2",
        queue,
        event_id,
    )
    if row is None:
        return None
    # payload_text: the event as sent, kept when its text holds a NUL that
    # the jsonb copy could not (``services/webhooks/ledger.py``).
    payload = row["payload"] if row["payload_text"] is None else orjson.loads(row["payload_text"])
    return EventDetail.model_validate({**_summary(row), "payload": payload})


async def mark_replayed(conn: DbConnection, event_id: str) -> None:
    await conn.execute(
        "UPDATE events SET replay_count = replay_count + 1, last_replayed_at = now() WHERE id = $1",
        event_id,
    )
