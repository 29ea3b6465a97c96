"""Signed events over HTTP to a running gateway end up in the ledger and the
subscriptions table."""

from __future__ import annotations

import aiohttp
import asyncpg

from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def test_subscription_event_reaches_ledger_and_subscriptions(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub = so.subscription(status="active", period=(1_790_000_000, 1_792_592_000))
    evt = so.event("customer.subscription.created", sub)

    assert (await post_event(http, stack.gateway, evt))[0] == 200

    stored = await eventually(
        lambda: db.fetchrow("SELECT type, payload FROM webhooks.events WHERE id = $1", evt["id"]),
        what="event in ledger",
    )
    assert stored["type"] == "customer.subscription.created"
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub["id"]
        ),
        what="subscription row",
    )
    assert row["status"] == "active"
    assert row["price_id"] == "price_hot_desk"
    assert int(row["current_period_start"].timestamp()) == 1_790_000_000
    assert int(row["current_period_end"].timestamp()) == 1_792_592_000
