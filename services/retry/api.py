"""The retry service's API (``services/retry/contract.py``), served on ``/internal``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.retry import contract
from shared import audit, metrics
from shared.api.pagination import Page, decode_cursor, page_of
from shared.api.service import Call, Empty, ServiceRoutes
from shared.clock import SystemClock
from shared.counting import count
from shared.db import DbConnection
from shared.http.errors import conflict, not_found
from shared.runtime import CLOCK

routes = ServiceRoutes("retry", contract.ENDPOINTS)


async def _attempts_of(conn: Any, invoice_ids: list[str]) -> dict[str, list[contract.AttemptView]]:
    rows = await conn.fetch(
        "SELECT * FROM attempts WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, number",
        invoice_ids,
    )
    found: dict[str, list[contract.AttemptView]] = {}
    for r in rows:
        found.setdefault(r["invoice_id"], []).append(
            contract.AttemptView.model_validate(
                {k: r[k] for k in contract.AttemptView.model_fields}
            )
        )
    return found


def _view(row: Any, attempts: list[contract.AttemptView]) -> contract.CaseView:
    values = {k: row[k] for k in contract.CaseView.model_fields if k in row}
    # A skipped attempt charged nothing: listed, but no attempt made.
    made = sum(1 for a in attempts if a.outcome not in ("pending", "skipped"))
    return contract.CaseView.model_validate({**values, "attempts_made": made, "attempts": attempts})


@routes.implement(contract.LIST_CASES)
async def list_cases(call: Call[Empty, contract.CasesQuery]) -> Page[contract.CaseView]:
    query = call.query
    args: list[Any] = [query.limit + 1]
    clauses = []
    if query.state is not None:
        args.append(query.state)
        clauses.append(f"state = ${len(args)}")
    if query.cursor is not None:
        opened_at, invoice_id = decode_cursor(query.cursor, datetime, str)
        args += [opened_at, invoice_id]
        clauses.append(f"(opened_at, invoice_id) < (${len(args) - 1}, ${len(args)})")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    async with call.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT * FROM cases {where}"  # noqa: S608 - placeholders only
            " ORDER BY opened_at DESC, invoice_id DESC LIMIT $1",
            *args,
        )
        attempts = await _attempts_of(conn, [r["invoice_id"] for r in rows[: query.limit]])
    return page_of(
        rows,
        query.limit,
        lambda r: _view(r, attempts.get(r["invoice_id"], [])),
        lambda r: (r["opened_at"], r["invoice_id"]),
    )


async def _case_for(conn: DbConnection, target: str) -> Any:
    """The case of an invoice, or the open (else latest) case of a subscription, locked.

    A subscription with several open cases (a renewal failed while an earlier
    one was still chased) is a 409 naming their invoices: acting on one of them
    would leave the other charging (or stopped) without the operator knowing.
    """
    if target.startswith("sub_"):
        active = await conn.fetch(
            "SELECT * FROM cases WHERE subscription_id = $1 AND state IN ('open', 'paused')"
            " ORDER BY opened_at, invoice_id FOR UPDATE",
            target,
        )
        if len(active) > 1:
            raise conflict(
                "several_open_cases",
                "the subscription has several open cases: name the invoice",
                invoices=", ".join(r["invoice_id"] for r in active),
            )
        row = active[0] if active else None
        if row is None:
            row = await conn.fetchrow(
                "SELECT * FROM cases WHERE subscription_id = $1"
                " ORDER BY opened_at DESC LIMIT 1 FOR UPDATE",
                target,
            )
    else:
        row = await conn.fetchrow("SELECT * FROM cases WHERE invoice_id = $1 FOR UPDATE", target)
    if row is None:
        raise not_found("dunning case")
    if row["state"] not in ("open", "paused"):
        raise conflict("case_closed", f"the case is {row['state']}", state=row["state"])
    return row


@routes.implement(contract.RETRY_NOW)
async def retry_now(call: Call[contract.StaffAction, Empty]) -> contract.CaseView:
    now = call.request.app.get(CLOCK, SystemClock()).now()

    async def effect(conn: DbConnection) -> contract.CaseView:
        row = await _case_for(conn, call.path["invoice_id"])
        if row["lease_owner"] is not None:
            # A replica holds the case: making it due would let a second
            # replica attempt it at the same time.
            raise conflict("attempt_in_progress", "an attempt of this case is under way")
        updated = await conn.fetchrow(
            "UPDATE cases SET state = 'open', next_attempt_at = $2, updated_at = $2,"
            " retry_requested_at = $2 WHERE invoice_id = $1 RETURNING *",
            row["invoice_id"],
            now,
        )
        if row["state"] == "paused":
            count(metrics.DUNNING_CASES_RESUMED)
        await audit.record(
            conn,
            caller=call.caller,
            action="dunning.retry_now",
            target_type="invoice",
            target_id=row["invoice_id"],
            reason=call.body.reason,
            request_id=call.request_id,
            details={"state": row["state"], "requested_as": call.path["invoice_id"]},
        )
        attempts = await _attempts_of(conn, [row["invoice_id"]])
        return _view(updated, attempts.get(row["invoice_id"], []))

    return await call.commit(effect)


@routes.implement(contract.STOP)
async def stop(call: Call[contract.StaffAction, Empty]) -> contract.CaseView:
    now = call.request.app.get(CLOCK, SystemClock()).now()

    async def effect(conn: DbConnection) -> contract.CaseView:
        row = await _case_for(conn, call.path["invoice_id"])
        if row["lease_owner"] is not None:
            # A replica is at Stripe with the case's payment: closing the case
            # now would not stop that charge, only hide it behind "canceled".
            raise conflict("attempt_in_progress", "an attempt of this case is under way")
        updated = await conn.fetchrow(
            "UPDATE cases SET state = 'canceled', close_reason = 'stopped_by_staff',"
            " closed_at = $2, updated_at = $2, next_attempt_at = NULL, lease_owner = NULL"
            " WHERE invoice_id = $1 RETURNING *",
            row["invoice_id"],
            now,
        )
        # As any close does (cases._CLOSE): an attempt left to be repeated (Stripe
        # was unreachable) never will be now, so it is not shown as under way.
        await conn.execute(
            "UPDATE attempts SET outcome = 'superseded', finished_at = $2"
            " WHERE invoice_id = $1 AND outcome = 'pending'",
            row["invoice_id"],
            now,
        )
        count(metrics.DUNNING_CASES_CLOSED.labels("canceled", "stopped_by_staff"))
        await audit.record(
            conn,
            caller=call.caller,
            action="dunning.stop",
            target_type="invoice",
            target_id=row["invoice_id"],
            reason=call.body.reason,
            request_id=call.request_id,
            details={"state": row["state"], "requested_as": call.path["invoice_id"]},
        )
        attempts = await _attempts_of(conn, [row["invoice_id"]])
        return _view(updated, attempts.get(row["invoice_id"], []))

    return await call.commit(effect)
