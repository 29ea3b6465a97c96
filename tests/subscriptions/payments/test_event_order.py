"""A payment's state from Stripe's events delivered shuffled and duplicated."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe

from tests.subscriptions.payments.helpers import Api, domain_events, item
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


@pytest.mark.parametrize("seed", [1, 7, 42])
async def test_shuffled_and_duplicated_events_end_in_stripes_state(
    stripe_stack: Stack,
    *,
    http: aiohttp.ClientSession,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    seed: int,
) -> None:
    api = Api(http, stripe_stack.gateway)
    await sandbox.control(
        "POST", "/_sandbox/delivery", {"paused": True, "chaos": True, "seed": seed}
    )
    status, created = await api.pay([item("meeting_room_hour", 2, "room-5:2026-12-14T08")])
    assert status == 201, created
    intent_id = created["payment_intent_id"]
    with pytest.raises(stripe.CardError):
        await stripe_client.v1.payment_intents.confirm_async(
            intent_id, {"payment_method": "pm_card_chargeDeclined"}
        )
    await stripe_client.v1.payment_intents.confirm_async(
        intent_id, {"payment_method": "pm_card_visa"}
    )
    for amount in (1000, 1500):
        await stripe_client.v1.refunds.create_async({"payment_intent": intent_id, "amount": amount})

    await sandbox.control("POST", "/_sandbox/delivery", {"paused": False})
    await sandbox.flush()

    async def payment() -> dict[str, Any]:
        return dict(await api.payment(created["payment_id"]))

    final = await eventually(
        payment,
        until=lambda p: p["amount_refunded"] == 2500 and p["status"] == "partially_refunded",
        what="the success and both refunds applied",
    )
    assert (final["status"], final["amount_paid"]) == ("partially_refunded", 5000)
    refunds = await domain_events(db, "payment.refunded")
    # Every refunded cent announced exactly once, whatever order the refunds came in.
    assert sum(e["data"]["amount_refunded"] for e in refunds) == 2500
    assert max(e["data"]["total_refunded"] for e in refunds) == 2500
    assert len(await domain_events(db, "payment.succeeded")) == 1
