"""Stripe (the sandbox, over HTTP) -> signed webhooks -> gateway -> ledger and
subscriptions, with deliveries shuffled and duplicated as Stripe may send them."""

from __future__ import annotations

import asyncpg
import stripe

from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def test_chaotic_deliveries_give_one_ledger_row_each_and_the_final_state(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    client = stripe_client
    await sandbox.control("POST", "/_sandbox/delivery", {"shuffle": True, "duplicates": 0.5})
    product = await client.v1.products.create_async(params={"name": "Hot desk"})
    price = await client.v1.prices.create_async(
        params={
            "product": product.id,
            "unit_amount": 19_900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    customer = await client.v1.customers.create_async(params={"email": "m@example.com"})
    card = await client.v1.payment_methods.attach_async(
        "pm_card_visa", params={"customer": customer.id}
    )
    await client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    subscription = await client.v1.subscriptions.create_async(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    await client.v1.subscriptions.update_async(
        subscription.id, params={"cancel_at_period_end": True}
    )
    await client.v1.subscriptions.cancel_async(subscription.id)

    flushed = await sandbox.control("POST", "/_sandbox/delivery/flush", {"timeout": 20})
    assert flushed["drained"]
    stats = await sandbox.control("GET", "/_sandbox/delivery")
    assert stats["duplicates_delivered"] > 0  # the chaos was real

    listed = await client.v1.events.list_async(params={"limit": 100})
    assert not listed.has_more
    sent = {e.id for e in listed.data}
    stored = await eventually(
        lambda: db.fetch("SELECT id FROM webhooks.events"),
        until=lambda rows: {r["id"] for r in rows} >= sent,
        what="every Stripe event in the ledger",
    )
    assert sorted(r["id"] for r in stored) == sorted(sent)  # each exactly once

    final = await client.v1.subscriptions.retrieve_async(subscription.id)
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT status, stripe_customer_id, price_id, cancel_at_period_end, canceled_at"
            " FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            subscription.id,
        ),
        until=lambda r: r is not None and r["status"] == final.status,
        what="the subscription's final state",
    )
    assert final.status == "canceled"
    assert row["stripe_customer_id"] == customer.id
    assert row["price_id"] == price.id
    assert row["canceled_at"] is not None
