"""Stripe does not order its deliveries: whatever order a subscription's events
arrive in, the row ends in the newest state and never moves backwards."""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import stripe

from shared import queues
from shared.stripe_calls import stripe_json
from tests.support import stripe_objects as so
from tests.support.gateway_client import admin_get, post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

CREATED = "customer.subscription.created"
UPDATED = "customer.subscription.updated"
DELETED = "customer.subscription.deleted"


async def _handled(db: asyncpg.Connection, ids: list[str]) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM subscriptions.inbox WHERE queue = $1 AND event_id = ANY($2)",
        queues.SUBSCRIPTIONS_STRIPE,
        ids,
    )


async def _deliver(
    http: aiohttp.ClientSession,
    gateway: str,
    db: asyncpg.Connection,
    events: Sequence[Any],
    *,
    burst: bool = False,
) -> None:
    """POST ``events`` in this order and wait until the consumer has handled them.

    One by one (the default), each is handled before the next is sent, so the
    consumer sees exactly this order; a burst lets it handle them concurrently.
    """
    batches = [list(events)] if burst else [[e] for e in events]
    for batch in batches:
        for evt in batch:
            status, answer = await post_event(http, gateway, evt)
            assert status == 200, answer
        ids = [e["id"] for e in batch]
        await eventually(
            lambda ids=ids: _handled(db, ids),
            until=lambda n, ids=ids: n == len(ids),
            timeout=10,
            what=f"{ids} handled by subscriptions",
        )


async def _row(db: asyncpg.Connection, sub_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub_id
    )
    assert row is not None, f"no row for {sub_id}"
    return row


def _lifecycle(sub_id: str, *, created: int, same_second: bool = False) -> list[dict[str, Any]]:
    """created -> updated (past_due, other price) -> deleted (canceled)."""
    stamps = (created, created, created) if same_second else (created, created + 10, created + 20)
    return [
        so.event(CREATED, so.subscription(sub_id=sub_id, status="active"), created=stamps[0]),
        so.event(
            UPDATED,
            so.subscription(sub_id=sub_id, status="past_due", price="price_private_office"),
            created=stamps[1],
        ),
        so.event(
            DELETED,
            so.subscription(
                sub_id=sub_id,
                status="canceled",
                price="price_private_office",
                canceled_at=stamps[2],
            ),
            created=stamps[2],
        ),
    ]


def _assert_deleted_state(row: asyncpg.Record, deleted: dict[str, Any]) -> None:
    assert row["status"] == "canceled"
    assert row["canceled_at"] is not None
    assert int(row["canceled_at"].timestamp()) == deleted["data"]["object"]["canceled_at"]
    assert row["price_id"] == "price_private_office"
    assert row["last_event_id"] == deleted["id"]
    assert row["last_event_type"] == DELETED


async def test_reverse_order_ends_canceled(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub_id = so.new_id("sub")
    events = _lifecycle(sub_id, created=int(time.time()) - 100)

    await _deliver(http, stack.gateway, db, list(reversed(events)))

    _assert_deleted_state(await _row(db, sub_id), events[2])
    shown = await admin_get(http, stack.gateway, f"/v1/admin/subscriptions/{sub_id}")
    assert shown["status"] == "canceled"
    assert shown["canceled_at"] is not None


async def test_every_order_ends_in_the_newest_state(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    base = int(time.time()) - 1_000
    cases: list[tuple[str, list[dict[str, Any]]]] = []
    for order in itertools.permutations(range(3)):
        sub_id = so.new_id("sub")
        events = _lifecycle(sub_id, created=base)
        cases.append((sub_id, events))
        await _deliver(http, stack.gateway, db, [events[i] for i in order])

    for sub_id, events in cases:
        _assert_deleted_state(await _row(db, sub_id), events[2])


async def test_shuffled_longer_history_ends_in_the_newest_state(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    rng = random.Random(20240611)  # fixed seed: a failure reproduces
    base = int(time.time()) - 1_000
    prices = [f"price_plan_{n}" for n in range(6)]
    for _ in range(4):
        sub_id = so.new_id("sub")
        history = [so.event(CREATED, so.subscription(sub_id=sub_id, price=prices[0]), created=base)]
        history += [
            so.event(
                UPDATED,
                so.subscription(sub_id=sub_id, status="active", price=price),
                created=base + 10 * n,
            )
            for n, price in enumerate(prices[1:], start=1)
        ]
        shuffled = history[:]
        rng.shuffle(shuffled)

        await _deliver(http, stack.gateway, db, shuffled, burst=True)

        row = await _row(db, sub_id)
        assert row["price_id"] == prices[-1], [e["id"] for e in shuffled]
        assert row["last_event_id"] == history[-1]["id"]


async def test_older_update_arriving_late_never_overwrites_a_newer_one(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub_id = so.new_id("sub")
    now = int(time.time())
    older = so.event(
        UPDATED,
        so.subscription(sub_id=sub_id, status="active", price="price_hot_desk", period=(1, 2)),
        created=now - 20,
    )
    newer = so.event(
        UPDATED,
        so.subscription(
            sub_id=sub_id,
            status="past_due",
            price="price_private_office",
            period=(1_790_000_000, 1_792_592_000),
            cancel_at_period_end=True,
        ),
        created=now - 10,
    )

    await _deliver(http, stack.gateway, db, [newer])
    await _deliver(http, stack.gateway, db, [older])

    row = await _row(db, sub_id)
    assert row["status"] == "past_due"
    assert row["price_id"] == "price_private_office"
    assert row["cancel_at_period_end"] is True
    assert int(row["current_period_start"].timestamp()) == 1_790_000_000
    assert row["last_event_id"] == newer["id"]


async def test_same_second_deletion_wins_whatever_the_order(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # An ended subscription proves it is the newest state: no refetch needed
    # (no Stripe is configured here).
    base = int(time.time()) - 500
    for earlier in (0, 1):
        for order in ((earlier, 2), (2, earlier)):
            sub_id = so.new_id("sub")
            events = _lifecycle(sub_id, created=base, same_second=True)
            await _deliver(http, stack.gateway, db, [events[i] for i in order])
            _assert_deleted_state(await _row(db, sub_id), events[2])


async def _real_subscription(
    client: stripe.StripeClient, price_a: str, price_b: str
) -> dict[str, Any]:
    """A subscription in Stripe that moved from ``price_a`` to ``price_b``; its
    current object (on ``price_b``) is the newest state there is."""
    customer = await client.v1.customers.create_async(params={"email": "tie@example.com"})
    card = await client.v1.payment_methods.attach_async(
        "pm_card_visa", params={"customer": customer.id}
    )
    await client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    sub = await client.v1.subscriptions.create_async(
        params={"customer": customer.id, "items": [{"price": price_a}]}
    )
    await client.v1.subscriptions.update_async(
        sub.id,
        params={
            "items": [{"id": sub["items"]["data"][0]["id"], "price": price_b}],
            "proration_behavior": "none",
        },
    )
    return stripe_json(await client.v1.subscriptions.retrieve_async(sub.id))


async def test_a_same_second_tie_ends_in_the_newest_state_read_from_stripe(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # The envelope cannot say which of two updates in one second is newer, and
    # Stripe's event ids are random: here the older state gets the "larger" id,
    # so settling by id would pick it. The newest state is Stripe's own object.
    await sandbox.control("POST", "/_sandbox/delivery", {"paused": True})
    product = await stripe_client.v1.products.create_async(params={"name": "Desk"})
    prices = [
        (
            await stripe_client.v1.prices.create_async(
                params={
                    "product": product.id,
                    "unit_amount": amount,
                    "currency": "usd",
                    "recurring": {"interval": "month"},
                }
            )
        ).id
        for amount in (19_900, 34_900)
    ]
    second = int(time.time()) - 60
    for order in ("older first", "newer first"):
        newest = await _real_subscription(stripe_client, prices[0], prices[1])
        older = copy.deepcopy(newest)
        older["items"]["data"][0]["price"]["id"] = prices[0]
        older_event = so.event(UPDATED, older, created=second, event_id=f"evt_zz{so.new_id('x')}")
        newer_event = so.event(UPDATED, newest, created=second, event_id=f"evt_aa{so.new_id('x')}")
        pair = [older_event, newer_event]
        if order == "newer first":
            pair.reverse()

        await _deliver(http, stripe_stack.gateway, db, pair)

        row = await _row(db, newest["id"])
        assert row["price_id"] == prices[1], order
        assert row["status"] == newest["status"]
        fetched = await sandbox.requests(f"/v1/subscriptions/{newest['id']}", method="GET")
        assert len(fetched) >= 1, f"{order}: the tie was not settled from Stripe"


async def test_identical_snapshots_in_the_same_second_need_no_refetch(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # No Stripe is configured here: had the tie needed one, the second event
    # would wait in the retry queues instead of being handled.
    sub_id = so.new_id("sub")
    second = int(time.time()) - 40
    snapshot = so.subscription(sub_id=sub_id, status="active")
    events = [
        so.event(CREATED, snapshot, created=second),
        so.event(UPDATED, snapshot, created=second),
    ]

    await _deliver(http, stack.gateway, db, events)

    row = await _row(db, sub_id)
    assert (row["status"], row["last_event_id"]) == ("active", events[0]["id"])


async def test_canceled_is_terminal(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub_id = so.new_id("sub")
    now = int(time.time())
    deleted = so.event(
        DELETED,
        so.subscription(sub_id=sub_id, status="canceled", canceled_at=now - 30),
        created=now - 30,
    )
    # A later event that would move it back to active.
    revived = so.event(UPDATED, so.subscription(sub_id=sub_id, status="active"), created=now - 10)

    await _deliver(http, stack.gateway, db, [deleted, revived])

    row = await _row(db, sub_id)
    assert row["status"] == "canceled"
    assert row["last_event_id"] == deleted["id"]


async def test_period_read_from_items_and_from_older_top_level_fields(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    period = (1_790_000_000, 1_792_592_000)
    current = so.subscription(period=period, period_on_items=True)
    older_shape = so.subscription(period=period, period_on_items=False)
    assert "current_period_start" not in older_shape["items"]["data"][0]

    await _deliver(
        http,
        stack.gateway,
        db,
        [so.event(CREATED, current), so.event(CREATED, older_shape)],
    )

    for sub in (current, older_shape):
        shown = await admin_get(http, stack.gateway, f"/v1/admin/subscriptions/{sub['id']}")
        assert shown["current_period_start"] == "2026-09-21T14:13:20Z"
        row = await _row(db, sub["id"])
        assert int(row["current_period_start"].timestamp()) == period[0]
        assert int(row["current_period_end"].timestamp()) == period[1]


async def test_expanded_customer_object_stores_the_customer_id(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    customer = so.fixture("customer")
    customer["id"] = so.new_id("cus")
    sub = so.subscription(customer=customer["id"])
    sub["customer"] = customer

    await _deliver(http, stack.gateway, db, [so.event(CREATED, sub)])

    shown = await admin_get(http, stack.gateway, f"/v1/admin/subscriptions/{sub['id']}")
    assert shown["customer"] == customer["id"]
    assert (await _row(db, sub["id"]))["stripe_customer_id"] == customer["id"]
