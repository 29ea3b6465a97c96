"""Stripe delivers the same event more than once: each delivery is accepted,
its effect happens once, and the duplicates are counted (in the inbox and a
metric), and logged only at debug level."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import structlog
from prometheus_client import REGISTRY

from shared import queues
from tests.support import stripe_objects as so
from tests.support.gateway_client import admin_get, post_event
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def _duplicates(db: asyncpg.Connection, schema: str, queue: str, event_id: str) -> int | None:
    return await db.fetchval(
        f"SELECT duplicate_count FROM {schema}.inbox WHERE event_id = $1 AND queue = $2",  # noqa: S608
        event_id,
        queue,
    )


async def _wait_duplicates(db: asyncpg.Connection, event_id: str, expected: int) -> None:
    for schema, queue in (
        ("webhooks", queues.WEBHOOKS_LEDGER),
        ("subscriptions", queues.SUBSCRIPTIONS_STRIPE),
    ):
        await eventually(
            lambda s=schema, q=queue: _duplicates(db, s, q, event_id),
            until=lambda n: n == expected,
            timeout=10,
            what=f"{expected} duplicates of {event_id} counted in {schema}.inbox",
        )


async def _assert_stored_once(db: asyncpg.Connection, event_id: str, sub_id: str) -> None:
    assert await db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", event_id) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub_id,
        )
        == 1
    )
    for schema in ("webhooks", "subscriptions"):
        inbox_rows = await db.fetchval(
            f"SELECT count(*) FROM {schema}.inbox WHERE event_id = $1",  # noqa: S608
            event_id,
        )
        assert inbox_rows == 1, f"{schema}.inbox has {inbox_rows} rows for {event_id}"


async def test_same_event_posted_twice_is_stored_once(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub = so.subscription(status="active")
    evt = so.event("customer.subscription.created", sub)

    first = await post_event(http, stack.gateway, evt)
    second = await post_event(http, stack.gateway, evt)

    assert first == (200, {"received": True, "id": evt["id"]})
    assert second == (200, {"received": True, "id": evt["id"]})
    await _wait_duplicates(db, evt["id"], 1)
    await _assert_stored_once(db, evt["id"], sub["id"])
    # The operator sees the duplicate on the event itself.
    shown = await admin_get(http, stack.gateway, f"/v1/admin/events/{evt['id']}")
    assert shown["duplicates"] == 1
    assert shown["payload"]["data"]["object"]["id"] == sub["id"]


async def test_five_concurrent_deliveries_are_stored_once(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub = so.subscription(status="active")
    evt = so.event("customer.subscription.created", sub)

    answers = await asyncio.gather(*(post_event(http, stack.gateway, evt) for _ in range(5)))

    assert [status for status, _ in answers] == [200] * 5
    await _wait_duplicates(db, evt["id"], 4)
    await _assert_stored_once(db, evt["id"], sub["id"])
    row = await db.fetchrow(
        "SELECT status, last_event_id FROM subscriptions.subscriptions"
        " WHERE stripe_subscription_id = $1",
        sub["id"],
    )
    assert (row["status"], row["last_event_id"]) == ("active", evt["id"])


async def test_late_duplicate_does_not_roll_back_a_newer_update(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    now = int(time.time())
    sub_id = so.new_id("sub")
    created = so.event(
        "customer.subscription.created",
        so.subscription(sub_id=sub_id, status="active", price="price_hot_desk"),
        created=now - 60,
    )
    updated = so.event(
        "customer.subscription.updated",
        so.subscription(sub_id=sub_id, status="past_due", price="price_private_office"),
        created=now - 30,
    )

    assert (await post_event(http, stack.gateway, created))[0] == 200
    await eventually(
        lambda: db.fetchval(
            "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub_id,
        ),
        until=lambda status: status == "active",
        what="subscription created",
    )
    assert (await post_event(http, stack.gateway, updated))[0] == 200
    await eventually(
        lambda: db.fetchval(
            "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub_id,
        ),
        until=lambda status: status == "past_due",
        what="subscription updated",
    )

    # Stripe re-sends the creation event after the update was applied.
    assert (await post_event(http, stack.gateway, created))[0] == 200
    await _wait_duplicates(db, created["id"], 1)

    row = await db.fetchrow(
        "SELECT status, price_id, last_event_id FROM subscriptions.subscriptions"
        " WHERE stripe_subscription_id = $1",
        sub_id,
    )
    assert dict(row) == {
        "status": "past_due",
        "price_id": "price_private_office",
        "last_event_id": updated["id"],
    }
    shown = await admin_get(http, stack.gateway, f"/v1/admin/subscriptions/{sub_id}")
    assert shown["status"] == "past_due"


async def test_a_duplicate_is_counted_and_logged_at_debug_only(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # A benchmark or a replay sends thousands: one info line each drowned the log.
    def duplicates_counted() -> float:
        value = REGISTRY.get_sample_value(
            "consumer_messages_total",
            {"queue": queues.SUBSCRIPTIONS_STRIPE, "outcome": "duplicate"},
        )
        return value or 0.0

    before = duplicates_counted()
    evt = so.event("customer.subscription.created", so.subscription(status="active"))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert (await post_event(http, stack.gateway, evt))[0] == 200
        await _wait_duplicates(db, evt["id"], 2)
        await eventually(
            lambda: _now(duplicates_counted()), until=lambda n: n == before + 2, what="metric"
        )

    skipped = [entry for entry in logs if entry["event"] == "duplicate_skipped"]
    assert skipped, "the duplicates are still logged, for whoever runs at debug"
    assert {entry["log_level"] for entry in skipped} == {"debug"}


async def _now(value: float) -> float:
    return value
