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
