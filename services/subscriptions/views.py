"""Rows as the API shows them, and access as entitlements judge it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from services.subscriptions import contract, plans
from services.subscriptions.state.snapshots import LIVE
from shared import catalog
from shared.db import DbConnection
from shared.http.errors import not_found

Db: TypeAlias = "asyncpg.Pool[Any] | DbConnection"

_DISCOUNTS = """
SELECT d.stripe_subscription_id, d.stripe_coupon_id, c.percent_off, c.amount_off, c.duration,
       d.ends_at
FROM discounts d JOIN coupons c USING (stripe_coupon_id)
WHERE d.stripe_subscription_id = ANY($1::text[]) AND NOT d.deleted
"""


async def discounts_of(db: Db, sub_ids: Sequence[str]) -> dict[str, list[contract.Discount]]:
    found: dict[str, list[contract.Discount]] = {}
    for r in await db.fetch(_DISCOUNTS, list(sub_ids)):
        found.setdefault(r["stripe_subscription_id"], []).append(
            contract.Discount(
                coupon=r["stripe_coupon_id"],
                percent_off=float(r["percent_off"]) if r["percent_off"] is not None else None,
                amount_off=r["amount_off"],
                duration=r["duration"],
                ends_at=r["ends_at"],
            )
        )
    return found


def subscription(
    row: asyncpg.Record, discounts: list[contract.Discount] | None = None
) -> contract.SubscriptionView:
    pending = row["pending_change"]
    return contract.SubscriptionView(
        id=row["stripe_subscription_id"],
        user_id=row["user_id"],
        status=row["status"],
        plan=row["plan"],
        interval=row["interval"],
        amount=row["unit_amount"] * row["quantity"] if row["unit_amount"] is not None else None,
        currency=row["currency"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        trial_end=row["trial_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        cancel_at=row["cancel_at"],
        canceled_at=row["canceled_at"],
        ended_at=row["ended_at"],
        pending_change=contract.PendingChange.model_validate(pending) if pending else None,
        discounts=discounts or [],
        latest_invoice_id=row["latest_invoice_id"],
    )


async def subscriptions(db: Db, rows: Sequence[asyncpg.Record]) -> list[contract.SubscriptionView]:
    found = await discounts_of(db, [r["stripe_subscription_id"] for r in rows])
    return [subscription(r, found.get(r["stripe_subscription_id"])) for r in rows]


def invoice(row: asyncpg.Record) -> contract.InvoiceView:
    return contract.InvoiceView(
        id=row["stripe_invoice_id"],
        subscription_id=row["stripe_subscription_id"],
        number=row["number"],
        status=row["status"],
        billing_reason=row["billing_reason"],
        amount_due=row["amount_due"],
        amount_paid=row["amount_paid"],
        currency=row["currency"],
        attempt_count=row["attempt_count"],
        next_payment_attempt=row["next_payment_attempt"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        hosted_invoice_url=row["hosted_invoice_url"],
        invoice_pdf=row["invoice_pdf"],
        created=row["stripe_created"],
    )


async def owned_subscription(db: Db, subscription_id: str, user_id: str | None) -> asyncpg.Record:
    """The row, if ``user_id`` (None: staff) may see it; else 404, never 403."""
    row = await db.fetchrow(
        "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1"
        " AND ($2::text IS NULL OR user_id = $2)",
        subscription_id,
        user_id,
    )
    if row is None:
        raise not_found("subscription")
    found: asyncpg.Record = row
    return found


async def current_of(db: Db, user_id: str) -> asyncpg.Record | None:
    """The member's current subscription: the newest live one, else the newest."""
    return await db.fetchrow(
        "SELECT * FROM subscriptions WHERE user_id = $1"
        " ORDER BY (status = ANY($2::text[])) DESC, first_seen_at DESC LIMIT 1",
        user_id,
        list(LIVE),
    )


def entitlements(
    row: asyncpg.Record | None, at: datetime, grace: timedelta
) -> contract.Entitlements:
    """active and trialing grant access; past_due keeps it for ``grace`` after the
    first failed payment; canceled, unpaid and the rest do not."""
    if row is None:
        return contract.Entitlements(
            active=False,
            plan=None,
            interval=None,
            features=[],
            credits={},
            status=None,
            access_until=None,
            subscription_id=None,
        )
    status = row["status"]
    until: datetime | None = None
    if status in ("active", "trialing"):
        until = row["trial_end"] if status == "trialing" else row["current_period_end"]
        if row["cancel_at"] is not None and (until is None or row["cancel_at"] < until):
            until = row["cancel_at"]
        active = True
    elif status == "past_due":
        since = row["past_due_since"] or row["current_period_start"]
        until = since + grace if since else None
        active = until is not None and at < until
    else:
        active = False
    plan = catalog.default().plans.get(row["plan"] or "")
    return contract.Entitlements(
        active=active,
        plan=row["plan"],
        interval=row["interval"],
        features=list(plan.features) if plan and active else [],
        # A trial grants its own allotment (subscription.activated says so).
        credits=plans.allotments(row["plan"], trial=status == "trialing") if active else {},
        status=status,
        access_until=until,
        subscription_id=row["stripe_subscription_id"],
    )
