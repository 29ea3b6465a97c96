"""The dead-letter store: every dead letter of the product, in Postgres.

A row moves ``dead`` -> ``redriving`` (claimed by one redrive, under a row
lock, so two redrives at once never take the same letter) -> ``redriven``
(its copy confirmed in its queue), or ``dead`` -> ``discarded`` (an operator
gave up on it, with a reason). A message that fails again after a redrive
comes back to ``dead`` in the same row, counted in ``times_dead_lettered``.
Reading never changes a row: listing is a plain ``SELECT``.

A letter the table refuses as it came (a NUL in its event type or a header
the row keeps as text, an attempt count beyond an integer) is stored fitted
(:func:`record_fitted`): those fields cleaned, its body and its JSON headers
as they are (both always fit: ``bytea``, and ``jsonb`` through the pool's
NUL-safe codec), why it did not fit in ``unfit_reason``, and its headers as
received, escaped, in ``raw_headers``. A normal letter's row is as it was,
with ``unfit_reason`` NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage

from services.webhooks.contract import (
    DeadLetterQueueSummary,
    DeadLettersQuery,
    DeadLetterView,
)
from shared import db, metrics
from shared.api.pagination import Page, decode_cursor, page_of
from shared.broker import dead_letters
from shared.broker.topology import dead_letter_queue
from shared.db import DbConnection

_COLUMNS = (
    "id, queue, message_id, event_type, routing_key, state, attempts, last_error,"
    " times_dead_lettered, first_seen_at, last_seen_at, redrive_count, last_redriven_at,"
    " discarded_at, discard_reason, body, unfit_reason"
)


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def view(row: asyncpg.Record) -> DeadLetterView:
    return DeadLetterView(
        id=row["id"],
        queue=row["queue"],
        message_id=row["message_id"],
        event_type=row["event_type"],
        original_routing_key=row["routing_key"],
        state=row["state"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        times_dead_lettered=row["times_dead_lettered"],
        first_seen_at=row["first_seen_at"],
        last_seen_at=row["last_seen_at"],
        redrive_count=row["redrive_count"],
        last_redriven_at=row["last_redriven_at"],
        discarded_at=row["discarded_at"],
        discard_reason=row["discard_reason"],
        body=_body(row["body"]),
        unfit_reason=row["unfit_reason"],
    )


# What a text field of a fitted letter keeps, in characters; a letter's
# headers as received keep at most _RAW_HEADERS_LIMIT, then are marked truncated.
_FIELD_LIMIT = 2_000
_RAW_HEADERS_LIMIT = 64 * 1024
_INT32_MAX = 2**31 - 1


async def record(pool: asyncpg.Pool[Any], queue: str, message: AbstractIncomingMessage) -> bool:
    """Store one message taken from ``queue``'s dead-letter queue.

    False when this very copy was recorded already (the recorder committed,
    then lost the ack, and the broker delivered it again): nothing changes.
    A new dead-lettering of a known message puts its row back to ``dead``,
    whatever a redrive was doing with it.
    """
    headers = dict(message.headers or {})
    letter = dead_letters.DeadLetter.from_message(message)
    return await _upsert(
        pool,
        queue,
        _Row(
            letter_key=dead_letters.letter_key(message),
            message_id=message.message_id,
            event_type=letter.event_type,
            routing_key=letter.original_routing_key or message.routing_key,
            body=message.body,
            headers=dead_letters.json_headers(headers),
            last_error=letter.last_error,
            attempts=letter.attempts,
            death_mark=dead_letters.death_mark(headers),
        ),
    )


async def record_fitted(
    pool: asyncpg.Pool[Any], queue: str, message: AbstractIncomingMessage, reason: str
) -> bool:
    """Store a letter :func:`record` could not, in a form that always fits.

    Its text fields with NUL as U+FFFD, anything Postgres' UTF-8 refuses
    replaced, and capped; its attempt count within an integer; its headers as
    JSON when they convert (else none: ``raw_headers`` keeps them); ``reason``
    why it did not fit as it came. The body is kept whole, so a redrive sends
    what the consumer failed on. The same copy delivered again finds its row,
    as with :func:`record`.
    """
    headers = dict(message.headers or {})
    letter = dead_letters.DeadLetter.from_message(message)
    raw = ascii(headers)
    try:
        json_headers: dict[str, Any] = dead_letters.json_headers(headers)
        orjson.dumps(json_headers)
    except (TypeError, ValueError):
        json_headers = {}
    return await _upsert(
        pool,
        queue,
        _Row(
            letter_key=_fit(dead_letters.letter_key(message)) or "",
            message_id=_fit(message.message_id),
            event_type=_fit(letter.event_type),
            routing_key=_fit(letter.original_routing_key or message.routing_key),
            body=message.body,
            headers=json_headers,
            last_error=_fit(letter.last_error),
            attempts=min(max(letter.attempts, 0), _INT32_MAX),
            death_mark=_fit(dead_letters.death_mark(headers), limit=_RAW_HEADERS_LIMIT) or "",
            unfit_reason=_fit(reason) or "unknown",
            raw_headers=raw[:_RAW_HEADERS_LIMIT],
            raw_headers_truncated=len(raw) > _RAW_HEADERS_LIMIT,
        ),
    )


def _fit(text: str | None, limit: int = _FIELD_LIMIT) -> str | None:
    """``text`` as a Postgres ``text`` value always takes it."""
    if text is None:
        return None
    cleaned = text.replace(db.NUL, db.NUL_STANDIN)
    # Lone surrogates (from a header decoded leniently) cannot be UTF-8.
    cleaned = cleaned.encode("utf-8", errors="replace").decode("utf-8")
    return cleaned[:limit]


@dataclass(frozen=True)
class _Row:
    """One dead letter's row, as :func:`_upsert` writes it."""

    letter_key: str
    message_id: str | None
    event_type: str | None
    routing_key: str | None
    body: bytes
    headers: dict[str, Any]
    last_error: str | None
    attempts: int
    death_mark: str
    unfit_reason: str | None = None
    raw_headers: str | None = None
    raw_headers_truncated: bool = False


async def _upsert(pool: asyncpg.Pool[Any], queue: str, row: _Row) -> bool:
    recorded = await pool.fetchval(
        """
        INSERT INTO dead_letters AS d (queue, letter_key, message_id, event_type, routing_key,
            body, headers, last_error, attempts, death_mark, first_seen_at, last_seen_at,
            unfit_reason, raw_headers, raw_headers_truncated)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp(), clock_timestamp(),
            $11, $12, $13)
        ON CONFLICT (queue, letter_key) DO UPDATE SET
            event_type = EXCLUDED.event_type,
            routing_key = EXCLUDED.routing_key,
            body = EXCLUDED.body,
            headers = EXCLUDED.headers,
            last_error = EXCLUDED.last_error,
            attempts = EXCLUDED.attempts,
            death_mark = EXCLUDED.death_mark,
            times_dead_lettered = d.times_dead_lettered + 1,
            last_seen_at = EXCLUDED.last_seen_at,
            state = 'dead',
            redrive_token = NULL,
            redrive_started_at = NULL,
            discarded_at = NULL,
            discard_reason = NULL,
            unfit_reason = EXCLUDED.unfit_reason,
            raw_headers = EXCLUDED.raw_headers,
            raw_headers_truncated = EXCLUDED.raw_headers_truncated
        WHERE d.death_mark <> EXCLUDED.death_mark
        RETURNING true
        """,
        queue,
        row.letter_key,
        row.message_id,
        row.event_type,
        row.routing_key,
        row.body,
        row.headers,
        row.last_error,
        row.attempts,
        row.death_mark,
        row.unfit_reason,
        row.raw_headers,
        row.raw_headers_truncated,
    )
    return bool(recorded)


async def list_letters(pool: asyncpg.Pool[Any], query: DeadLettersQuery) -> Page[DeadLetterView]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.state is not None:
        clauses.append(f"state = {arg(query.state)}")
    if query.queue is not None:
        clauses.append(f"queue = {arg(query.queue)}")
    if query.event_type is not None:
        clauses.append(f"event_type = {arg(query.event_type)}")
    if query.cursor is not None:
        (after,) = decode_cursor(query.cursor, int)
        clauses.append(f"id > {arg(after)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only placeholders are interpolated; values travel as parameters.
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM dead_letters {where}"  # noqa: S608 - placeholders only
        f" ORDER BY id LIMIT {arg(query.limit + 1)}",
        *args,
    )
    return page_of(rows, query.limit, view, lambda r: (r["id"],))


async def get(conn: DbConnection | asyncpg.Pool[Any], letter_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1",  # noqa: S608 - constant columns
        letter_id,
    )


async def summaries(pool: asyncpg.Pool[Any], queues: Sequence[str]) -> list[DeadLetterQueueSummary]:
    """Every watched queue (and any other with letters waiting): count and oldest."""
    rows = await pool.fetch(
        "SELECT queue, count(*) AS dead, min(first_seen_at) AS oldest FROM dead_letters"
        " WHERE state = 'dead' GROUP BY queue"
    )
    found = {r["queue"]: r for r in rows}
    names = list(queues) + sorted(set(found) - set(queues))
    return [
        DeadLetterQueueSummary(
            queue=name,
            dead_letter_queue=dead_letter_queue(name),
            dead=found[name]["dead"] if name in found else 0,
            oldest_first_seen_at=found[name]["oldest"] if name in found else None,
        )
        for name in names
    ]


async def refresh_metrics(pool: asyncpg.Pool[Any], queues: Sequence[str]) -> None:
    """The gauges: waiting letters and the age of the oldest, per queue (0 when none)."""
    rows = await pool.fetch(
        "SELECT queue, count(*) AS dead,"
        " extract(epoch FROM clock_timestamp() - min(first_seen_at))::float8 AS age"
        " FROM dead_letters WHERE state = 'dead' GROUP BY queue"
    )
    found = {r["queue"]: r for r in rows}
    for queue in set(queues) | set(found):
        row = found.get(queue)
        metrics.DEAD_LETTERS.labels(queue).set(row["dead"] if row else 0)
        metrics.DEAD_LETTERS_OLDEST_AGE_SECONDS.labels(queue).set(
            max(row["age"], 0.0) if row else 0.0
        )


@dataclass(frozen=True)
class RedriveFilter:
    ids: list[int] | None = None
    queue: str | None = None
    message_ids: list[str] | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class Claimed:
    id: int
    queue: str
    message_id: str | None
    body: bytes
    headers: dict[str, Any]


async def claim(
    pool: asyncpg.Pool[Any],
    which: RedriveFilter,
    *,
    token: str,
    dead_before: datetime,
    lease: timedelta,
    limit: int,
    skip: Sequence[int] = (),
) -> list[Claimed]:
    """Take up to ``limit`` waiting letters for one redrive.

    ``FOR UPDATE SKIP LOCKED``: a letter another redrive is claiming right now
    is left to it, and once claimed it is no longer ``dead``, so no other
    redrive takes it. Only letters dead since before ``dead_before`` (the
    redrive's start): one that failed again after this redrive sent it back
    waits for the next redrive rather than going round within this one. A
    claim older than ``lease`` died with its redrive and may be taken over.
    ``skip``: letters this redrive already found it cannot send.
    """
    clauses = [
        "(state = 'dead' OR (state = 'redriving' AND redrive_started_at < now() - $1::interval))",
        "last_seen_at <= $2",
    ]
    args: list[Any] = [lease, dead_before]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if which.ids is not None:
        clauses.append(f"id = ANY({arg(which.ids)}::bigint[])")
    if which.queue is not None:
        clauses.append(f"queue = {arg(which.queue)}")
    if which.message_ids is not None:
        clauses.append(f"message_id = ANY({arg(which.message_ids)}::text[])")
    if which.event_type is not None:
        clauses.append(f"event_type = {arg(which.event_type)}")
    if skip:
        clauses.append(f"NOT (id = ANY({arg(list(skip))}::bigint[]))")
    token_arg, limit_arg = arg(token), arg(limit)
    rows = await pool.fetch(
        f"""
        UPDATE dead_letters SET state = 'redriving', redrive_token = {token_arg},
            redrive_started_at = now(), redrive_count = redrive_count + 1,
            last_redriven_at = now()
        WHERE id IN (
            SELECT id FROM dead_letters WHERE {" AND ".join(clauses)}
            ORDER BY id LIMIT {limit_arg} FOR UPDATE SKIP LOCKED
        )
        RETURNING id, queue, message_id, body, headers
        """,  # noqa: S608 - placeholders only
        *args,
    )
    return sorted(
        (
            Claimed(r["id"], r["queue"], r["message_id"], r["body"], dict(r["headers"]))
            for r in rows
        ),
        key=lambda c: c.id,
    )


async def finish_redrive(
    pool: asyncpg.Pool[Any], token: str, published: list[int], unpublished: list[int]
) -> None:
    """Published letters become ``redriven``; the rest go back to ``dead``
    (their ``redrive_count``, counted at the claim so that a letter failing
    again before this runs still shows the redrive, taken back).

    Only rows still held by this redrive's token: a letter that failed again
    and was recorded meanwhile is already ``dead`` again and stays so.
    """
    async with db.transaction(pool) as conn:
        if published:
            await conn.execute(
                "UPDATE dead_letters SET state = 'redriven', redrive_token = NULL"
                " WHERE id = ANY($1::bigint[]) AND redrive_token = $2",
                published,
                token,
            )
        if unpublished:
            await conn.execute(
                "UPDATE dead_letters SET state = 'dead', redrive_token = NULL,"
                " redrive_started_at = NULL, redrive_count = redrive_count - 1"
                " WHERE id = ANY($1::bigint[]) AND redrive_token = $2",
                unpublished,
                token,
            )


async def discard(conn: DbConnection, letter_id: int, reason: str) -> asyncpg.Record | None:
    """Mark a waiting letter discarded; None when it is not waiting (or not there)."""
    return await conn.fetchrow(
        "UPDATE dead_letters SET state = 'discarded', discarded_at = now(),"  # noqa: S608
        f" discard_reason = $2 WHERE id = $1 AND state = 'dead' RETURNING {_COLUMNS}",
        letter_id,
        reason,
    )
