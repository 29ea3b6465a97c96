"""Subscription status transitions as Stripe documents them, driven through stripe-python."""

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
    new_clock,
    new_customer,
)


def clock(client: stripe.StripeClient) -> str:
    return new_clock(client)


def invoices(client: stripe.StripeClient, sub_id: str) -> list[stripe.Invoice]:
    return list(client.v1.invoices.list(params={"subscription": sub_id, "limit": 100}).data)


def test_incomplete_until_first_invoice_paid(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client, card=None)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "payment_behavior": "default_incomplete",
            "expand": ["latest_invoice.confirmation_secret"],
        }
    )
    assert sub.status == "incomplete"
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.status == "open" and invoice.amount_due == 19900
    assert invoice.parent is not None
    assert invoice.parent.type == "subscription_details"
    assert invoice.parent.subscription_details.subscription == sub.id
    assert invoice.confirmation_secret is not None
    secret = invoice.confirmation_secret.client_secret
    assert "_secret_" in secret
    item = sub["items"].data[0]
    assert item.current_period_end > item.current_period_start
    # Older integrations expand the payment intent; its secret is the same one.
    legacy = client.v1.subscriptions.retrieve(
        sub.id, params={"expand": ["latest_invoice.payment_intent"]}
    )
    assert legacy.latest_invoice.payment_intent.client_secret == secret  # type: ignore[union-attr]

    paid = client.v1.invoices.pay(invoice.id, params={"payment_method": "pm_card_visa"})
    assert paid.status == "paid" and paid.amount_paid == 19900
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_allow_incomplete_with_default_card_is_active(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "expand": ["latest_invoice", "customer", "default_payment_method"],
        }
    )
    assert sub.status == "active"
    assert isinstance(sub.customer, stripe.Customer)
    assert sub.latest_invoice.status == "paid"  # type: ignore[union-attr]


def test_failing_card_keeps_subscription_incomplete(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client, card="pm_card_chargeCustomerFail")
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "expand": ["latest_invoice"],
        }
    )
    assert sub.status == "incomplete"
    invoice = sub.latest_invoice
    assert invoice.status == "open" and invoice.attempt_count == 1  # type: ignore[union-attr]
    with pytest.raises(stripe.CardError) as err:
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["hot_desk"].id}],
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert err.value.code == "card_declined"


def test_renewal_failure_past_due_then_recovery(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = clock(client)
    customer, pm = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    assert sub.status == "active"
    period_end = sub["items"].data[0].current_period_end
    assert period_end == START + 31 * DAY  # January has 31 days

    # First renewal fails: the default card is swapped for one that declines charges.
    bad = client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer.id}
    )
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": bad.id}}
    )
    advance(client, clock_id, period_end + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    assert sub["items"].data[0].current_period_start == period_end
    renewal = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert renewal.billing_reason == "subscription_cycle"
    assert renewal.status == "open" and renewal.attempt_count == 1
    # Smart Retries (on by default): 8 tries within 2 weeks, the first an hour after renewal.
    first_attempt = period_end + HOUR
    assert renewal.next_payment_attempt == first_attempt + 2 * DAY
    failed = client.v1.events.list(params={"type": "invoice.payment_failed", "limit": 5})
    assert failed.data[0].data.object["id"] == renewal.id

    # The customer switches back to a good card; the next automatic retry succeeds.
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": pm}}
    )
    advance(client, clock_id, first_attempt + 2 * DAY + HOUR)
    paid = client.v1.invoices.retrieve(renewal.id)
    assert paid.status == "paid" and paid.attempt_count == 2
    assert paid.status_transitions.paid_at == first_attempt + 2 * DAY
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_fail_next_then_manual_pay(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = clock(client)
    customer, pm = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    assert pm is not None
    sandbox.control(
        "POST",
        f"/_sandbox/payment_methods/{pm}/fail_next",
        {"count": 1, "decline_code": "insufficient_funds"},
    )
    advance(client, clock_id, START + 32 * DAY)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    sandbox.control("POST", f"/_sandbox/payment_methods/{pm}/fail_next", {"count": 1})
    with pytest.raises(stripe.CardError) as err:
        client.v1.invoices.pay(str(sub.latest_invoice))
    assert err.value.code == "card_declined"
    assert client.v1.invoices.retrieve(str(sub.latest_invoice)).attempt_count == 2
    paid = client.v1.invoices.pay(str(sub.latest_invoice))
    assert paid.status == "paid" and paid.attempt_count == 3
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_renewals_trials_and_cancel_at_period_end(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "trial_period_days": 14,
        }
    )
    assert sub.status == "trialing" and sub.trial_end == START + 14 * DAY
    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.amount_due == 0 and first.status == "paid"

    advance(client, clock_id, START + 15 * DAY)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "active"
    assert sub["items"].data[0].current_period_start == START + 14 * DAY
    assert [i.status for i in invoices(client, sub.id)] == ["paid", "paid"]
    types = [e.type for e in client.v1.events.list(params={"limit": 100}).data]
    assert "customer.subscription.trial_will_end" in types

    # Two more monthly renewals in one advance: each creates and charges an invoice.
    period_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, period_end + 31 * DAY)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert len(invoices(client, sub.id)) == 4
    assert all(i.status == "paid" for i in invoices(client, sub.id))

    sub = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    end = sub["items"].data[0].current_period_end
    assert sub.cancel_at_period_end and sub.cancel_at == end and sub.status == "active"
    advance(client, clock_id, end + DAY)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "canceled" and sub.ended_at == end
    deleted = client.v1.events.list(params={"type": "customer.subscription.deleted"})
    assert deleted.data[0].data.object["id"] == sub.id
    assert len(invoices(client, sub.id)) == 4  # no renewal after cancellation


def test_prorations(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    clock_id = clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    item = sub["items"].data[0]
    advance(client, clock_id, START + 10 * DAY)  # 21 of 31 days left

    sub = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": catalog["office"].id}],
            "proration_behavior": "create_prorations",
        },
    )
    assert sub["items"].data[0].price.id == catalog["office"].id
    pending = client.v1.invoice_items.list(params={"customer": customer.id, "pending": True})
    amounts = sorted(ii.amount for ii in pending.data)
    assert amounts == [-round(19900 * 21 / 31), round(89900 * 21 / 31)]
    assert all(ii.proration for ii in pending.data)

    # The pending prorations are billed on the next renewal invoice.
    advance(client, clock_id, START + 32 * DAY)
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal.amount_paid == 89900 + sum(amounts)
    assert len(renewal.lines.data) == 3

    # always_invoice bills the difference immediately.
    sub = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": catalog["hot_desk"].id, "quantity": 2}],
            "proration_behavior": "always_invoice",
            "expand": ["latest_invoice"],
        },
    )
    immediate = sub.latest_invoice
    assert immediate.billing_reason == "subscription_update"  # type: ignore[union-attr]
    assert immediate.status == "paid"  # type: ignore[union-attr]

    # none: no invoice items at all.
    before = len(client.v1.invoice_items.list(params={"customer": customer.id, "limit": 100}).data)
    client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "quantity": 1}], "proration_behavior": "none"}
    )
    after = len(client.v1.invoice_items.list(params={"customer": customer.id, "limit": 100}).data)
    assert before == after


def test_cancel_resume_and_list_filters(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "metadata": {"member": "42"},
        }
    )
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.resume(sub.id)  # only paused subscriptions resume
    listed = client.v1.subscriptions.list(params={"customer": customer.id, "status": "active"})
    assert [s.id for s in listed.data] == [sub.id]
    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    ended = client.v1.subscriptions.list(params={"customer": customer.id, "status": "canceled"})
    assert [s.id for s in ended.data] == [sub.id]


def test_trial_without_payment_method_pauses_and_resumes(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = clock(client)
    customer, _ = new_customer(client, card=None, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "trial_period_days": 7,
            "trial_settings": {"end_behavior": {"missing_payment_method": "pause"}},
        }
    )
    advance(client, clock_id, START + 8 * DAY)
    assert client.v1.subscriptions.retrieve(sub.id).status == "paused"
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    client.v1.subscriptions.update(sub.id, params={"default_payment_method": pm.id})
    resumed = client.v1.subscriptions.resume(sub.id)
    assert resumed.status == "active"


def test_a_declined_error_if_incomplete_update_leaves_the_subscription_unchanged(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    """Stripe: with ``error_if_incomplete`` an update whose invoice cannot be paid
    answers 402 and does not update the subscription."""
    clock_id = clock(client)
    customer, pm = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    item = sub["items"].data[0]
    advance(client, clock_id, START + 10 * DAY)
    # A proration still pending from an earlier change, billed at the next renewal.
    client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "quantity": 2}], "metadata": {"n": "2"}}
    )
    pending_before = client.v1.invoice_items.list(params={"customer": customer.id, "pending": True})
    before = client.v1.subscriptions.retrieve(sub.id)
    assert pm is not None
    sandbox.control(
        "POST",
        f"/_sandbox/payment_methods/{pm}/fail_next",
        {"count": 1, "decline_code": "insufficient_funds"},
    )
    updated_events = len(
        client.v1.events.list(params={"type": "customer.subscription.updated", "limit": 100}).data
    )

    with pytest.raises(stripe.CardError) as err:
        client.v1.subscriptions.update(
            sub.id,
            params={
                "items": [{"id": item.id, "price": catalog["office"].id, "quantity": 1}],
                "proration_behavior": "always_invoice",
                "payment_behavior": "error_if_incomplete",
                "metadata": {"plan": "office"},
            },
        )
    assert err.value.code == "card_declined"

    after = client.v1.subscriptions.retrieve(sub.id)
    assert after["items"].data[0].price.id == catalog["hot_desk"].id
    assert after["items"].data[0].quantity == 2
    assert after.metadata.to_dict() == {"n": "2"}
    assert after.latest_invoice == before.latest_invoice
    assert after.status == "active"
    announced = client.v1.events.list(
        params={"type": "customer.subscription.updated", "limit": 100}
    ).data
    assert len(announced) == updated_events, [  # an update not made is not announced
        e.data.to_dict().get("previous_attributes") for e in announced
    ]
    # The invoice it tried is voided, and nothing of the refused change waits to be
    # billed; the earlier change's proration still does.
    attempted = [i for i in invoices(client, sub.id) if i.billing_reason == "subscription_update"]
    assert [i.status for i in attempted] == ["void"]
    pending_after = client.v1.invoice_items.list(params={"customer": customer.id, "pending": True})
    assert sorted(ii.id for ii in pending_after.data) == sorted(ii.id for ii in pending_before.data)
    assert pending_before.data

    # The next renewal bills the plan it kept, with the earlier proration.
    advance(client, clock_id, START + 32 * DAY)
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal.status == "paid"
    assert renewal.amount_paid == 2 * 19900 + sum(ii.amount for ii in pending_before.data)
