"""A same-second tie between two states of one subscription ends in the NEWEST
state, in both delivery orders, because the tie is settled by the object as
Stripe holds it, not by the random event id.

The sandbox really takes the subscription from ``active`` to ``past_due`` (a
renewal paid by a failing card on a test clock); the two webhook events the
product receives carry the same ``created`` second and the same period, so
nothing in them says which is newer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import stripe

from shared import queues
from shared.stripe_calls import stripe_json
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

UPDATED = "customer.subscription.updated"
HOUR = 3_600
CLOCK_START = 1_767_225_600  # 2026-01-01T00:00:00Z


async def _past_due_subscription(client: stripe.StripeClient) -> dict[str, Any]:
    """A subscription Stripe holds as ``past_due``: its renewal's payment failed."""
    clock = await client.v1.test_helpers.test_clocks.create_async(
        params={"frozen_time": CLOCK_START}
    )
    customer = await client.v1.customers.create_async(
        params={"email": "tie@example.com", "test_clock": clock.id}
    )
    card = await client.v1.payment_methods.attach_async(
        "pm_card_visa", params={"customer": customer.id}
    )
    await client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    product = await client.v1.products.create_async(params={"name": "Hot desk"})
    price = await client.v1.prices.create_async(
        params={
            "product": product.id,
            "unit_amount": 19_900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    sub = await client.v1.subscriptions.create_async(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    assert sub.status == "active"
    failing = await client.v1.payment_methods.attach_async(
        "pm_card_chargeCustomerFail", params={"customer": customer.id}
    )
    await client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": failing.id}}
    )
    period_end = sub["items"].data[0].current_period_end
    await client.v1.test_helpers.test_clocks.advance_async(
        clock.id, params={"frozen_time": period_end + 2 * HOUR}
    )
    state = await client.v1.test_helpers.test_clocks.retrieve_async(clock.id)
    assert state.status == "ready"
    current = stripe_json(await client.v1.subscriptions.retrieve_async(sub.id))
    assert current["status"] == "past_due", current["status"]
    return current


async def _handled(db: asyncpg.Connection, event_id: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM subscriptions.inbox WHERE queue = $1 AND event_id = $2",
            queues.SUBSCRIPTIONS_STRIPE,
            event_id,
        )
    )


def _handled_check(db: asyncpg.Connection, event_id: str) -> Callable[[], Awaitable[bool]]:
    return lambda: _handled(db, event_id)


async def test_active_then_past_due_in_one_second_ends_past_due_in_both_orders(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # The sandbox's own deliveries would settle it with later seconds: hold them.
    await sandbox.control("POST", "/_sandbox/delivery", {"paused": True})
    await sandbox.control("POST", "/_sandbox/settings", {"smart_retries": False})
    second = int(time.time()) - 30
    for order in ("active first", "past_due first"):
        newest = await _past_due_subscription(stripe_client)
        older = copy.deepcopy(newest)
        older["status"] = "active"
        # Stripe's ids are random: give the OLDER state the id that sorts last,
        # so a rule "larger id wins" would keep it.
        active = so.event(UPDATED, older, created=second, event_id=f"evt_zz{so.new_id('x')}")
        past_due = so.event(UPDATED, newest, created=second, event_id=f"evt_aa{so.new_id('x')}")
        pair = [active, past_due] if order == "active first" else [past_due, active]
        await sandbox.control("DELETE", "/_sandbox/requests")

        for evt in pair:
            status, answer = await post_event(http, stripe_stack.gateway, evt)
            assert status == 200, answer
            await eventually(
                _handled_check(db, evt["id"]), timeout=15, what=f"{order}: {evt['id']} handled"
            )

        row = await db.fetchrow(
            "SELECT status, last_event_id FROM subscriptions.subscriptions"
            " WHERE stripe_subscription_id = $1",
            newest["id"],
        )
        assert row is not None
        assert row["status"] == "past_due", order
        fetched = await sandbox.requests(f"/v1/subscriptions/{newest['id']}", method="GET")
        assert fetched, f"{order}: the tie was not settled from Stripe"
