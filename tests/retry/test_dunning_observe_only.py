"""Observe-only mode: Stripe's Smart Retries charge, the retry service records
and notifies, and never charges itself."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe

from tests.retry.helpers import DAY, attempts_of, case_in, fail_renewal, new_member, outbox_events
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


@pytest.fixture
def retry_settings(retry_settings: dict[str, Any]) -> dict[str, Any]:
    return {**retry_settings, "dunning_observe_only": True}


async def test_observe_only_records_stripe_retries_and_never_charges(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    await sandbox.control(
        "POST",
        "/_sandbox/settings",
        {"smart_retries": True, "retry_tries": 3, "retry_window_days": 7},
    )
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=10)
    case = await case_in(db, invoice_id, "open")
    assert case["next_attempt_at"] is None  # nothing of ours is scheduled

    # Stripe retries twice more within its window, then gives up.
    await stripe_client.v1.test_helpers.test_clocks.advance_async(
        member.clock_id, params={"frozen_time": member.period_end + 8 * DAY}
    )
    case = await case_in(db, invoice_id, "exhausted")
    # Stripe's last failure or its cancellation, whichever we applied first,
    # ends the case; either way the end action was Stripe's, not run by us.
    assert case["close_reason"] == "stripe_retries_spent"
    assert case["end_action"] in ("leave_past_due", "cancel_subscription")
    assert case["end_action_done_at"] is not None
    attempts = await eventually(
        lambda: attempts_of(db, invoice_id),
        until=lambda found: len(found) == 2,
        what="Stripe's two retries recorded",
    )
    assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "observed"), (2, "observed")]
    ours = [
        r
        for r in await sandbox.requests(f"/v1/invoices/{invoice_id}", method="POST")
        if (r["idempotency_key"] or "").startswith("dunning-")
    ]
    assert ours == []
    notified = await outbox_events(db, "dunning.attempt_failed")
    assert notified[0]["data"]["attempt"] == 0
    assert {e["data"]["attempt"] for e in notified} <= {0, 1, 2}
    assert notified[0]["data"]["next_attempt_at"] is not None  # Stripe's next retry
    assert len(await outbox_events(db, "dunning.exhausted")) == 1


async def test_a_case_first_heard_of_at_stripes_last_retry_is_closed(
    dunning_stack: Stack, db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    # The renewal's own failure and Stripe's first retries never reached us (lost,
    # or before this service ran): the first event we see is Stripe's last retry,
    # its fourth attempt, with no next one.
    invoice = so.fixture("invoice")
    invoice.update(
        id=so.new_id("in"),
        customer="cus_test_member",
        status="open",
        billing_reason="subscription_cycle",
        amount_due=19900,
        amount_paid=0,
        amount_remaining=19900,
        currency="usd",
        attempt_count=4,
        next_payment_attempt=None,
        customer_email="ada@example.com",
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": so.new_id("sub"), "metadata": {}},
        },
    )
    failed = so.event("invoice.payment_failed", invoice, created=int(time.time()))
    status, body = await post_event(http, dunning_stack.gateway, failed)
    assert status == 200, body

    case = await case_in(db, invoice["id"], "exhausted")
    assert case["close_reason"] == "stripe_retries_spent"
    assert case["end_action_done_at"] is not None
    attempts = await attempts_of(db, invoice["id"])
    assert [(a["number"], a["outcome"]) for a in attempts] == [(3, "observed")]
    # One event, one email: the member hears of it once.
    notified = await outbox_events(db, "dunning.attempt_failed")
    assert len(notified) == 1 and notified[0]["data"]["next_attempt_at"] is None
