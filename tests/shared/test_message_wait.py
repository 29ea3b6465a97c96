"""Every publish carries its time, and consumers measure how long a message
waited in its queue (``consumer_message_wait_seconds``): the "oldest
message" of the dashboard and the QueueWaitHigh alert."""

from __future__ import annotations

import aiohttp
import asyncpg
import orjson

from shared import queues
from shared.broker.topology import STRIPE_EVENTS
from tests.gateway.helpers import metric
from tests.support import stripe_objects as so
from tests.support.amqp import publish_raw
from tests.support.gateway_client import post_event
from tests.support.stack import Stack
from tests.support.waiting import eventually

WAITS = "consumer_message_wait_seconds_count"


async def _in_ledger(db: asyncpg.Connection, event_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", event_id))


async def test_a_published_message_reports_its_wait(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    labels = {"queue": queues.WEBHOOKS_LEDGER}
    before = await metric(http, stack.gateway, WAITS, labels)
    evt = so.event("customer.subscription.created", so.subscription())
    status, _ = await post_event(http, stack.gateway, evt)
    assert status == 200
    await eventually(lambda: _in_ledger(db, evt["id"]), until=lambda n: n == 1, what="stored")
    assert await metric(http, stack.gateway, WAITS, labels) == before + 1
    # Just published: in the first bucket.
    assert (
        await metric(
            http, stack.gateway, "consumer_message_wait_seconds_bucket", {**labels, "le": "1.0"}
        )
        >= 1
    )

    # A message without a publish time (another publisher) is handled, not measured.
    raw = so.event("customer.subscription.created", so.subscription())
    await publish_raw(STRIPE_EVENTS, raw["type"], orjson.dumps(raw), message_id=raw["id"])
    await eventually(lambda: _in_ledger(db, raw["id"]), until=lambda n: n == 1, what="stored")
    assert await metric(http, stack.gateway, WAITS, labels) == before + 1
