"""Checkout sessions: completion events, expiry through the API, by time and by control,
and the limits Stripe puts on expires_at."""

from __future__ import annotations

import json
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
from tests.support.env import STRIPE_FIXTURES


def session(client: stripe.StripeClient, price: str, **extra: Any) -> stripe.checkout.Session:
    return client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": "https://example.com/ok",
            "cancel_url": "https://example.com/cancel",
            **extra,
        }
    )


def test_expire_through_the_api(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    opened = session(client, catalog["room"].id, metadata={"booking": "room-9"})
    expired = client.v1.checkout.sessions.expire(opened.id)
    assert expired.status == "expired" and expired.url is None
    event = events_of(client, opened.id, "checkout.session.expired")[0]
    assert event.data.object["metadata"]["booking"] == "room-9"
    assert event.request is not None and event.request.id is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(opened.id)


def test_expires_when_expires_at_passes_on_the_test_clock(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id = new_clock(client)
    customer, _ = new_customer(client, card=None, clock=clock_id)
    opened = session(client, catalog["room"].id, customer=customer.id, expires_at=START + 2 * HOUR)
    assert opened.expires_at == START + 2 * HOUR and opened.created == START
    advance(client, clock_id, START + HOUR)
    assert client.v1.checkout.sessions.retrieve(opened.id).status == "open"
    advance(client, clock_id, START + DAY)
    assert client.v1.checkout.sessions.retrieve(opened.id).status == "expired"
    event = events_of(client, opened.id, "checkout.session.expired")[0]
    assert event.created == START + 2 * HOUR


def test_expire_now_control(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    opened = session(client, catalog["room"].id)
    expired = sandbox.control("POST", f"/_sandbox/checkout/sessions/{opened.id}/expire")
    assert expired["status"] == "expired"
    event = events_of(client, opened.id, "checkout.session.expired")[0]
    assert event.request is not None and event.request.id is None  # time, not an API call
    late = sandbox.raw(
        "POST",
        f"/_sandbox/checkout/sessions/{opened.id}/complete",
        json={"payment_method": "pm_card_visa"},
    )
    assert late.status_code == 400


def test_expires_at_limits(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    now = session(client, catalog["room"].id).created
    with pytest.raises(stripe.InvalidRequestError) as soon:
        session(client, catalog["room"].id, expires_at=now + 10 * 60)
    assert soon.value.param == "expires_at"
    with pytest.raises(stripe.InvalidRequestError):
        session(client, catalog["room"].id, expires_at=now + 2 * DAY)
    # By default a session expires a day after its own creation (the calls
    # above may have crossed a second since `now`).
    default = session(client, catalog["room"].id)
    assert default.expires_at == default.created + DAY
    assert default.created >= now


def test_payment_mode_completion(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client, card=None)
    opened = session(
        client,
        catalog["room"].id,
        customer=customer.id,
        metadata={"payment": "pay_9"},
        payment_intent_data={"metadata": {"booking_refs": "room-1"}},
    )
    done = sandbox.control(
        "POST",
        f"/_sandbox/checkout/sessions/{opened.id}/complete",
        {"payment_method": "pm_card_visa"},
    )
    assert done["status"] == "complete" and done["payment_status"] == "paid"
    pi = client.v1.payment_intents.retrieve(done["payment_intent"])
    assert pi.metadata.to_dict() == {"booking_refs": "room-1"}
    charge = client.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.metadata.to_dict() == {"booking_refs": "room-1"}
    completed = events_of(client, opened.id, "checkout.session.completed")[0]
    assert completed.data.object["payment_intent"] == pi.id
    assert completed.data.object["metadata"]["payment"] == "pay_9"
    assert types_of(client, pi.id) == ["payment_intent.created", "payment_intent.succeeded"]


def test_subscription_mode_completion(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    opened = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
            "success_url": "https://example.com/ok",
            "subscription_data": {"metadata": {"user_id": "u-1"}, "trial_period_days": 7},
        }
    )
    done = sandbox.control("POST", f"/_sandbox/checkout/sessions/{opened.id}/complete", {})
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "trialing" and sub.metadata["user_id"] == "u-1"
    assert done["payment_status"] == "no_payment_required"
    completed = events_of(client, opened.id, "checkout.session.completed")[0]
    assert completed.data.object["subscription"] == sub.id


def test_three_d_secure_is_done_on_the_hosted_page(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    opened = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )
    done = sandbox.control(
        "POST",
        f"/_sandbox/checkout/sessions/{opened.id}/complete",
        {"payment_method": "pm_card_authenticationRequired"},
    )
    assert done["payment_status"] == "paid"
    assert client.v1.subscriptions.retrieve(done["subscription"]).status == "active"


def test_inline_prices_from_price_data(
    sandbox: Sandbox, client: stripe.StripeClient, fixtures_item_keys: set[str]
) -> None:
    opened = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 2,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 2500,
                        "product_data": {"name": "Meeting room, one hour"},
                    },
                },
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 150,
                        "product_data": {"name": "Processing fee"},
                    },
                },
            ],
            "success_url": "https://example.com/ok",
        }
    )
    assert opened.amount_total == 5150
    items = client.v1.checkout.sessions.line_items.list(opened.id).data
    assert [(i.quantity, i.amount_total, i.description) for i in items] == [
        (2, 5000, "Meeting room, one hour"),
        (1, 150, "Processing fee"),
    ]
    price = items[0].price
    assert price is not None and price.active is False and price.type == "one_time"
    # An inline price has the shape of any price (Stripe's example's keys).
    assert fixtures_item_keys <= set(items[0].to_dict())
    done = sandbox.control("POST", f"/_sandbox/checkout/sessions/{opened.id}/complete", {})
    assert client.v1.payment_intents.retrieve(done["payment_intent"]).amount == 5150


def test_price_data_needs_a_currency(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "line_items": [{"price_data": {"unit_amount": 100, "product_data": {"name": "x"}}}],
                "success_url": "https://example.com/ok",
            }
        )


@pytest.fixture(scope="module")
def fixtures_item_keys() -> set[str]:
    return set(json.loads(STRIPE_FIXTURES.read_text())["resources"]["item"])
