"""The ledger stores every Stripe event once, however often Stripe sends it,
and tells the operator how many duplicates it absorbed."""

from __future__ import annotations

import aiohttp
import asyncpg

from shared import queues
from tests.gateway.helpers import a_valid_event, admin, deliver, inbox_duplicates, wait_in_ledger
from tests.support import stripe_objects as so
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def test_an_event_delivered_three_times_is_stored_once_with_two_duplicates(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event("invoice.paid")
    for _ in range(3):
        await deliver(http, stack.gateway, evt)

    await wait_in_ledger(db, evt["id"])
    await eventually(
        lambda: inbox_duplicates(db, "webhooks", queues.WEBHOOKS_LEDGER, evt["id"]),
        until=lambda n: n == 2,
        what="two duplicates counted in the ledger's inbox",
    )
    assert await db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", evt["id"]) == 1
    assert await db.fetchval("SELECT count(*) FROM webhooks.events") == 1

    status, shown, _ = await admin(http, stack.gateway, "GET", f"/events/{evt['id']}")
    assert status == 200
    assert shown["duplicates"] == 2
    assert shown["replay_count"] == 0
    assert shown["payload"] == evt

    status, listed, _ = await admin(http, stack.gateway, "GET", "/events")
    assert status == 200
    assert [(e["id"], e["duplicates"]) for e in listed["data"]] == [(evt["id"], 2)]


async def test_a_redelivery_with_a_changed_body_keeps_the_first_copy(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Same id, so the same event: the ledger keeps what it stored first and
    # counts the second copy as a duplicate rather than overwriting.
    evt = a_valid_event("invoice.paid")
    await deliver(http, stack.gateway, evt)
    await wait_in_ledger(db, evt["id"])
    altered = {**evt, "livemode": not evt["livemode"]}
    await deliver(http, stack.gateway, altered)

    await eventually(
        lambda: inbox_duplicates(db, "webhooks", queues.WEBHOOKS_LEDGER, evt["id"]),
        until=lambda n: n == 1,
        what="the second copy counted as a duplicate",
    )
    status, shown, _ = await admin(http, stack.gateway, "GET", f"/events/{evt['id']}")
    assert status == 200
    assert shown["payload"] == evt
    assert shown["livemode"] == evt["livemode"]


async def test_an_event_with_a_nul_in_customer_text_is_stored_and_shown_as_sent(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Metadata and descriptions are customer-supplied text and may hold a NUL,
    # which Postgres jsonb refuses: the event must still reach the ledger (and
    # every other consumer), not be dead-lettered on every try and redrive.
    sub = so.subscription(status="active")
    sub["description"] = "desk\x00B"
    sub["metadata"]["note\x00key"] = "nul\x00inside"
    evt = so.event("customer.subscription.created", sub)
    await deliver(http, stack.gateway, evt)

    row = await wait_in_ledger(db, evt["id"])
    await eventually(
        lambda: db.fetchrow(
            "SELECT 1 FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub["id"],
        ),
        what="the subscription applied",
    )
    assert row["type"] == "customer.subscription.created"
    # What the ledger shows (and replays) is the event exactly as Stripe sent it.
    status, shown, _ = await admin(http, stack.gateway, "GET", f"/events/{evt['id']}")
    assert status == 200, shown
    assert shown["payload"] == evt
    assert await db.fetchval("SELECT count(*) FROM webhooks.dead_letters") == 0
