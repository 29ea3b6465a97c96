"""Payment intents, test cards, refunds, invoice actions, checkout and the portal."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import Sandbox, new_customer


def test_payment_intent_and_refunds(client: stripe.StripeClient) -> None:
    customer, pm = new_customer(client)
    pi = client.v1.payment_intents.create(
        params={
            "amount": 5000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm,
            "confirm": True,
            "metadata": {"booking": "b1"},
            "off_session": True,
        }
    )
    assert pi.status == "succeeded" and pi.amount_received == 5000
    assert pi.metadata["booking"] == "b1"
    partial = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 2000})
    assert partial.amount == 2000 and partial.status == "succeeded"
    charge = client.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.amount_refunded == 2000 and not charge.refunded
    with pytest.raises(stripe.InvalidRequestError) as over:
        client.v1.refunds.create(params={"charge": charge.id, "amount": 3001})
    assert over.value.param == "amount"
    rest = client.v1.refunds.create(params={"charge": charge.id})
    assert rest.amount == 3000
    assert client.v1.charges.retrieve(charge.id).refunded
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"charge": charge.id, "amount": 1})
    types = [e.type for e in client.v1.events.list(params={"limit": 10}).data]
    assert types[:4] == ["charge.refunded", "refund.created", "charge.refunded", "refund.created"]


def test_confirm_later_and_declines(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params={"amount": 2500, "currency": "usd"})
    assert pi.status == "requires_payment_method" and pi.client_secret
    with pytest.raises(stripe.CardError) as err:
        client.v1.payment_intents.confirm(
            pi.id, params={"payment_method": "pm_card_visa_chargeDeclinedStolenCard"}
        )
    assert err.value.error is not None and err.value.error.decline_code == "stolen_card"
    failed = client.v1.payment_intents.retrieve(pi.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None
    assert failed.last_payment_error.decline_code == "stolen_card"
    ok = client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_mastercard"})
    assert ok.status == "succeeded"


def test_attach_rules(client: stripe.StripeClient) -> None:
    customer, _ = new_customer(client, card=None)
    with pytest.raises(stripe.CardError) as err:
        client.v1.payment_methods.attach(
            "pm_card_visa_chargeDeclinedStolenCard", params={"customer": customer.id}
        )
    assert err.value.error is not None and err.value.error.decline_code == "stolen_card"
    flaky = client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer.id}
    )
    assert flaky.id.startswith("pm_") and flaky.id != "pm_card_chargeCustomerFail"
    assert flaky.customer == customer.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": "pm_unknown"}}
        )
    listed = client.v1.customers.payment_methods.list(customer.id)
    assert [p.id for p in listed.data] == [flaky.id]


def test_void_and_uncollectible(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    customer, _ = new_customer(client, card=None)
    one = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "payment_behavior": "default_incomplete",
        }
    )
    voided = client.v1.invoices.void_invoice(str(one.latest_invoice))
    assert voided.status == "void"
    assert client.v1.subscriptions.retrieve(one.id).status == "incomplete_expired"
    two = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["office"].id}],
            "payment_behavior": "default_incomplete",
        }
    )
    bad = client.v1.invoices.mark_uncollectible(str(two.latest_invoice))
    assert bad.status == "uncollectible"
    statuses = {i.status for i in client.v1.invoices.list(params={"customer": customer.id}).data}
    assert statuses == {"void", "uncollectible"}
    assert client.v1.invoices.list(params={"customer": customer.id, "status": "void"}).data


def test_checkout_subscription_completion(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
            "success_url": "https://example.com/ok?session={CHECKOUT_SESSION_ID}",
            "client_reference_id": "member-7",
            "metadata": {"plan": "hot_desk_monthly"},
            "customer_email": "new@example.com",
        }
    )
    assert session.status == "open" and session.url and session.amount_total == 19900
    declined = sandbox.raw(
        "POST",
        f"/_sandbox/checkout/sessions/{session.id}/complete",
        json={"payment_method": "pm_card_chargeCustomerFail"},
    )
    assert declined.status_code == 402
    assert declined.json()["error"]["decline_code"] == "generic_decline"
    done = sandbox.control(
        "POST",
        f"/_sandbox/checkout/sessions/{session.id}/complete",
        {"payment_method": "pm_card_visa"},
    )
    assert done["status"] == "complete" and done["payment_status"] == "paid"
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "active" and sub.customer == done["customer"]
    assert client.v1.customers.retrieve(done["customer"]).email == "new@example.com"
    completed = client.v1.events.list(params={"type": "checkout.session.completed"}).data[0]
    assert completed.data.object["client_reference_id"] == "member-7"
    assert completed.data.object["metadata"]["plan"] == "hot_desk_monthly"


def test_checkout_payment_and_portal(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": catalog["room"].id, "quantity": 2}],
            "success_url": "https://example.com/ok",
            "payment_intent_data": {"metadata": {"booking": "room-1"}},
        }
    )
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "line_items": [{"price": catalog["hot_desk"].id}],
                "success_url": "https://example.com/ok",
            }
        )
    done = sandbox.control("POST", f"/_sandbox/checkout/sessions/{session.id}/complete", {})
    pi = client.v1.payment_intents.retrieve(done["payment_intent"])
    assert pi.status == "succeeded" and pi.amount == 5000
    assert pi.metadata["booking"] == "room-1"
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": customer.id, "return_url": "https://example.com/account"}
    )
    assert portal.url.startswith("https://billing.stripe.com/")
    assert portal.return_url == "https://example.com/account" and portal.customer == customer.id
    # Without a portal configuration holding a default, Stripe needs the return URL.
    with pytest.raises(stripe.InvalidRequestError) as no_return:
        client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    assert no_return.value.param == "return_url"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing_portal.sessions.create(
            params={"customer": customer.id, "return_url": "javascript:alert(1)"}
        )
