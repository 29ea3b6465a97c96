"""The ledger stores every Stripe event once, however often Stripe sends it,
and tells the operator how many duplicates it absorbed."""

from __future__ import annotations

import aiohttp
import asyncpg

from shared import queues
from tests.gateway.helpers import a_valid_event, admin, deliver, inbox_duplicates, wait_in_ledger
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
