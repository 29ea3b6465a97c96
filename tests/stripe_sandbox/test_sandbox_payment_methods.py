"""Stripe's test payment methods wherever a payment method goes (customers, payment intents,
setup intents, subscriptions, attach), SetupIntents, and a customer's payment methods."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import Sandbox, events_of, new_customer, types_of


def test_customer_created_with_a_test_card_as_its_default(client: stripe.StripeClient) -> None:
    # Stripe's documented test setup for subscriptions.
    customer = client.v1.customers.create(
        params={
            "email": "member@example.com",
            "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
        }
    )
    default = customer.invoice_settings.default_payment_method
    assert isinstance(default, str) and default.startswith("pm_") and default != "pm_card_visa"
    pm = client.v1.payment_methods.retrieve(default)
    assert pm.customer == customer.id and pm.card is not None and pm.card.last4 == "4242"
    assert [p.id for p in client.v1.customers.payment_methods.list(customer.id).data] == [default]
    assert types_of(client, default) == ["payment_method.attached"]
    assert types_of(client, customer.id) == ["customer.created"]


def test_customer_create_with_a_declining_card_creates_nothing(client: stripe.StripeClient) -> None:
    before = len(client.v1.customers.list(params={"email": "declined@example.com"}).data)
    with pytest.raises(stripe.CardError) as declined:
        client.v1.customers.create(
            params={
                "email": "declined@example.com",
                "payment_method": "pm_card_visa_chargeDeclined",
            }
        )
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "generic_decline"
    assert len(client.v1.customers.list(params={"email": "declined@example.com"}).data) == before
    with pytest.raises(stripe.InvalidRequestError) as unattached:
        client.v1.customers.create(
            params={"invoice_settings": {"default_payment_method": "pm_card_visa"}}
        )
    assert unattached.value.param == "invoice_settings[default_payment_method]"


@pytest.mark.parametrize(
    ("token", "decline"),
    [
        ("pm_card_visa_chargeDeclined", "generic_decline"),
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedFraudulent", "fraudulent"),
        ("pm_card_visa_chargeDeclinedStolenCard", "stolen_card"),
        ("pm_card_visa_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_decline_cards_fail_when_saved_and_when_charged(
    client: stripe.StripeClient, token: str, decline: str
) -> None:
    customer, _ = new_customer(client, card=None)
    with pytest.raises(stripe.CardError) as on_attach:
        client.v1.payment_methods.attach(token, params={"customer": customer.id})
    assert on_attach.value.error is not None and on_attach.value.error.decline_code == decline
    with pytest.raises(stripe.CardError) as on_charge:
        client.v1.payment_intents.create(
            params={"amount": 1000, "currency": "usd", "payment_method": token, "confirm": True}
        )
    assert on_charge.value.error is not None and on_charge.value.error.decline_code == decline


def test_charge_customer_fail_attaches_but_never_pays(client: stripe.StripeClient) -> None:
    customer, pm = new_customer(client, card="pm_card_chargeCustomerFail")
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(
            params={
                "amount": 1000,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": str(pm),
                "confirm": True,
            }
        )


def test_subscription_default_payment_method_may_be_a_test_token(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client, card=None)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "default_payment_method": "pm_card_mastercard",
        }
    )
    assert sub.status == "active"
    pm = client.v1.payment_methods.retrieve(str(sub.default_payment_method))
    assert pm.customer == customer.id and pm.card is not None and pm.card.brand == "mastercard"
    with pytest.raises(stripe.CardError):
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["hot_desk"].id}],
                "default_payment_method": "pm_card_visa_chargeDeclined",
            }
        )


def test_setup_intent_saves_a_card(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    customer, _ = new_customer(client, card=None)
    si = client.v1.setup_intents.create(
        params={"customer": customer.id, "usage": "off_session", "payment_method_types": ["card"]}
    )
    assert si.status == "requires_payment_method" and si.usage == "off_session"
    assert si.client_secret is not None and si.client_secret.startswith(f"{si.id}_secret_")
    # The browser confirms it with the publishable key and the client secret.
    confirmed = sandbox.raw(
        "POST",
        f"/v1/setup_intents/{si.id}/confirm",
        headers={"Authorization": "Bearer pk_test_sandbox"},
        data={"client_secret": si.client_secret, "payment_method": "pm_card_visa"},
    )
    assert confirmed.status_code == 200, confirmed.text
    done = client.v1.setup_intents.retrieve(si.id)
    assert done.status == "succeeded"
    pm = client.v1.payment_methods.retrieve(str(done.payment_method))
    assert pm.customer == customer.id
    assert types_of(client, si.id) == ["setup_intent.created", "setup_intent.succeeded"]
    assert types_of(client, pm.id) == ["payment_method.attached"]


def test_setup_intent_with_a_declining_card(client: stripe.StripeClient) -> None:
    customer, _ = new_customer(client, card=None)
    si = client.v1.setup_intents.create(params={"customer": customer.id})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.setup_intents.confirm(
            si.id, params={"payment_method": "pm_card_visa_chargeDeclinedInsufficientFunds"}
        )
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "insufficient_funds"
    failed = client.v1.setup_intents.retrieve(si.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_setup_error is not None
    assert failed.last_setup_error.decline_code == "insufficient_funds"
    assert types_of(client, si.id)[-1] == "setup_intent.setup_failed"
    assert client.v1.customers.payment_methods.list(customer.id).data == []


def test_setup_with_3d_secure_then_off_session_payments(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    customer, _ = new_customer(client, card=None)
    si = client.v1.setup_intents.create(
        params={
            "customer": customer.id,
            "payment_method": "pm_card_authenticationRequiredOnSetup",
            "confirm": True,
        }
    )
    assert si.status == "requires_action"
    sandbox.control(
        "POST", f"/_sandbox/setup_intents/{si.id}/authenticate", {"outcome": "succeeded"}
    )
    done = client.v1.setup_intents.retrieve(si.id)
    assert done.status == "succeeded"
    # Set up once with authentication, this card pays off-session unchallenged.
    pi = client.v1.payment_intents.create(
        params={
            "amount": 2000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": str(done.payment_method),
            "confirm": True,
            "off_session": True,
        }
    )
    assert pi.status == "succeeded"


def test_default_payment_method_updates_and_detach(client: stripe.StripeClient) -> None:
    customer, first = new_customer(client)
    second = client.v1.payment_methods.attach("pm_card_amex", params={"customer": customer.id})
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": second.id}}
    )
    updated = events_of(client, customer.id, "customer.updated")[-1]
    assert updated.to_dict()["data"]["previous_attributes"] == {
        "invoice_settings": {"default_payment_method": first}
    }
    assert updated.data.object["invoice_settings"]["default_payment_method"] == second.id
    listed = client.v1.customers.payment_methods.list(customer.id, params={"type": "card"})
    assert {p.id for p in listed.data} == {first, second.id}
    client.v1.payment_methods.detach(second.id)
    assert types_of(client, second.id) == ["payment_method.attached", "payment_method.detached"]
    cleared = events_of(client, customer.id, "customer.updated")[-1]
    assert cleared.data.object["invoice_settings"]["default_payment_method"] is None
    assert [
        p.id for p in client.v1.payment_methods.list(params={"customer": customer.id}).data
    ] == [first]
