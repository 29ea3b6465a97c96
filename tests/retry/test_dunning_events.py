"""Stripe's events and dunning cases: one case per invoice in any order, with
duplicates, and what closes it. Delivered signed to the gateway, as Stripe does."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg

from tests.retry.helpers import case_in, outbox_events
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.stack import Stack
from tests.support.waiting import eventually


def _renewal(status: str = "open", **changes: Any) -> dict[str, Any]:
    invoice = so.fixture("invoice")
    invoice.update(
        id=so.new_id("in"),
        customer="cus_test_member",
        status=status,
        billing_reason="subscription_cycle",
        amount_due=19900,
        amount_paid=19900 if status == "paid" else 0,
        amount_remaining=0 if status == "paid" else 19900,
        currency="usd",
        attempt_count=1,
        customer_email="ada@example.com",
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "subscription": so.new_id("sub"),
                "metadata": {"user_id": "user_7"},
            },
        },
    )
    invoice.update(changes)
    return invoice


async def _deliver(http: aiohttp.ClientSession, stack: Stack, evt: dict[str, Any]) -> None:
    status, body = await post_event(http, stack.gateway, evt)
    assert status == 200, body


async def _applied(db: asyncpg.Connection, event_id: str) -> None:
    await eventually(
        lambda: db.fetchval(
            "SELECT true FROM retry.inbox WHERE queue = 'retry.stripe-events' AND event_id = $1",
            event_id,
        ),
        what=f"{event_id} applied by the retry service",
    )


async def test_a_failure_arriving_after_the_payment_opens_no_case(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    failed = _renewal()
    paid = {**failed, "status": "paid", "amount_paid": 19900, "amount_remaining": 0}
    now = int(time.time())
    await _deliver(http, stack, so.event("invoice.paid", paid, created=now))
    late = so.event("invoice.payment_failed", failed, created=now - 60)
    await _deliver(http, stack, late)
    await _applied(db, late["id"])

    assert await db.fetchval("SELECT count(*) FROM retry.cases") == 0
    assert (
        await db.fetchval(
            "SELECT status FROM retry.settled_invoices WHERE invoice_id = $1", failed["id"]
        )
        == "paid"
    )


async def test_one_case_per_invoice_however_often_the_failure_arrives(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    invoice = _renewal()
    events = [so.event("invoice.payment_failed", invoice) for _ in range(3)]
    for evt in (*events, events[0]):  # and a duplicate delivery of the first
        await _deliver(http, stack, evt)
    for evt in events:
        await _applied(db, evt["id"])

    case = await case_in(db, invoice["id"], "open")
    assert (case["user_id"], case["email"], case["amount_due"]) == (
        "user_7",
        "ada@example.com",
        19900,
    )
    assert case["subscription_id"] == invoice["parent"]["subscription_details"]["subscription"]
    assert await db.fetchval("SELECT count(*) FROM retry.cases") == 1
    opened = await outbox_events(db, "dunning.attempt_failed")
    assert len(opened) == 1 and opened[0]["data"]["attempt"] == 0

    voided = so.event("invoice.voided", {**invoice, "status": "void"})
    await _deliver(http, stack, voided)
    case = await case_in(db, invoice["id"], "canceled")
    assert case["close_reason"] == "invoice_void"


async def test_the_subscription_ending_cancels_its_case(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    invoice = _renewal()
    await _deliver(http, stack, so.event("invoice.payment_failed", invoice))
    await case_in(db, invoice["id"], "open")
    sub_id = invoice["parent"]["subscription_details"]["subscription"]
    ended = so.subscription(sub_id=sub_id, status="canceled", canceled_at=int(time.time()))
    await _deliver(http, stack, so.event("customer.subscription.deleted", ended))

    case = await case_in(db, invoice["id"], "canceled")
    assert case["close_reason"] == "subscription_canceled"
    # A later payment of the invoice changes nothing: closed is closed.
    paid = {**invoice, "status": "paid", "amount_paid": 19900, "amount_remaining": 0}
    late = so.event("invoice.paid", paid)
    await _deliver(http, stack, late)
    await _applied(db, late["id"])
    assert (await case_in(db, invoice["id"], "canceled"))["recovered_amount"] is None
    assert await outbox_events(db, "dunning.recovered") == []


async def test_first_invoices_and_one_off_invoices_are_not_dunned(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    first = _renewal(billing_reason="subscription_create")
    manual = _renewal(billing_reason="manual", parent=None)
    for invoice in (first, manual):
        evt = so.event("invoice.payment_failed", invoice)
        await _deliver(http, stack, evt)
        await _applied(db, evt["id"])
    assert await db.fetchval("SELECT count(*) FROM retry.cases") == 0
