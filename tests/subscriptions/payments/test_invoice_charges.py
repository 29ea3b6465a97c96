"""Charges of subscription invoices: refunded and disputed like bookings, with the
invoice and subscription on their domain events; staff see one transaction history."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe
from prometheus_client import REGISTRY

from services.subscriptions import customers
from shared import runtime
from tests.subscriptions.payments.helpers import (
    MEMBER,
    STAFF,
    Api,
    domain_events,
    item,
    until_applied,
    until_events,
)
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


@pytest.fixture
def api(stripe_stack: Stack, http: aiohttp.ClientSession) -> Api:
    return Api(http, stripe_stack.gateway)


async def subscribe(stack: Stack, client: stripe.StripeClient) -> tuple[str, str, str]:
    """A member's subscription whose first invoice is paid by card: (sub, invoice, charge)."""
    app = stack.app("subscriptions")
    customer = await customers.ensure(
        app[runtime.POOL], app[runtime.STRIPE], MEMBER, "ada@example.com"
    )
    cid = customer.stripe_customer_id
    pm = await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": cid})
    await client.v1.customers.update_async(
        cid, {"invoice_settings": {"default_payment_method": pm.id}}
    )
    price = await client.v1.prices.create_async(
        {
            "currency": "usd",
            "unit_amount": 19900,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Hot Desk"},
        }
    )
    sub = await client.v1.subscriptions.create_async(
        {"customer": cid, "items": [{"price": price.id}]}
    )
    invoice_id = str(sub.latest_invoice)
    paid = await client.v1.invoice_payments.list_async({"invoice": invoice_id})
    intent_id = paid.data[0].payment.payment_intent
    intent = await client.v1.payment_intents.retrieve_async(str(intent_id))
    return sub.id, invoice_id, str(intent.latest_charge)


async def admin_payments(api: Api, **params: str) -> list[dict[str, Any]]:
    status, page = await api.call(
        "GET", "/v1/admin/payments", user=STAFF, role="staff", params=params
    )
    assert status == 200, page
    return list(page["data"])


async def test_refund_and_dispute_of_a_subscription_invoice(
    api: Api,
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    sub_id, invoice_id, charge_id = await subscribe(stripe_stack, stripe_client)

    async def linked() -> list[dict[str, Any]]:
        rows = await admin_payments(api)
        return [p for p in rows if p["invoice_id"] == invoice_id and p["subscription_id"]]

    [payment] = await eventually(linked, what="the invoice's charge")
    assert payment["kind"] == "invoice" and payment["amount_paid"] == 19900
    assert (payment["user_id"], payment["subscription_id"]) == (MEMBER, sub_id)

    status, refused = await api.call(
        "POST", f"/v1/invoices/{invoice_id}/refunds", json={"reason": "member asked for it"}
    )
    assert status == 403, refused
    status, refund = await api.call(
        "POST",
        f"/v1/invoices/{invoice_id}/refunds",
        user=STAFF,
        role="staff",
        json={"amount": 5000, "reason": "outage on the 3rd"},
        key="inv-refund-1",
    )
    assert (status, refund["remaining"]) == (201, 14900), refund
    [refunded] = await until_events(db, "payment.refunded")
    assert refunded["data"]["payment"]["invoice_id"] == invoice_id
    assert refunded["data"]["payment"]["subscription_id"] == sub_id
    assert (refunded["data"]["amount_refunded"], refunded["data"]["full"]) == (5000, False)

    disputes_before = REGISTRY.get_sample_value("payments_disputes_total", {"kind": "invoice"})
    dispute = await sandbox.control(
        "POST", f"/_sandbox/charges/{charge_id}/dispute", {"reason": "fraudulent"}
    )

    [disputed] = await until_events(db, "payment.disputed")
    data = disputed["data"]
    assert data["payment"]["invoice_id"] == invoice_id
    assert data["payment"]["subscription_id"] == sub_id
    assert data["payment"]["charge_id"] == charge_id
    assert (data["dispute_id"], data["reason"]) == (dispute["id"], "fraudulent")
    assert data["member"]["user_id"] == MEMBER
    disputes_now = REGISTRY.get_sample_value("payments_disputes_total", {"kind": "invoice"})
    assert (disputes_now or 0) == (disputes_before or 0) + 1
    shown = await api.until_status(payment["id"], "disputed")
    assert shown["dispute"]["id"] == dispute["id"]

    assert await domain_events(db, "payment.dispute_closed") == []

    await sandbox.control("POST", f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "won"})
    won = await api.until_status(payment["id"], "partially_refunded")
    assert won["dispute"]["status"] == "won"
    assert len(await until_events(db, "payment.disputed")) == 1
    # Announced once, though funds_reinstated and closed both say won.
    [closed] = await until_events(db, "payment.dispute_closed")
    assert (closed["data"]["dispute_id"], closed["data"]["status"]) == (dispute["id"], "won")
    assert closed["data"]["payment"]["invoice_id"] == invoice_id
    await until_applied(db, "charge.dispute.closed")
    await until_applied(db, "charge.dispute.funds_reinstated")
    assert len(await domain_events(db, "payment.dispute_closed")) == 1


async def test_transaction_history_and_summary(
    api: Api, stripe_stack: Stack, stripe_client: stripe.StripeClient
) -> None:
    _, invoice_id, _ = await subscribe(stripe_stack, stripe_client)
    status, booking = await api.pay([item("day_pass", 1, "desk-day:2026-12-20")])
    assert status == 201, booking
    await stripe_client.v1.payment_intents.confirm_async(
        booking["payment_intent_id"], {"payment_method": "pm_card_visa"}
    )
    await api.until_status(booking["payment_id"], "succeeded")
    status, failing = await api.pay([item("day_pass", 1, "desk-day:2026-12-21")])
    assert status == 201, failing
    with pytest.raises(stripe.CardError):
        await stripe_client.v1.payment_intents.confirm_async(
            failing["payment_intent_id"], {"payment_method": "pm_card_chargeDeclined"}
        )
    await api.until_status(failing["payment_id"], "failed")

    async def history() -> list[dict[str, Any]]:
        return await admin_payments(api, status="succeeded")

    rows = await eventually(history, until=lambda r: len(r) == 2, what="two succeeded")
    assert {r["kind"] for r in rows} == {"booking", "invoice"}
    assert {r["invoice_id"] for r in rows} == {None, invoice_id}
    page = await admin_payments(api, limit="1")
    assert len(page) == 1
    later = await admin_payments(api, **{"from": "2999-01-01T00:00:00Z"})
    assert later == []

    status, summary = await api.call("GET", "/v1/admin/payments/summary", user=STAFF, role="staff")
    assert status == 200, summary
    assert summary["succeeded"] == {"count": 2, "amount": {"usd": 19900 + 3500}}
    assert summary["failed"] == {"count": 1, "amount": {"usd": 3500}}
    assert summary["refunded"]["count"] == 0 and summary["disputed"]["count"] == 0
    assert summary["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
