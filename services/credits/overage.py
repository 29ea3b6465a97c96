"""Overage: a spend beyond the balance, billed through Stripe usage-based billing.

Only where the member's plan says so (``catalog.toml``: ``overage.<type>`` with
the meter's ``event_name``, a metered price and its unit amount); everywhere
else a spend beyond the balance is refused. The spend takes all the credits
there are and records the rest as overage in the same transaction, with a
row in ``overage_reports``. After the commit (Stripe is never called inside
a transaction) the row is reported as one meter event whose ``identifier`` is
the spend id, with an idempotency key derived from it: a retry, from the
request or from the scheduled retry below, never bills twice. Stripe adds the
usage to the subscription's metered price, so the next invoice shows it.

Reversing a spend returns its credits; its overage stays billed (a refund of
usage is a credit note, an operator's decision).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import stripe
from aiohttp import web

from services.credits import metrics as m
from shared import runtime
from shared.catalog import Catalog, Overage
from shared.clock import Clock, to_unix
from shared.db import DbConnection
from shared.logging import get_logger
from shared.stripe_calls import StripeCalls

log = get_logger(__name__)

# A claimed report is retried after this long if its reporter died meanwhile.
LEASE = timedelta(seconds=60)
BACKOFF = (timedelta(seconds=5), timedelta(seconds=30), timedelta(minutes=5))


async def billed_to(
    conn: DbConnection, catalog: Catalog, user_id: str, credit_type: str, now: datetime
) -> tuple[str, Overage] | None:
    """The Stripe customer and overage terms of the member's current plan for
    ``credit_type``, or None when its spends beyond the balance are refused."""
    row = await conn.fetchrow(
        "SELECT plan, customer_id, period_start = trial_period_start AS trialing"
        " FROM subscriptions"
        " WHERE user_id = $1 AND customer_id IS NOT NULL AND plan IS NOT NULL"
        "   AND (ended_at IS NULL OR ended_at > $2) AND period_end > $2"
        " ORDER BY period_start DESC LIMIT 1",
        user_id,
        now,
    )
    if row is None or row["trialing"]:
        # Stripe bills no usage during a trial (a trial upgraded to an overage
        # plan is still one): beyond the balance would be free, so refused.
        return None
    plan = catalog.plans.get(row["plan"])
    terms = plan.overage.get(credit_type) if plan is not None else None
    if terms is None:
        return None
    return str(row["customer_id"]), terms


async def record(
    conn: DbConnection,
    *,
    spend_id: str,
    user_id: str,
    customer_id: str,
    credit_type: str,
    terms: Overage,
    quantity: int,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO overage_reports (spend_id, user_id, customer_id, credit_type, event_name,"
        " quantity, occurred_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        spend_id,
        user_id,
        customer_id,
        credit_type,
        terms.meter,
        quantity,
        now,
    )


async def _claim(
    pool: asyncpg.Pool[Any], now: datetime, spend_id: str | None, limit: int
) -> list[asyncpg.Record]:
    """Lease due reports (one spend's, or any), skipping those another replica holds."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """
        UPDATE overage_reports r SET next_attempt_at = $1 + $4::interval,
                                     attempts = r.attempts + 1
        WHERE r.spend_id IN (
            SELECT spend_id FROM overage_reports
            WHERE reported_at IS NULL AND next_attempt_at <= $1
              AND ($2::text IS NULL OR spend_id = $2)
            ORDER BY next_attempt_at LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        RETURNING r.*
        """,
        now,
        spend_id,
        limit,
        LEASE,
    )
    return rows


async def _send(calls: StripeCalls, row: asyncpg.Record) -> None:
    params: Any = {
        "event_name": row["event_name"],
        "payload": {"stripe_customer_id": row["customer_id"], "value": str(row["quantity"])},
        "identifier": row["spend_id"],
        "timestamp": to_unix(row["occurred_at"]),
    }
    try:
        await calls.call(
            "meter_event",
            lambda client: client.v1.billing.meter_events.create_async(
                params, options={"idempotency_key": f"credits-overage-{row['spend_id']}"}
            ),
        )
    except stripe.InvalidRequestError as exc:
        # The identifier is taken: Stripe has this usage already (an earlier
        # attempt got through but its answer was lost).
        if exc.code != "resource_already_exists":
            raise


async def report_due(
    pool: asyncpg.Pool[Any],
    calls: StripeCalls | None,
    clock: Clock,
    *,
    spend_id: str | None = None,
    limit: int = 50,
) -> int:
    """Report due overage to Stripe; the number reported."""
    if calls is None:
        return 0
    now = clock.now()
    done = 0
    for row in await _claim(pool, now, spend_id, limit):
        try:
            await _send(calls, row)
        except Exception as exc:
            delay = BACKOFF[min(int(row["attempts"]) - 1, len(BACKOFF) - 1)]
            await pool.execute(
                "UPDATE overage_reports SET next_attempt_at = $2, last_error = $3"
                " WHERE spend_id = $1",
                row["spend_id"],
                now + delay,
                repr(exc)[:500],
            )
            log.warning("overage_report_failed", spend_id=row["spend_id"], error=repr(exc))
            continue
        await pool.execute(
            "UPDATE overage_reports SET reported_at = $2, last_error = NULL WHERE spend_id = $1",
            row["spend_id"],
            clock.now(),
        )
        m.OVERAGE_REPORTED.labels(row["credit_type"]).inc(int(row["quantity"]))
        done += 1
    return done


def scheduled(interval_seconds: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """Retry unreported overage every ``interval_seconds`` while the app runs."""

    async def loop(app: web.Application) -> None:
        while True:
            try:
                await report_due(app[runtime.POOL], app.get(runtime.STRIPE), app[runtime.CLOCK])
            except Exception as exc:
                log.warning("overage_reporter_failed", error=repr(exc))
            await asyncio.sleep(interval_seconds)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name="credits-overage-reporter")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
