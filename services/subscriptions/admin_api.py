"""Staff: every subscription, a member's whole billing picture, writes on a
member's behalf (each with a reason, audited), revenue, and test clocks."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import asyncpg

from services.subscriptions import actions, contract, revenue, routing, staff_audit, views
from services.subscriptions.members import test_mode
from services.subscriptions.routing import routes
from shared import audit
from shared.api.pagination import Page, decode_cursor, page_of
from shared.api.service import Call, Empty
from shared.db import DbConnection
from shared.http.errors import ApiError, not_found


@routes.implement(contract.SHOW_SUBSCRIPTION_RECORD)
async def show_subscription_record(call: Call[Empty, Empty]) -> contract.SubscriptionRecord:
    row = await call.pool.fetchrow(
        "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1",
        call.path["stripe_subscription_id"],
    )
    if row is None:
        raise not_found("subscription")
    return contract.SubscriptionRecord(
        id=row["stripe_subscription_id"],
        customer=row["stripe_customer_id"],
        status=row["status"],
        price_id=row["price_id"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=row["canceled_at"],
        last_event=contract.LastEvent(
            id=row["last_event_id"], type=row["last_event_type"], created=row["last_event_created"]
        )
        if row["last_event_id"]
        else None,
        updated_at=row["updated_at"],
    )


@routes.implement(contract.ADMIN_LIST_SUBSCRIPTIONS)
async def admin_list_subscriptions(
    call: Call[Empty, contract.AdminSubscriptionQuery],
) -> Page[contract.SubscriptionView]:
    q = call.query
    args: list[Any] = [q.limit + 1, q.status, q.plan]
    if q.cursor:
        seen, sub_id = decode_cursor(q.cursor, datetime, str)
        args += [seen, sub_id]
    else:
        args += [None, None]
    rows = await call.pool.fetch(
        "SELECT * FROM subscriptions WHERE ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR plan = $3) AND ($4::timestamptz IS NULL"
        " OR (first_seen_at, stripe_subscription_id) < ($4, $5::text))"
        " ORDER BY first_seen_at DESC, stripe_subscription_id DESC LIMIT $1",
        *args,
    )
    shown = await views.subscriptions(call.pool, rows[: q.limit])
    by_id = {v.id: v for v in shown}
    return page_of(
        rows,
        q.limit,
        lambda r: by_id[r["stripe_subscription_id"]],
        lambda r: (r["first_seen_at"], r["stripe_subscription_id"]),
    )


async def _detail(
    pool: asyncpg.Pool[Any], customer: asyncpg.Record | None
) -> contract.CustomerDetail:
    if customer is None:
        raise not_found("customer")
    user_id = customer["user_id"]
    subs = await pool.fetch(
        "SELECT * FROM subscriptions WHERE user_id = $1 ORDER BY first_seen_at DESC", user_id
    )
    invoices = await pool.fetch(
        "SELECT * FROM invoices WHERE user_id = $1 ORDER BY stripe_created DESC LIMIT 100", user_id
    )
    history = await pool.fetch(
        "SELECT * FROM subscription_history WHERE stripe_subscription_id = ANY($1::text[])"
        " ORDER BY id DESC LIMIT 200",
        [s["stripe_subscription_id"] for s in subs],
    )
    return contract.CustomerDetail(
        customer=contract.CustomerView(
            user_id=user_id,
            stripe_customer_id=customer["stripe_customer_id"],
            email=customer["email"],
            test_clock_id=customer["test_clock_id"],
            created_at=customer["created_at"],
        ),
        subscriptions=await views.subscriptions(pool, subs),
        invoices=[views.invoice(i) for i in invoices],
        history=[
            contract.HistoryEntry(
                subscription_id=h["stripe_subscription_id"],
                at=h["at"],
                actor_type=h["actor_type"],
                actor=h["actor"],
                action=h["action"],
                changes=h["changes"],
            )
            for h in history
        ],
    )


@routes.implement(contract.ADMIN_SHOW_CUSTOMER)
async def admin_show_customer(call: Call[Empty, Empty]) -> contract.CustomerDetail:
    row = await call.pool.fetchrow(
        "SELECT * FROM customers WHERE user_id = $1", call.path["user_id"]
    )
    return await _detail(call.pool, row)


@routes.implement(contract.ADMIN_FIND_CUSTOMER)
async def admin_find_customer(call: Call[Empty, contract.CustomerQuery]) -> contract.CustomerDetail:
    row = await call.pool.fetchrow(
        "SELECT * FROM customers WHERE lower(email) = lower($1) ORDER BY created_at LIMIT 1",
        call.query.email,
    )
    return await _detail(call.pool, row)


async def _row(call: Call[Any, Any]) -> asyncpg.Record:
    return await views.owned_subscription(call.pool, call.path["subscription_id"], None)


@routes.implement(contract.ADMIN_CANCEL)
async def admin_cancel(call: Call[contract.StaffCancel, Empty]) -> contract.SubscriptionView:
    actor = actions.Actor("staff", call.body.reason)
    return await actions.cancel(call, await _row(call), call.body.at_period_end, actor)


@routes.implement(contract.ADMIN_RESUME)
async def admin_resume(call: Call[contract.StaffResume, Empty]) -> contract.SubscriptionView:
    return await actions.resume(call, await _row(call), actions.Actor("staff", call.body.reason))


@routes.implement(contract.ADMIN_CHANGE)
async def admin_change(call: Call[contract.StaffPlanChange, Empty]) -> contract.SubscriptionView:
    actor = actions.Actor("staff", call.body.reason)
    return await actions.change(call, await _row(call), call.body.plan, call.body.interval, actor)


@routes.implement(contract.ADMIN_REVENUE)
async def admin_revenue(call: Call[Empty, contract.RevenueQuery]) -> contract.Revenue:
    return await revenue.compute(call.pool, call.query.at or routing.now(call))


@routes.implement(contract.ADVANCE_TEST_CLOCK)
async def advance_test_clock(call: Call[contract.ClockAdvance, Empty]) -> contract.ClockState:
    if not test_mode(call):
        raise ApiError(409, "live_mode", "test clocks exist only in test mode")
    user_id = call.path["user_id"]
    clock_id = await call.pool.fetchval(
        "SELECT test_clock_id FROM customers WHERE user_id = $1", user_id
    )
    if clock_id is None:
        raise not_found("test clock")
    stripe = routing.stripe(call)
    to = int(call.body.to.timestamp())
    details = {"test_clock": clock_id, "to": call.body.to.isoformat()}
    # Audited before the clock moves (staff_audit).
    entry = await staff_audit.begin(
        call,
        action="test_clock.advance",
        target_type="customer",
        target_id=user_id,
        reason=call.body.reason,
        details=details,
    )
    async with staff_audit.failed_if_refused(call.pool, entry):
        clock = await stripe.call(
            "advance test clock",
            lambda c: c.v1.test_helpers.test_clocks.advance_async(clock_id, {"frozen_time": to}),
        )
    for _ in range(300):  # Stripe advances in the background: wait until it is done
        if clock.status != "advancing":
            break
        await asyncio.sleep(0.1)
        clock = await stripe.call(
            "retrieve test clock",
            lambda c: c.v1.test_helpers.test_clocks.retrieve_async(clock_id),
        )

    async def effect(conn: DbConnection) -> contract.ClockState:
        await conn.execute(
            "UPDATE customers SET test_clock_time = $2 WHERE user_id = $1", user_id, call.body.to
        )
        await audit.settle(conn, entry, {"outcome": "applied"})
        return contract.ClockState(
            user_id=user_id,
            test_clock_id=clock_id,
            frozen_time=call.body.to,
            status=clock.status,
        )

    return await call.commit(effect)
