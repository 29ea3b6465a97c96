"""A subscription's event and its invoice's, handled at the same time in two
transactions, wait for each other in turn and never deadlock.

Both may announce ``subscription.activated`` (the same outbox row) and write
the subscription row. The handlers run here as the consumer runs them
(``apply_in_inbox``: inbox insert and handler in one transaction), on the real
database; a third transaction holding the subscription row lines them up in
the order that deadlocked when the invoice locked the subscription last.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.subscriptions.app import MIGRATIONS, SCHEMA
from services.subscriptions.handlers import stripe_handlers
from shared import queues
from shared.broker.consumer import apply_in_inbox
from shared.clock import SystemClock
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from tests.support import env
from tests.support import stripe_objects as so

DAY = 86_400
USER = "user_lock_order"
METADATA = {"user_id": USER, "plan": "hot_desk", "interval": "month"}


@pytest.fixture
async def pool(clean_state: None) -> AsyncIterator[asyncpg.Pool[Any]]:
    await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)
    created = await create_pool(env.DATABASE_URL, SCHEMA, min_size=1, max_size=4)
    yield created
    await created.close()


async def _handle(pool: asyncpg.Pool[Any], evt: dict[str, Any]) -> str:
    """One delivery of ``evt``, as the subscriptions consumer applies it."""
    body = json.loads(json.dumps(evt))
    registration = stripe_handlers().lookup(body["type"])
    assert registration is not None, body["type"]
    return await apply_in_inbox(
        pool,
        queue=queues.SUBSCRIPTIONS_STRIPE,
        source="subscriptions",
        clock=SystemClock(),
        body=body,
        registration=registration,
        event=registration.model.model_validate(body),
        fetched=None,
    )


def _subscription(sub_id: str, status: str, period: tuple[int, int]) -> dict[str, Any]:
    obj = so.subscription(sub_id=sub_id, customer="cus_lock_order", status=status, period=period)
    obj["metadata"] = dict(METADATA)
    obj["items"]["data"][0]["price"]["lookup_key"] = "hot_desk_monthly"
    return obj


def _first_invoice_paid(sub_id: str, period: tuple[int, int]) -> dict[str, Any]:
    obj = so.fixture("invoice")
    obj.update(
        id=so.new_id("in"),
        customer="cus_lock_order",
        status="paid",
        subscription=sub_id,
        amount_due=4_900,
        amount_paid=4_900,
        amount_remaining=0,
        currency="eur",
        period_start=period[0],
        period_end=period[1],
        billing_reason="subscription_create",
        attempt_count=1,
        attempted=True,
        test_clock=None,
    )
    obj["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": dict(METADATA), "subscription": sub_id},
    }
    return obj


async def _blocked(conn: asyncpg.Connection, count: int) -> None:
    """Wait until ``count`` sessions of this database wait for a lock.

    ``conn`` is in no transaction: within one, pg_stat_activity would answer
    from the snapshot its first read took.
    """
    async with asyncio.timeout(10):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND cardinality(pg_blocking_pids(pid)) > 0"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)


async def test_first_invoice_paid_and_subscription_activated_at_once_do_not_deadlock(
    pool: asyncpg.Pool[Any],
) -> None:
    sub_id = so.new_id("sub")
    t = int(time.time()) - 40 * DAY
    period = (t, t + 30 * DAY)
    created = so.event(
        "customer.subscription.created", _subscription(sub_id, "incomplete", period), created=t
    )
    await _handle(pool, created)
    updated = so.event(
        "customer.subscription.updated", _subscription(sub_id, "active", period), created=t + 2
    )
    paid = so.event("invoice.paid", _first_invoice_paid(sub_id, period), created=t + 2)

    gate = await asyncpg.connect(env.DATABASE_URL)
    watch = await asyncpg.connect(env.DATABASE_URL)
    try:
        # The gate holds the subscription row; the subscription's event queues
        # for it first, then the invoice's (whichever lock it waits for).
        gate_tx = gate.transaction()
        await gate_tx.start()
        await gate.execute(
            "SELECT 1 FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1"
            " FOR UPDATE",
            sub_id,
        )
        on_subscription = asyncio.create_task(_handle(pool, updated))
        await _blocked(watch, 1)
        on_invoice = asyncio.create_task(_handle(pool, paid))
        await _blocked(watch, 2)
        await gate_tx.commit()
        async with asyncio.timeout(20):
            outcomes = await asyncio.gather(on_subscription, on_invoice, return_exceptions=True)
    finally:
        await gate.close()
        await watch.close()

    for outcome in outcomes:
        assert not isinstance(outcome, asyncpg.DeadlockDetectedError), outcome
    assert outcomes == ["processed", "processed"]
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, activated_at FROM subscriptions WHERE stripe_subscription_id = $1",
            sub_id,
        )
        announced = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE routing_key = 'subscription.activated'"
            " AND body->'data'->>'subscription_id' = $1",
            sub_id,
        )
    assert row is not None
    assert row["status"] == "active"
    assert row["activated_at"] is not None
    assert announced == 1
