"""Every object the emulator returns has every top-level key of Stripe's fixture."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import Sandbox, new_customer
from tests.support.env import STRIPE_FIXTURES


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Any]:
    # Stripe's own examples, beside the repository (or STRIPE_FIXTURES): a
    # missing file fails the test rather than skipping the comparison.
    data: dict[str, Any] = json.loads(STRIPE_FIXTURES.read_text())["resources"]
    return data


def _objects(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": 1_767_225_600})
    customer, pm = new_customer(client, clock=clock.id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": sub["items"].data[0].id, "price": catalog["office"].id}]}
    )
    invoice = client.v1.invoices.retrieve(str(sub.latest_invoice))
    pi = client.v1.payment_intents.create(
        params={
            "amount": 2500,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm,
            "confirm": True,
        }
    )
    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 100})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": catalog["room"].id}],
            "success_url": "https://example.com/ok",
        }
    )
    line_item = client.v1.checkout.sessions.line_items.list(session.id).data[0]
    portal = client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    invoice_item = client.v1.invoice_items.list(params={"customer": customer.id}).data[0]
    payment = client.v1.invoice_payments.list(params={"invoice": invoice.id}).data[0]
    event = client.v1.events.list(params={"limit": 1}).data[0]
    objs = {
        "customer": client.v1.customers.retrieve(customer.id),
        "product": client.v1.products.retrieve(str(catalog["hot_desk"].product)),
        "price": catalog["hot_desk"],
        "payment_method": client.v1.payment_methods.retrieve(str(pm)),
        "subscription": client.v1.subscriptions.retrieve(sub.id),
        "subscription_item": client.v1.subscriptions.retrieve(sub.id)["items"].data[0],
        "invoice": invoice,
        "line_item": invoice.lines.data[0],
        "invoiceitem": invoice_item,
        "invoice_payment": payment,
        "payment_intent": client.v1.payment_intents.retrieve(pi.id),
        "charge": client.v1.charges.retrieve(str(pi.latest_charge)),
        "refund": refund,
        "checkout.session": session,
        "item": line_item,
        "billing_portal.session": portal,
        "event": event,
        "test_helpers.test_clock": client.v1.test_helpers.test_clocks.retrieve(clock.id),
    }
    return {name: obj.to_dict() for name, obj in objs.items()}


def test_objects_have_fixture_keys(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any], fixtures: dict[str, Any]
) -> None:
    objs = _objects(sandbox, client, catalog)
    problems = {}
    for name, obj in objs.items():
        assert obj["object"] == name, name
        missing = sorted(set(fixtures[name]) - set(obj))
        if missing:
            problems[name] = missing
    assert problems == {}


def test_event_payloads_have_fixture_keys(
    client: stripe.StripeClient, fixtures: dict[str, Any]
) -> None:
    for event in client.v1.events.list(params={"limit": 100}).data:
        data = event.to_dict()
        assert set(fixtures["event"]) <= set(data)
        inner = data["data"]["object"]
        kind = inner["object"]
        if kind in fixtures:
            assert set(fixtures[kind]) <= set(inner), (event.type, set(fixtures[kind]) - set(inner))
