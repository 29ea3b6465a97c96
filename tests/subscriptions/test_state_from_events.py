"""Stripe's events (from the sandbox, through the gateway) become the billing
state: subscriptions, invoices, history; and the domain events other services
act on, each once, whatever order or how often the events arrive."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import asyncpg
import stripe

from shared import queues
from shared.outbox import event_id
from tests.subscriptions.helpers import (
    HOUR,
    new_member_customer,
    outbox,
    seed,
    subscription_row,
    wait_outbox,
)
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

START = 1_767_225_600  # 2026-01-01T00:00:00Z


async def _clock(client: stripe.StripeClient, at: int = START) -> str:
    return (await client.v1.test_helpers.test_clocks.create_async({"frozen_time": at})).id


async def _advance(client: stripe.StripeClient, clock: str, to: int) -> None:
    await client.v1.test_helpers.test_clocks.advance_async(clock, {"frozen_time": to})


async def _invoice(db: asyncpg.Connection, invoice_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM subscriptions.invoices WHERE stripe_invoice_id = $1", invoice_id
    )


async def test_a_paid_subscription_and_its_renewal(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    prices = await seed(sandbox.url)
    clock = await _clock(stripe_client)
    customer = await new_member_customer(stripe_client, "u_state", clock=clock)
    sub = await stripe_client.v1.subscriptions.create_async(
        {
            "customer": customer,
            "items": [{"price": prices["hot_desk_monthly"]}],
            "metadata": {"user_id": "u_state"},
        }
    )
    await sandbox.flush()

    row = await eventually(
        lambda: subscription_row(db, sub.id),
        until=lambda r: r is not None and r["status"] == "active",
        what="the subscription active",
    )
    assert (row["user_id"], row["plan"], row["interval"]) == ("u_state", "hot_desk", "month")
    assert row["unit_amount"] == 19900 and row["currency"] == "usd"
    assert row["current_period_start"].timestamp() == START
    first_invoice = await eventually(
        lambda: _invoice(db, str(sub.latest_invoice)),
        until=lambda r: r is not None and r["status"] == "paid",
        what="the first invoice paid",
    )
    assert first_invoice["amount_paid"] == 19900 and first_invoice["currency"] == "usd"
    assert first_invoice["billing_reason"] == "subscription_create"
    assert first_invoice["attempt_count"] == 1
    assert first_invoice["hosted_invoice_url"] and first_invoice["invoice_pdf"]
    assert first_invoice["user_id"] == "u_state"

    activated = await wait_outbox(db, "subscription.activated")
    assert len(activated) == 1
    data = activated[0]["data"]
    assert activated[0]["id"] == str(event_id("subscriptions", "subscription.activated", sub.id))
    assert data["plan"] == {"plan": "hot_desk", "interval": "month"}
    assert data["allotments"] == {
        "meeting_room_hours": 10,
        "guest_passes": 2,
        "printing_pages": 100,
    }
    assert data["member"]["user_id"] == "u_state" and data["status"] == "active"
    paid = await wait_outbox(db, "invoice.paid")
    assert paid[0]["data"]["amount_paid"] == 19900

    # A month later Stripe renews: a new period paid, its allotments announced.
    period_end = int(row["current_period_end"].timestamp())
    await _advance(stripe_client, clock, period_end + 2 * HOUR)
    await sandbox.flush()
    renewed = await wait_outbox(db, "subscription.renewed")
    assert len(renewed) == 1
    renewal = renewed[0]["data"]
    assert renewal["period"]["start"].startswith("2026-02-01")
    assert renewal["amount_paid"] == 19900 and renewal["allotments"]["meeting_room_hours"] == 10
    row = await eventually(
        lambda: subscription_row(db, sub.id),
        until=lambda r: r is not None and r["current_period_start"].timestamp() == period_end,
        what="the new period mirrored",
    )
    history = await db.fetch(
        "SELECT actor_type, action, changes FROM subscriptions.subscription_history"
        " WHERE stripe_subscription_id = $1 ORDER BY id",
        sub.id,
    )
    changes = [json.loads(h["changes"]) for h in history]
    assert changes[0]["plan"] == [None, "hot_desk"]
    assert any("current_period_end" in c for c in changes[1:])
    assert all(h["actor_type"] == "stripe" for h in history)
    # Each fact once, however many events said it.
    assert len(await outbox(db, "subscription.activated")) == 1
    assert len(await outbox(db, "invoice.paid")) == 2


async def test_an_invoice_before_its_subscription_and_duplicates_out_of_order(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    prices = await seed(sandbox.url)
    await sandbox.control("POST", "/_sandbox/delivery", {"paused": True})
    customer = await new_member_customer(stripe_client, "u_order")
    sub = await stripe_client.v1.subscriptions.create_async(
        {
            "customer": customer,
            "items": [{"price": prices["dedicated_desk_yearly"]}],
            "metadata": {"user_id": "u_order"},
        }
    )
    events: list[Any] = [
        json.loads(json.dumps(e.to_dict(), default=str))  # decimals as Stripe writes them
        for e in (await stripe_client.v1.events.list_async({"limit": 100})).data
        if e.type.startswith(("invoice.", "customer.subscription."))
    ]
    events = [e for e in events if e["data"]["object"]["id"] in (sub.id, str(sub.latest_invoice))]
    paid = next(e for e in events if e["type"] == "invoice.paid")

    # The invoice first: its subscription is read from Stripe, not lost.
    assert (await post_event(http, stripe_stack.gateway, paid))[0] == 200
    row = await eventually(
        lambda: subscription_row(db, sub.id), what="the subscription fetched from Stripe"
    )
    assert (row["plan"], row["interval"], row["status"]) == ("dedicated_desk", "year", "active")
    invoice = await eventually(lambda: _invoice(db, str(sub.latest_invoice)), what="invoice")
    assert invoice["status"] == "paid" and invoice["amount_paid"] == 349000

    # The rest, newest first, each twice.
    for evt in [*reversed(events), *events]:
        assert (await post_event(http, stripe_stack.gateway, evt))[0] == 200
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM subscriptions.inbox WHERE queue = $1 AND event_id = ANY($2)",
            queues.SUBSCRIPTIONS_STRIPE,
            [e["id"] for e in events],
        ),
        until=lambda n: n == len(events),
        what="every event handled",
    )
    row = await subscription_row(db, sub.id)
    assert row is not None and row["status"] == "active"
    invoice = await _invoice(db, str(sub.latest_invoice))
    assert invoice is not None and invoice["status"] == "paid"
    assert len(await outbox(db, "subscription.activated")) == 1
    assert len(await outbox(db, "invoice.paid")) == 1
