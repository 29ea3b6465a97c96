"""Refunds as Stripe sends them: charge.refunded amounts, and the asynchronous test cards
(pm_card_pendingRefund: pending then succeeded; pm_card_refundFail: succeeded then failed)."""

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


def paid(
    client: stripe.StripeClient, card: str, amount: int = 5000, clock: str | None = None
) -> str:
    customer, _ = new_customer(client, card=None, clock=clock)
    pi = client.v1.payment_intents.create(
        params={
            "amount": amount,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": card,
            "confirm": True,
        }
    )
    assert pi.status == "succeeded"
    return str(pi.latest_charge)


def refunded_events(client: stripe.StripeClient, charge_id: str) -> list[tuple[int, bool]]:
    return [
        (e.data.object["amount_refunded"], e.data.object["refunded"])
        for e in events_of(client, charge_id, "charge.refunded")
    ]


def test_charge_refunded_carries_partial_then_full_amounts(client: stripe.StripeClient) -> None:
    charge = paid(client, "pm_card_visa")
    first = client.v1.refunds.create(params={"charge": charge, "amount": 1500})
    second = client.v1.refunds.create(params={"charge": charge, "amount": 2000})
    rest = client.v1.refunds.create(params={"charge": charge})
    assert [r.status for r in (first, second, rest)] == ["succeeded"] * 3
    assert rest.amount == 1500
    assert refunded_events(client, charge) == [(1500, False), (3500, False), (5000, True)]
    assert [e.data.object["id"] for e in events_of(client, first.id)] == [first.id]
    assert types_of(client, first.id) == ["refund.created"]
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"charge": charge, "amount": 1})
    assert again.value.code == "charge_already_refunded"


def test_pending_refund_succeeds_later(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    charge = paid(client, "pm_card_pendingRefund")
    refund = client.v1.refunds.create(params={"charge": charge, "amount": 2000})
    assert refund.status == "pending"
    # A pending refund already counts on the charge.
    assert refunded_events(client, charge) == [(2000, False)]
    assert client.v1.charges.retrieve(charge).amount_refunded == 2000

    settled = sandbox.control(
        "POST", f"/_sandbox/refunds/{refund.id}/settle", {"outcome": "succeeded"}
    )
    assert settled["status"] == "succeeded"
    assert client.v1.refunds.retrieve(refund.id).status == "succeeded"
    events = events_of(client, refund.id)
    assert [e.type for e in events] == ["refund.created", "refund.updated", "charge.refund.updated"]
    assert events[1].to_dict()["data"]["previous_attributes"] == {"status": "pending"}
    again = sandbox.raw("POST", f"/_sandbox/refunds/{refund.id}/settle", json={"outcome": "failed"})
    assert again.status_code == 400


def test_refund_on_a_refund_fail_card_fails_after_looking_succeeded(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    charge = paid(client, "pm_card_refundFail")
    refund = client.v1.refunds.create(params={"charge": charge})
    assert refund.status == "succeeded"
    assert refunded_events(client, charge) == [(5000, True)]
    sandbox.control("POST", f"/_sandbox/refunds/{refund.id}/settle", {"outcome": "failed"})
    failed = client.v1.refunds.retrieve(refund.id)
    assert failed.status == "failed" and failed.failure_reason == "expired_or_canceled_card"
    assert types_of(client, refund.id) == [
        "refund.created",
        "refund.updated",
        "charge.refund.updated",
        "refund.failed",
    ]
    # The money is back in the balance: the charge is refundable again.
    after = client.v1.charges.retrieve(charge)
    assert after.amount_refunded == 0 and not after.refunded
    assert client.v1.refunds.create(params={"charge": charge, "amount": 100}).amount == 100


def test_a_pending_refund_can_fail(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    charge = paid(client, "pm_card_pendingRefund")
    refund = client.v1.refunds.create(params={"charge": charge})
    sandbox.control(
        "POST",
        f"/_sandbox/refunds/{refund.id}/settle",
        {"outcome": "failed", "failure_reason": "lost_or_stolen_card"},
    )
    failed = client.v1.refunds.retrieve(refund.id)
    assert failed.status == "failed" and failed.failure_reason == "lost_or_stolen_card"
    assert client.v1.charges.retrieve(charge).amount_refunded == 0


def test_asynchronous_refunds_settle_as_the_test_clock_moves(client: stripe.StripeClient) -> None:
    clock_id = new_clock(client)
    pending = client.v1.refunds.create(
        params={"charge": paid(client, "pm_card_pendingRefund", clock=clock_id)}
    )
    failing = client.v1.refunds.create(
        params={"charge": paid(client, "pm_card_refundFail", clock=clock_id)}
    )
    assert (pending.status, failing.status) == ("pending", "succeeded")
    clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
    advance(client, clock_id, clock.frozen_time + DAY)
    assert client.v1.refunds.retrieve(pending.id).status == "succeeded"
    assert client.v1.refunds.retrieve(failing.id).status == "failed"
    failed_event = events_of(client, failing.id, "refund.failed")[0]
    assert failed_event.created > clock.frozen_time


def test_refunds_of_an_invoice_charge(
    client: stripe.StripeClient, catalog: dict[str, stripe.Price]
) -> None:
    customer, _ = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    payment = client.v1.invoice_payments.list(params={"invoice": str(sub.latest_invoice)}).data[0]
    pi = client.v1.payment_intents.retrieve(str(payment.payment.payment_intent))
    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 9900})
    assert refund.charge == pi.latest_charge and refund.payment_intent == pi.id
    assert refunded_events(client, str(pi.latest_charge)) == [(9900, False)]
