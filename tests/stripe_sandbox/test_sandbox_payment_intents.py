"""One-time payments: the payment intent events, delayed settlement (US bank account test
numbers), declines with their decline codes, cancellation and 3D Secure."""

from __future__ import annotations

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import (
    DAY,
    Sandbox,
    advance,
    events_of,
    new_clock,
    new_customer,
    types_of,
)


def test_success_carries_metadata_to_the_charge(client: stripe.StripeClient) -> None:
    customer, _ = new_customer(client, card=None)
    pi = client.v1.payment_intents.create(
        params={
            "amount": 7500,
            "currency": "usd",
            "customer": customer.id,
            "metadata": {"payment": "pay_1", "booking_refs": "room-1,room-2"},
        }
    )
    done = client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert done.status == "succeeded" and done.amount_received == 7500
    charge = client.v1.charges.retrieve(str(done.latest_charge))
    assert charge.metadata.to_dict() == {"payment": "pay_1", "booking_refs": "room-1,room-2"}
    assert charge.payment_intent == pi.id and charge.paid
    assert types_of(client, pi.id) == ["payment_intent.created", "payment_intent.succeeded"]


def test_decline_reports_its_decline_code(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params={"amount": 2500, "currency": "usd"})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.confirm(
            pi.id, params={"payment_method": "pm_card_visa_chargeDeclinedInsufficientFunds"}
        )
    assert declined.value.code == "card_declined"
    failed = events_of(client, pi.id, "payment_intent.payment_failed")
    error = failed[0].data.object["last_payment_error"]
    assert error["decline_code"] == "insufficient_funds" and error["code"] == "card_declined"
    assert failed[0].data.object["status"] == "requires_payment_method"
    failed_charge = client.v1.charges.retrieve(error["charge"])
    assert failed_charge.status == "failed" and failed_charge.failure_code == "card_declined"


def test_cancel(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params={"amount": 2500, "currency": "usd"})
    canceled = client.v1.payment_intents.cancel(pi.id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"
    assert types_of(client, pi.id)[-1] == "payment_intent.canceled"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.cancel(pi.id)


def bank_payment(
    client: stripe.StripeClient, token: str, clock: str | None = None
) -> stripe.PaymentIntent:
    customer, _ = new_customer(client, card=None, clock=clock)
    return client.v1.payment_intents.create(
        params={
            "amount": 12000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method_types": ["us_bank_account"],
            "payment_method": token,
            "confirm": True,
        }
    )


def test_bank_debit_processes_then_succeeds(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    pi = bank_payment(client, "pm_usBankAccount_success")
    assert pi.status == "processing"
    assert client.v1.charges.retrieve(str(pi.latest_charge)).status == "pending"
    sandbox.control("POST", f"/_sandbox/payment_intents/{pi.id}/settle", {})
    done = client.v1.payment_intents.retrieve(pi.id)
    assert done.status == "succeeded"
    assert types_of(client, pi.id) == [
        "payment_intent.created",
        "payment_intent.processing",
        "payment_intent.succeeded",
    ]


def test_bank_debit_fails_after_processing(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    pi = bank_payment(client, "pm_usBankAccount_insufficientFunds")
    sandbox.control("POST", f"/_sandbox/payment_intents/{pi.id}/settle", {})
    failed = client.v1.payment_intents.retrieve(pi.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None
    assert failed.last_payment_error.code == "insufficient_funds"
    assert client.v1.charges.retrieve(str(pi.latest_charge)).failure_code == "insufficient_funds"
    assert types_of(client, pi.id)[-1] == "payment_intent.payment_failed"
    # A card payment can be told to fail too.
    other = bank_payment(client, "pm_usBankAccount_processing")
    sandbox.control(
        "POST",
        f"/_sandbox/payment_intents/{other.id}/settle",
        {"outcome": "failed", "failure_code": "account_closed"},
    )
    assert client.v1.payment_intents.retrieve(other.id).status == "requires_payment_method"


def test_bank_debits_settle_on_the_test_clock(client: stripe.StripeClient) -> None:
    clock_id = new_clock(client)
    settles = bank_payment(client, "pm_usBankAccount_success", clock=clock_id)
    stays = bank_payment(client, "pm_usBankAccount_processing", clock=clock_id)
    frozen = client.v1.test_helpers.test_clocks.retrieve(clock_id).frozen_time
    advance(client, clock_id, frozen + DAY)
    assert client.v1.payment_intents.retrieve(settles.id).status == "succeeded"
    # pm_usBankAccount_processing never settles on its own; it can still be canceled.
    assert client.v1.payment_intents.retrieve(stays.id).status == "processing"
    assert client.v1.payment_intents.cancel(stays.id).status == "canceled"


def test_bank_account_needs_its_payment_method_type(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.create(
            params={
                "amount": 1000,
                "currency": "usd",
                "payment_method": "pm_usBankAccount_success",
                "confirm": True,
            }
        )


def test_three_d_secure_on_session(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(
        params={
            "amount": 3000,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    assert pi.status == "requires_action"
    assert pi.next_action is not None and pi.next_action.type == "use_stripe_sdk"
    sandbox.control(
        "POST", f"/_sandbox/payment_intents/{pi.id}/authenticate", {"outcome": "succeeded"}
    )
    assert client.v1.payment_intents.retrieve(pi.id).status == "succeeded"

    other = client.v1.payment_intents.create(
        params={
            "amount": 3000,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    sandbox.control(
        "POST", f"/_sandbox/payment_intents/{other.id}/authenticate", {"outcome": "failed"}
    )
    failed = client.v1.payment_intents.retrieve(other.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"


def test_three_d_secure_off_session_is_declined(client: stripe.StripeClient) -> None:
    customer, pm = new_customer(client, card="pm_card_authenticationRequired")
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(
            params={
                "amount": 3000,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": pm,  # type: ignore[typeddict-item]
                "confirm": True,
                "off_session": True,
            }
        )
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "authentication_required"
