"""Coupons and promotion codes: creation, lookup by code, redemption on subscriptions and
checkout sessions, amounts on invoices, and how long each duration lasts."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import (
    HOUR,
    Sandbox,
    advance,
    new_clock,
    new_customer,
    types_of,
)


def coupon(client: stripe.StripeClient, **params: Any) -> stripe.Coupon:
    return client.v1.coupons.create(params=params)  # type: ignore[arg-type]


def promo(
    client: stripe.StripeClient, coupon_id: str, code: str, **params: Any
) -> stripe.PromotionCode:
    return client.v1.promotion_codes.create(
        params={"promotion": {"type": "coupon", "coupon": coupon_id}, "code": code, **params}  # type: ignore[typeddict-item]
    )


def test_coupons_and_promotion_codes(client: stripe.StripeClient) -> None:
    half = coupon(client, percent_off=50, duration="repeating", duration_in_months=3, name="Half")
    assert (half.percent_off, half.duration, half.duration_in_months, half.valid) == (
        50,
        "repeating",
        3,
        True,
    )
    ten = coupon(client, amount_off=1000, currency="usd", duration="once", id="TENOFF")
    assert ten.id == "TENOFF" and ten.amount_off == 1000
    with pytest.raises(stripe.InvalidRequestError):
        coupon(client, amount_off=1000, duration="once")  # no currency
    with pytest.raises(stripe.InvalidRequestError):
        coupon(client, percent_off=10, duration="repeating")  # no duration_in_months
    code = promo(client, half.id, "WELCOME50")
    assert code.promotion.coupon == half.id and code.active and code.code == "WELCOME50"
    found = client.v1.promotion_codes.list(params={"code": "welcome50"}).data
    assert [p.id for p in found] == [code.id]
    with pytest.raises(stripe.InvalidRequestError):
        promo(client, half.id, "WELCOME50")  # an active code is unique
    assert client.v1.promotion_codes.update(code.id, params={"active": False}).active is False
    assert client.v1.promotion_codes.list(params={"code": "WELCOME50", "active": True}).data == []


def test_subscription_discount_from_a_promotion_code(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    quarter = coupon(client, percent_off=25, duration="forever")
    code = promo(client, quarter.id, "QUARTER", max_redemptions=1)
    customer, _ = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "discounts": [{"promotion_code": code.id}],
            "expand": ["latest_invoice", "discounts"],
        }
    )
    assert sub.status == "active"
    discount = sub.discounts[0]
    assert isinstance(discount, stripe.Discount)
    assert discount.source.coupon == quarter.id and discount.promotion_code == code.id
    assert discount.subscription == sub.id and discount.end is None
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.subtotal == 19900 and invoice.total == 19900 - 4975
    assert invoice.amount_paid == 14925
    assert invoice.discounts == [discount.id]
    assert invoice.total_discount_amounts is not None
    assert [(d.amount, d.discount) for d in invoice.total_discount_amounts] == [(4975, discount.id)]
    line = invoice.lines.data[0]
    assert [(d.amount, d.discount) for d in line.discount_amounts or []] == [(4975, discount.id)]
    assert "customer.discount.created" in types_of(client, discount.id)
    assert client.v1.promotion_codes.retrieve(code.id).times_redeemed == 1
    assert client.v1.coupons.retrieve(quarter.id).times_redeemed == 1
    # Its one redemption is spent.
    with pytest.raises(stripe.InvalidRequestError) as spent:
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["office"].id}],
                "discounts": [{"promotion_code": code.id}],
            }
        )
    assert spent.value.param == "discounts[0][promotion_code]"


@pytest.mark.parametrize(
    ("duration", "months", "discounted"),
    [("once", None, 1), ("repeating", 2, 2), ("forever", None, 4)],
)
def test_discount_duration_on_renewals(
    client: stripe.StripeClient,
    catalog: dict[str, Any],
    duration: str,
    months: int | None,
    discounted: int,
) -> None:
    params: dict[str, Any] = {"amount_off": 5000, "currency": "usd", "duration": duration}
    if months:
        params["duration_in_months"] = months
    off = coupon(client, **params)
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "discounts": [{"coupon": off.id}],
        }
    )
    for _ in range(3):
        end = client.v1.subscriptions.retrieve(sub.id)["items"].data[0].current_period_end
        advance(client, clock_id, end + 2 * HOUR)
    paid = [
        i.amount_paid
        for i in reversed(client.v1.invoices.list(params={"subscription": sub.id}).data)
    ]
    assert paid == [14900] * discounted + [19900] * (4 - discounted)
    remaining = client.v1.subscriptions.retrieve(sub.id).discounts
    assert bool(remaining) == (duration == "forever")


def test_update_replaces_and_clears_discounts(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    customer, _ = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    off = coupon(client, percent_off=10, duration="forever")
    with_discount = client.v1.subscriptions.update(
        sub.id, params={"discounts": [{"coupon": off.id}]}
    )
    assert len(with_discount.discounts) == 1
    previous = client.v1.events.list(params={"type": "customer.subscription.updated", "limit": 1})
    assert previous.data[0].to_dict()["data"]["previous_attributes"] == {"discounts": []}
    cleared = client.v1.subscriptions.update(sub.id, params={"discounts": ""})  # type: ignore[typeddict-item]
    assert cleared.discounts == []


def test_checkout_with_a_promotion_code(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    off = coupon(client, percent_off=20, duration="once")
    code = promo(client, off.id, "SPRING20")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "line_items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
                "success_url": "https://example.com/ok",
                "allow_promotion_codes": True,
                "discounts": [{"promotion_code": code.id}],
            }
        )
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
            "success_url": "https://example.com/ok",
            "allow_promotion_codes": True,
        }
    )
    assert session.allow_promotion_codes is True and session.amount_total == 19900
    done = sandbox.control(
        "POST",
        f"/_sandbox/checkout/sessions/{session.id}/complete",
        {"payment_method": "pm_card_visa", "promotion_code": "spring20"},
    )
    assert done["amount_total"] == 15920 and done["total_details"]["amount_discount"] == 3980
    assert done["discounts"] == [{"coupon": None, "promotion_code": code.id}]
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    invoice = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert invoice.amount_paid == 15920
    assert client.v1.promotion_codes.retrieve(code.id).times_redeemed == 1


def test_checkout_payment_mode_with_a_coupon(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    off = coupon(client, amount_off=1000, currency="usd", duration="once")
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": catalog["room"].id, "quantity": 2}],
            "success_url": "https://example.com/ok",
            "discounts": [{"coupon": off.id}],
        }
    )
    assert session.amount_subtotal == 5000 and session.amount_total == 4000
    assert session.discounts is not None and session.discounts[0].coupon == off.id
    items = client.v1.checkout.sessions.line_items.list(session.id).data
    assert [(i.amount_subtotal, i.amount_discount, i.amount_total) for i in items] == [
        (5000, 1000, 4000)
    ]
    done = sandbox.control("POST", f"/_sandbox/checkout/sessions/{session.id}/complete", {})
    pi = client.v1.payment_intents.retrieve(done["payment_intent"])
    assert pi.amount == 4000 and pi.status == "succeeded"
    assert client.v1.coupons.retrieve(off.id).times_redeemed == 1
