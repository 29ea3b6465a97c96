"""Disputes: opened by the sandbox control or by Stripe's dispute test cards, decided by
the control or by Stripe's test evidence (winning_evidence / losing_evidence)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import Sandbox, events_of, new_customer, types_of


def charge(client: stripe.StripeClient, card: str = "pm_card_visa") -> stripe.Charge:
    customer, _ = new_customer(client, card=None)
    pi = client.v1.payment_intents.create(
        params={
            "amount": 4200,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": card,
            "confirm": True,
            "metadata": {"booking": "room-7"},
        }
    )
    return client.v1.charges.retrieve(str(pi.latest_charge))


def test_control_opens_and_closes_a_dispute(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    ch = charge(client)
    opened = sandbox.control("POST", f"/_sandbox/charges/{ch.id}/dispute", {"reason": "fraudulent"})
    dispute = client.v1.disputes.retrieve(opened["id"])
    assert dispute.status == "needs_response" and dispute.reason == "fraudulent"
    assert dispute.amount == 4200 and dispute.charge == ch.id
    assert dispute.payment_intent == ch.payment_intent
    assert client.v1.charges.retrieve(ch.id).disputed is True
    created = events_of(client, dispute.id, "charge.dispute.created")[0]
    assert created.data.object["status"] == "needs_response"

    won = sandbox.control("POST", f"/_sandbox/disputes/{dispute.id}/close", {"outcome": "won"})
    assert won["status"] == "won"
    assert types_of(client, dispute.id) == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    ]
    closed = events_of(client, dispute.id, "charge.dispute.closed")[0]
    assert closed.data.object["status"] == "won"
    again = sandbox.raw("POST", f"/_sandbox/disputes/{dispute.id}/close", json={"outcome": "lost"})
    assert again.status_code == 400


def test_lost_dispute_and_refunds_of_a_disputed_charge(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    ch = charge(client)
    opened = sandbox.control("POST", f"/_sandbox/charges/{ch.id}/dispute", {"amount": 2000})
    assert opened["amount"] == 2000
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.refunds.create(params={"charge": ch.id})
    assert refused.value.code == "charge_disputed"
    lost = sandbox.control("POST", f"/_sandbox/disputes/{opened['id']}/close", {"outcome": "lost"})
    assert lost["status"] == "lost"
    assert (
        events_of(client, opened["id"], "charge.dispute.closed")[0].data.object["status"] == "lost"
    )


def test_dispute_test_card_disputes_on_its_own(client: stripe.StripeClient) -> None:
    ch = charge(client, "pm_card_createDispute")
    assert ch.status == "succeeded"
    disputes = client.v1.disputes.list(params={"charge": ch.id}).data
    assert [d.reason for d in disputes] == ["fraudulent"]
    assert client.v1.charges.retrieve(ch.id).disputed is True
    not_received = charge(client, "pm_card_createDisputeProductNotReceived")
    assert client.v1.disputes.list(params={"charge": not_received.id}).data[0].reason == (
        "product_not_received"
    )
    inquiry = client.v1.disputes.list(
        params={"charge": charge(client, "pm_card_createDisputeInquiry").id}
    ).data[0]
    assert inquiry.status == "warning_needs_response"
    # An inquiry takes no money.
    assert types_of(client, inquiry.id) == ["charge.dispute.created"]


@pytest.mark.parametrize(
    ("text", "outcome"), [("winning_evidence", "won"), ("losing_evidence", "lost")]
)
def test_stripe_test_evidence_decides_the_dispute(
    client: stripe.StripeClient, text: str, outcome: str
) -> None:
    ch = charge(client, "pm_card_createDispute")
    dispute = client.v1.disputes.list(params={"charge": ch.id}).data[0]
    staged = client.v1.disputes.update(
        dispute.id, params={"evidence": {"customer_name": "Jenny"}, "submit": False}
    )
    assert staged.status == "needs_response" and staged.evidence.customer_name == "Jenny"
    decided = client.v1.disputes.update(
        dispute.id, params={"evidence": {"uncategorized_text": text}}
    )
    assert decided.status == outcome
    assert decided.evidence_details.submission_count == 1
    statuses: list[Any] = [
        e.data.object["status"] for e in events_of(client, dispute.id, "charge.dispute.updated")
    ]
    assert statuses == ["needs_response", "under_review"]


def test_closing_through_the_api_accepts_the_loss(client: stripe.StripeClient) -> None:
    dispute = client.v1.disputes.list(
        params={"charge": charge(client, "pm_card_createDispute").id}
    ).data[0]
    assert client.v1.disputes.close(dispute.id).status == "lost"
