"""The audit log of staff writes: who, with which role, did what to which
record, why, in which request, when.

Every service keeps its own ``audit_log`` table (DDL in ``shared/sql``) and
writes the entry in the same transaction as the write it records, so an
action and its entry exist together or not at all. A write whose effect is
outside the database (a message published) cannot share its transaction:
its entry is committed first, with ``details.outcome`` ``pending``, and
settled (:func:`settle`) once the effect is done or refused. An entry left
``pending`` is one whose effect may have happened before the process or the
database failed: no such write ever goes unrecorded. Staff requests carry a
required ``reason`` (:data:`Reason`). Each service serves its entries on
``/internal/audit``; the gateway's ``GET /v1/admin/audit`` merges them, newest
first, with one cursor over all services (its sort key ``(at, service, id)``
is unique across them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared import db
from shared.api.caller import Caller
from shared.api.pagination import Page, PageQuery, decode_cursor, page_of
from shared.db import DbConnection
from shared.http.errors import from_validation_error, json_response

INTERNAL_PATH = "/internal/audit"

Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=500),
    Field(description="Why: required on every staff write, kept in the audit log."),
]


class AuditEntry(BaseModel):
    id: int
    service: str
    at: datetime
    actor_id: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    reason: str
    request_id: str | None
    details: dict[str, Any]


class AuditQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default=None, max_length=255, description="A record's id.")


async def record(
    conn: DbConnection,
    *,
    caller: Caller,
    action: str,
    target_type: str,
    target_id: str,
    reason: str,
    request_id: str | None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Write one entry; returns its id."""
    entry_id: int = await conn.fetchval(
        "INSERT INTO audit_log (actor_id, actor_role, action, target_type, target_id,"
        " reason, request_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        caller.user_id,
        caller.role.value,
        action,
        target_type,
        target_id,
        reason,
        request_id,
        dict(details or {}),
    )
    return entry_id


PENDING = {"outcome": "pending"}


async def begin(
    pool: asyncpg.Pool[Any],
    *,
    caller: Caller,
    action: str,
    target_type: str,
    target_id: str,
    reason: str,
    request_id: str | None,
    details: Mapping[str, Any] | None = None,
    attempt: str | None = None,
) -> int:
    """Commit, in a transaction of its own, the ``pending`` entry of a write
    whose effect is outside this database, before that effect; its id, for
    :func:`settle`. ``attempt`` names a request that may run again (derived
    from its Idempotency-Key): a second run after a failure half way finds
    the entry of its first, set ``pending`` again, instead of adding one.
    """
    async with db.transaction(pool) as conn:
        if attempt is not None:
            earlier: int | None = await conn.fetchval(
                "SELECT id FROM audit_log WHERE target_id = $1 AND action = $2"
                " AND details->>'attempt' = $3",
                target_id,
                action,
                attempt,
            )
            if earlier is not None:
                # Pending again: a first run settled "failed" may succeed now.
                await settle(conn, earlier, PENDING)
                return earlier
        return await record(
            conn,
            caller=caller,
            action=action,
            target_type=target_type,
            target_id=target_id,
            reason=reason,
            request_id=request_id,
            details={
                **(details or {}),
                **PENDING,
                **({"attempt": attempt} if attempt is not None else {}),
            },
        )


async def settle(
    conn: DbConnection | asyncpg.Pool[Any], entry_id: int, details: Mapping[str, Any]
) -> None:
    """Add how it ended (``outcome`` and what else is known) to an entry
    written before its effect."""
    await conn.execute(
        "UPDATE audit_log SET details = details || $2 WHERE id = $1", entry_id, dict(details)
    )


async def list_entries(
    pool: asyncpg.Pool[Any], service: str, query: AuditQuery
) -> Page[AuditEntry]:
    args: list[Any] = [service, query.limit + 1]
    clauses = []
    if query.target is not None:
        args.append(query.target)
        clauses.append(f"target_id = ${len(args)}")
    if query.cursor is not None:
        at, cursor_service, entry_id = decode_cursor(query.cursor, datetime, str, int)
        args += [at, cursor_service, entry_id]
        n = len(args)
        clauses.append(f"(at, $1::text, id) < (${n - 2}, ${n - 1}, ${n})")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await pool.fetch(
        f"SELECT *, $1::text AS service FROM audit_log {where}"  # noqa: S608 - placeholders only
        " ORDER BY at DESC, id DESC LIMIT $2",
        *args,
    )
    return page_of(
        rows,
        query.limit,
        lambda r: AuditEntry.model_validate(dict(r)),
        lambda r: (r["at"], service, r["id"]),
    )


def add_internal_route(app: web.Application, service: str, pool: Any) -> None:
    """``GET /internal/audit``: this service's entries, for the gateway to merge."""

    async def serve(request: web.Request) -> web.Response:
        try:
            query = AuditQuery.model_validate(dict(request.query))
        except pydantic.ValidationError as exc:
            raise from_validation_error(exc) from exc
        page = await list_entries(pool(), service, query)
        return json_response(page.model_dump(mode="json"))

    app.router.add_get(INTERNAL_PATH, serve)
