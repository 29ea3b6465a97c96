"""What the subscription features need: the Elements flow for a first payment, trials and
how they end, pausing and resuming, cancellation at period end and now."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import (
    DAY,
    HOUR,
    START,
    Sandbox,
    advance,
    events_of,
    new_clock,
    new_customer,
    types_of,
)

PK = {"Authorization": "Bearer pk_test_sandbox"}


def incomplete(client: stripe.StripeClient, price: str) -> tuple[stripe.Subscription, str]:
    customer, _ = new_customer(client, card=None)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price}],
            "payment_behavior": "default_incomplete",
            "payment_settings": {"save_default_payment_method": "on_subscription"},
            "expand": ["latest_invoice.confirmation_secret"],
        }
    )
    assert sub.status == "incomplete"
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice) and invoice.confirmation_secret is not None
    return sub, invoice.confirmation_secret.client_secret


def confirm_in_browser(sandbox: Sandbox, secret: str, card: str) -> Any:
    """What stripe.js does for Elements: confirm with the publishable key and client secret."""
    pi_id = secret.split("_secret_", maxsplit=1)[0]
    response = sandbox.raw(
        "POST",
        f"/v1/payment_intents/{pi_id}/confirm",
        headers=PK,
        data={"client_secret": secret, "payment_method": card},
    )
    return response


def test_elements_confirmation_pays_the_invoice_and_activates(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    sub, secret = incomplete(client, catalog["hot_desk"].id)
    response = confirm_in_browser(sandbox, secret, "pm_card_visa")
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    invoice_id = str(sub.latest_invoice.id)  # type: ignore[union-attr]
    invoice = client.v1.invoices.retrieve(invoice_id)
    assert invoice.status == "paid" and invoice.attempt_count == 1
    assert types_of(client, invoice_id, "invoice.")[-2:] == [
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    active = client.v1.subscriptions.retrieve(sub.id)
    assert active.status == "active"
    updates = events_of(client, sub.id, "customer.subscription.updated")
    assert [e.data.object["status"] for e in updates][-1] == "active"
    # save_default_payment_method=on_subscription: renewals will charge this card.
    pm = client.v1.payment_methods.retrieve(str(active.default_payment_method))
    assert pm.customer == sub.customer


def test_elements_decline_leaves_the_subscription_incomplete(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    sub, secret = incomplete(client, catalog["hot_desk"].id)
    response = confirm_in_browser(sandbox, secret, "pm_card_visa_chargeDeclined")
    assert response.status_code == 402
    assert response.json()["error"]["decline_code"] == "generic_decline"
    invoice_id = str(sub.latest_invoice.id)  # type: ignore[union-attr]
    assert types_of(client, invoice_id, "invoice.payment_failed") == ["invoice.payment_failed"]
    assert client.v1.invoices.retrieve(invoice_id).status == "open"
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete"
    # A second try with a good card still works.
    assert confirm_in_browser(sandbox, secret, "pm_card_mastercard").status_code == 200
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_elements_with_3d_secure(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    sub, secret = incomplete(client, catalog["hot_desk"].id)
    response = confirm_in_browser(sandbox, secret, "pm_card_authenticationRequired")
    assert response.json()["status"] == "requires_action"
    invoice_id = str(sub.latest_invoice.id)  # type: ignore[union-attr]
    assert "invoice.payment_action_required" in types_of(client, invoice_id)
    pi_id = secret.split("_secret_")[0]
    sandbox.control(
        "POST", f"/_sandbox/payment_intents/{pi_id}/authenticate", {"outcome": "succeeded"}
    )
    assert client.v1.invoices.retrieve(invoice_id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_trial_converts_to_paid(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "trial_period_days": 14,
        }
    )
    trial_end = START + 14 * DAY
    assert sub.status == "trialing" and sub.trial_end == trial_end
    advance(client, clock_id, trial_end - 3 * DAY - HOUR)
    assert types_of(client, sub.id, "customer.subscription.trial_will_end") == []
    advance(client, clock_id, trial_end - 3 * DAY + HOUR)
    warned = events_of(client, sub.id, "customer.subscription.trial_will_end")
    assert [e.created for e in warned] == [trial_end - 3 * DAY]

    advance(client, clock_id, trial_end + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "active"
    first_paid = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first_paid.billing_reason == "subscription_cycle"
    assert first_paid.amount_paid == 19900 and first_paid.status == "paid"
    assert first_paid.status_transitions.paid_at == trial_end + HOUR


@pytest.mark.parametrize("behavior", ["cancel", "pause", "create_invoice"])
def test_trial_ending_without_a_payment_method(
    client: stripe.StripeClient, catalog: dict[str, Any], behavior: str
) -> None:
    clock_id = new_clock(client)
    customer, _ = new_customer(client, card=None, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "trial_end": START + 7 * DAY,
            "trial_settings": {"end_behavior": {"missing_payment_method": behavior}},
        }
    )
    advance(client, clock_id, START + 7 * DAY + 2 * HOUR)
    after = client.v1.subscriptions.retrieve(sub.id)
    types = types_of(client, sub.id)
    if behavior == "cancel":
        assert after.status == "canceled" and "customer.subscription.deleted" in types
    elif behavior == "pause":
        assert after.status == "paused" and "customer.subscription.paused" in types
        pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
        client.v1.subscriptions.update(sub.id, params={"default_payment_method": pm.id})
        resumed = client.v1.subscriptions.resume(sub.id)
        assert resumed.status == "active"
        assert types_of(client, sub.id)[-2:] == [
            "customer.subscription.resumed",
            "customer.subscription.updated",
        ]
        assert client.v1.invoices.retrieve(str(resumed.latest_invoice)).status == "paid"
    else:
        # The invoice is made anyway; without a payment method it cannot be paid.
        assert after.status == "past_due"
        invoice = client.v1.invoices.retrieve(str(after.latest_invoice))
        assert invoice.status == "open" and invoice.next_payment_attempt is None


def test_cancel_at_period_end_set_unset_and_cancel_now(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    end = sub["items"].data[0].current_period_end
    set_ = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert set_.cancel_at_period_end and set_.cancel_at == end
    assert set_.cancellation_details is not None
    assert set_.cancellation_details.reason == "cancellation_requested"
    unset = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})
    assert not unset.cancel_at_period_end and unset.cancel_at is None and unset.canceled_at is None
    previous = events_of(client, sub.id, "customer.subscription.updated")[-1].to_dict()
    assert previous["data"]["previous_attributes"]["cancel_at_period_end"] is True
    # Kept: it renews.
    advance(client, clock_id, end + 2 * HOUR)
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    gone = client.v1.subscriptions.cancel(
        sub.id, params={"cancellation_details": {"comment": "moving away"}}
    )
    assert gone.status == "canceled" and gone.ended_at == end + 2 * HOUR
    assert gone.cancellation_details is not None
    assert gone.cancellation_details.comment == "moving away"


def test_the_wall_clock_has_a_timeline_too(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client)
    # A one-day trial is within three days of its end at once: trial_will_end is due now.
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "trial_period_days": 1,
        }
    )
    ran = sandbox.control("POST", "/_sandbox/tick")
    assert ran["ran"] >= 0
    assert types_of(client, sub.id, "customer.subscription.trial_will_end") == [
        "customer.subscription.trial_will_end"
    ]
