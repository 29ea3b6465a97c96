"""Plan changes: the upcoming-invoice preview and what the update then invoices, and a
downgrade at the end of the period through a subscription schedule."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import (
    DAY,
    HOUR,
    START,
    advance,
    events_of,
    new_clock,
    new_customer,
    types_of,
)


def subscribed(
    client: stripe.StripeClient, price: str, days_in: int = 10
) -> tuple[str, stripe.Subscription]:
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price}]}
    )
    advance(client, clock_id, START + days_in * DAY)
    return clock_id, sub


def test_preview_of_an_upgrade_matches_what_the_update_invoices(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    _, sub = subscribed(client, catalog["hot_desk"].id)
    item = sub["items"].data[0]
    when = START + 10 * DAY  # 21 of January's 31 days remain
    change = {"items": [{"id": item.id, "price": catalog["office"].id}], "proration_date": when}
    preview = client.v1.invoices.create_preview(
        params={
            "subscription": sub.id,
            "subscription_details": {**change, "proration_behavior": "always_invoice"},  # type: ignore[typeddict-item]
        }
    )
    credit, debit = -round(19900 * 21 / 31), round(89900 * 21 / 31)
    assert preview.id.startswith("upcoming_in")
    assert sorted(line.amount for line in preview.lines.data) == [credit, debit]
    assert all(line.id.startswith("il_tmp") for line in preview.lines.data)
    assert preview.amount_due == credit + debit
    assert preview.parent is not None and preview.parent.subscription_details is not None
    assert preview.parent.subscription_details.subscription_proration_date == when
    # A preview changes nothing.
    assert (
        client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == catalog["hot_desk"].id
    )

    updated = client.v1.subscriptions.update(
        sub.id,
        params={**change, "proration_behavior": "always_invoice", "expand": ["latest_invoice"]},  # type: ignore[typeddict-item]
    )
    invoice = updated.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.billing_reason == "subscription_update"
    assert invoice.amount_due == preview.amount_due and invoice.status == "paid"
    assert sorted(line.amount for line in invoice.lines.data) == [credit, debit]


def test_preview_of_the_next_renewal_with_prorations(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    _, sub = subscribed(client, catalog["hot_desk"].id)
    item = sub["items"].data[0]
    preview = client.v1.invoices.create_preview(
        params={
            "customer": str(sub.customer),
            "subscription": sub.id,
            "subscription_details": {
                "items": [{"id": item.id, "price": catalog["office"].id}],
                "proration_date": START + 10 * DAY,
            },
        }
    )
    # The next period at the new price plus the prorations, due at the period's end.
    assert preview.billing_reason == "subscription_cycle"
    assert preview.created == item.current_period_end
    assert preview.amount_due == 89900 - round(19900 * 21 / 31) + round(89900 * 21 / 31)
    plain = client.v1.invoices.create_preview(params={"subscription": sub.id})
    assert plain.amount_due == 19900 and len(plain.lines.data) == 1
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create_preview(params={})


def test_downgrade_at_the_end_of_the_period(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id, sub = subscribed(client, catalog["office"].id)
    period_end = sub["items"].data[0].current_period_end
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    assert schedule.status == "active" and schedule.subscription == sub.id
    assert schedule.end_behavior == "release"
    assert schedule.current_phase is not None
    assert (schedule.current_phase.start_date, schedule.current_phase.end_date) == (
        START,
        period_end,
    )
    assert client.v1.subscriptions.retrieve(sub.id).schedule == schedule.id
    phase = schedule.phases[0]
    schedule = client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": [
                {
                    "items": [{"price": catalog["office"].id, "quantity": 1}],
                    "start_date": phase.start_date,
                    "end_date": phase.end_date,
                },
                {
                    "items": [{"price": catalog["hot_desk"].id, "quantity": 1}],
                    "duration": {"interval": "month"},
                },
            ],
            "end_behavior": "release",
        },
    )
    assert [p.items[0].price for p in schedule.phases] == [
        catalog["office"].id,
        catalog["hot_desk"].id,
    ]
    assert (
        client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == catalog["office"].id
    )
    # The subscription's cancellation now belongs to the schedule.
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})

    advance(client, clock_id, period_end + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub["items"].data[0].price.id == catalog["hot_desk"].id
    renewal = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert renewal.amount_paid == 19900 and len(renewal.lines.data) == 1
    schedule = client.v1.subscription_schedules.retrieve(schedule.id)
    assert schedule.current_phase is not None and schedule.current_phase.start_date == period_end
    assert types_of(client, schedule.id) == [
        "subscription_schedule.created",
        "subscription_schedule.updated",
        "subscription_schedule.updated",
    ]
    changed = [
        e
        for e in events_of(client, sub.id, "customer.subscription.updated")
        if e.created == period_end
    ]
    assert changed[0].data.object["items"]["data"][0]["price"]["id"] == catalog["hot_desk"].id

    # After the last phase the schedule completes and lets the subscription go on alone.
    next_end = sub["items"].data[0].current_period_end
    advance(client, clock_id, next_end + 2 * HOUR)
    schedule = client.v1.subscription_schedules.retrieve(schedule.id)
    assert schedule.status == "completed" and schedule.completed_at == next_end
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.schedule is None and sub.status == "active"
    assert types_of(client, schedule.id)[-1] == "subscription_schedule.completed"


def test_release_keeps_the_subscription_as_it_is(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    clock_id, sub = subscribed(client, catalog["office"].id)
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    phase = schedule.phases[0]
    client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": [
                {
                    "items": [{"price": catalog["office"].id}],
                    "start_date": phase.start_date,
                    "end_date": phase.end_date,
                },
                {"items": [{"price": catalog["hot_desk"].id}]},
            ]
        },
    )
    released = client.v1.subscription_schedules.release(schedule.id)
    assert released.status == "released" and released.released_subscription == sub.id
    assert released.subscription is None
    assert client.v1.subscriptions.retrieve(sub.id).schedule is None
    advance(client, clock_id, phase.end_date + 2 * HOUR)
    assert (
        client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == catalog["office"].id
    )
    assert types_of(client, schedule.id)[-1] == "subscription_schedule.released"


def test_canceling_a_schedule_cancels_its_subscription(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    _, sub = subscribed(client, catalog["office"].id)
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    canceled = client.v1.subscription_schedules.cancel(schedule.id)
    assert canceled.status == "canceled"
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    assert types_of(client, schedule.id)[-1] == "subscription_schedule.canceled"
    assert types_of(client, sub.id)[-1] == "customer.subscription.deleted"


def test_switching_to_yearly_starts_a_new_period_billed_at_once(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    _, sub = subscribed(client, catalog["hot_desk"].id)
    yearly = client.v1.prices.create(
        params={
            "product": str(catalog["hot_desk"].product),
            "unit_amount": 199000,
            "currency": "usd",
            "recurring": {"interval": "year"},
        }
    )
    item = sub["items"].data[0]
    when = START + 10 * DAY
    change: Any = {"items": [{"id": item.id, "price": yearly.id}], "proration_date": when}
    preview = client.v1.invoices.create_preview(
        params={"subscription": sub.id, "subscription_details": change}
    )
    credit = -round(19900 * 21 / 31)
    assert preview.billing_reason == "subscription_update"
    assert sorted(line.amount for line in preview.lines.data) == [credit, 199000]
    assert preview.amount_due == 199000 + credit

    updated = client.v1.subscriptions.update(
        sub.id, params={**change, "expand": ["latest_invoice"]}
    )
    invoice = updated.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.amount_paid == preview.amount_due and invoice.status == "paid"
    assert updated.billing_cycle_anchor == when
    new_item = updated["items"].data[0]
    assert new_item.current_period_start == when
    assert new_item.current_period_end == when + 365 * DAY  # 2026 is no leap year


def _downgrade_phases(
    sub: stripe.Subscription, schedule: stripe.SubscriptionSchedule, price: str, **extra: Any
) -> list[dict[str, Any]]:
    current = schedule.phases[0]
    return [
        {
            "items": [{"price": sub["items"].data[0].price.id, "quantity": 1}],
            "start_date": current.start_date,
            "end_date": current.end_date,
            **extra,
        },
        {"items": [{"price": price, "quantity": 1}], "duration": {"interval": "month"}, **extra},
    ]


def test_a_phase_keeps_the_subscriptions_discount_only_when_it_names_it(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    """Stripe: a phase's ``discounts``, when not given, inherit only the customer's
    discount; the subscription's own discount goes unless the phase names it."""
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    off = client.v1.coupons.create(params={"percent_off": 20, "duration": "forever"})
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["office"].id}],
            "discounts": [{"coupon": off.id}],
        }
    )
    assert len(sub.discounts) == 1
    discount_id = str(sub.discounts[0])
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    # A schedule made from the subscription carries its discount.
    assert [d.discount for d in schedule.phases[0].discounts] == [discount_id]

    kept = client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": _downgrade_phases(
                sub, schedule, catalog["hot_desk"].id, discounts=[{"discount": discount_id}]
            )
        },  # type: ignore[typeddict-item]
    )
    assert [d.discount for d in kept.phases[1].discounts] == [discount_id]
    advance(client, clock_id, START + 32 * DAY)
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert renewed["items"].data[0].price.id == catalog["hot_desk"].id
    assert [str(d) for d in renewed.discounts] == [discount_id]
    invoice = client.v1.invoices.retrieve(str(renewed.latest_invoice))
    assert invoice.amount_paid == 19900 - 19900 * 20 // 100

    # Phases that do not name it: the subscription's discount goes with them.
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["office"].id}],
            "discounts": [{"coupon": off.id}],
        }
    )
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    client.v1.subscription_schedules.update(
        schedule.id,
        params={"phases": _downgrade_phases(sub, schedule, catalog["hot_desk"].id)},  # type: ignore[typeddict-item]
    )
    assert client.v1.subscriptions.retrieve(sub.id).discounts == []
    advance(client, clock_id, START + 32 * DAY)
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert client.v1.invoices.retrieve(str(renewed.latest_invoice)).amount_paid == 19900
