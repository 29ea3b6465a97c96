"""The bulk control behind the dunning benchmark: open invoices shaped like
Stripe's, payable like any other."""

from __future__ import annotations

import json
from typing import Any

import stripe

from tests.stripe_sandbox.sandbox_helpers import Sandbox, new_customer
from tests.stripe_sandbox.test_sandbox_shapes import (
    DOCUMENTED_EXTRAS,
    extra_keys,
    fixtures,  # noqa: F401 - the fixture, used by name
    missing_keys,
)


def test_open_invoices_have_stripes_shape_and_can_be_paid(
    sandbox: Sandbox,
    client: stripe.StripeClient,
    fixtures: dict[str, Any],  # noqa: F811
) -> None:
    customer, _ = new_customer(client)
    made = sandbox.control(
        "POST", f"/_sandbox/customers/{customer.id}/open_invoices", {"count": 3, "amount": 1500}
    )
    assert len(made["data"]) == 3 and len(set(made["data"])) == 3
    invoice = client.v1.invoices.retrieve(made["data"][0])
    assert (invoice.status, invoice.amount_due, invoice.customer) == ("open", 1500, customer.id)
    shape = invoice.to_dict()
    assert missing_keys(fixtures["invoice"], shape) == [], json.dumps(shape)[:500]
    assert extra_keys(fixtures["invoice"], shape) - DOCUMENTED_EXTRAS["invoice"] == set()

    paid = client.v1.invoices.pay(invoice.id)
    assert paid.status == "paid"


def test_open_invoices_refuses_a_silly_count(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    customer, _ = new_customer(client)
    refused = sandbox.raw(
        "POST", f"/_sandbox/customers/{customer.id}/open_invoices", json={"count": 0}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "count"


def _subscription(client: stripe.StripeClient, customer_id: str) -> stripe.Subscription:
    product = client.v1.products.create(params={"name": "Hot desk"})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 1500,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    return client.v1.subscriptions.create(
        params={"customer": customer_id, "items": [{"price": price.id}]}
    )


def test_open_invoices_of_a_subscription_are_its_renewals(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    customer, _ = new_customer(client)
    sub = _subscription(client, customer.id)
    made = sandbox.control(
        "POST",
        f"/_sandbox/customers/{customer.id}/open_invoices",
        {"count": 2, "amount": 1500, "subscription": sub.id},
    )
    invoice = client.v1.invoices.retrieve(
        made["data"][0], params={"expand": ["parent.subscription_details.subscription"]}
    )
    assert (invoice.status, invoice.billing_reason) == ("open", "subscription_cycle")
    assert invoice.parent is not None and invoice.parent.subscription_details is not None
    expanded = invoice.parent.subscription_details.subscription
    assert isinstance(expanded, stripe.Subscription)
    assert (expanded.id, expanded.status) == (sub.id, "active")
    plain = client.v1.invoices.retrieve(made["data"][1])
    assert plain.parent is not None and plain.parent.subscription_details is not None
    assert plain.parent.subscription_details.subscription == sub.id
    assert client.v1.invoices.pay(plain.id).status == "paid"


def test_open_invoices_refuse_another_customers_subscription(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    customer, _ = new_customer(client)
    other, _ = new_customer(client)
    sub = _subscription(client, other.id)
    refused = sandbox.raw(
        "POST",
        f"/_sandbox/customers/{customer.id}/open_invoices",
        json={"count": 1, "subscription": sub.id},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "subscription"
