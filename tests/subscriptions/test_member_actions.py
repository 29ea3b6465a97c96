"""What a member's own actions (cancel, resume, change) announce and leave
behind, whichever of the API's answer and Stripe's event comes first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import stripe

from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import (
    api,
    confirm_in_browser,
    outbox,
    subscription_row,
    wait_outbox,
)
from tests.subscriptions.test_lifecycle import advance, mine
from tests.subscriptions.test_member_api import subscribe_with_elements
from tests.support.waiting import eventually


async def _pause_deliveries(billing: Billing, paused: bool) -> None:
    await billing.sandbox.control("POST", "/_sandbox/delivery", {"paused": paused})


async def test_a_cancellation_at_period_end_through_the_api_is_announced_once(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_leaving"
    sub_id = await subscribe_with_elements(http, billing, user)
    await billing.sandbox.flush()
    before = await subscription_row(db, sub_id)
    assert before is not None

    # The API's answer is committed before Stripe's event about it arrives.
    await _pause_deliveries(billing, True)
    try:
        status, canceling = await api(
            http,
            billing.gateway,
            "POST",
            f"/v1/subscriptions/{sub_id}/cancel",
            user,
            body={"at_period_end": True},
        )
        assert status == 200 and canceling["cancel_at_period_end"] is True, canceling
    finally:
        await _pause_deliveries(billing, False)
    await billing.sandbox.flush()
    await eventually(
        lambda: subscription_row(db, sub_id),
        # The member's clock stands still: the event is told apart by its state.
        until=lambda r: r["version_digest"] != before["version_digest"],
        what="Stripe's event about the cancellation applied",
    )

    # The member is told their membership ends (notifications send the
    # confirmation from this event), once.
    [scheduled] = await wait_outbox(db, "subscription.cancellation_scheduled", timeout=10)
    assert scheduled["data"]["subscription_id"] == sub_id
    assert scheduled["data"]["member"]["user_id"] == user
    assert scheduled["data"]["plan"] == {"plan": "dedicated_desk", "interval": "month"}
    cancel_at = datetime.fromisoformat(scheduled["data"]["cancel_at"]).astimezone(UTC)
    assert cancel_at == datetime.fromisoformat(canceling["current_period_end"]).astimezone(UTC)
    assert len(await outbox(db, "subscription.cancellation_scheduled")) == 1


async def test_cancelling_right_after_an_upgrade_that_dropped_a_pending_downgrade(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    user = "u_changing"
    sub_id = await subscribe_with_elements(http, billing, user)
    path = f"/v1/subscriptions/{sub_id}"
    status, downgraded = await api(
        http, billing.gateway, "PATCH", path, user, body={"plan": "hot_desk", "interval": "month"}
    )
    assert status == 200 and downgraded["pending_change"]["plan"] == "hot_desk", downgraded
    await billing.sandbox.flush()

    # Stripe's events about the upgrade are late (they can be, by hours): the
    # row still names the schedule the upgrade released.
    await _pause_deliveries(billing, True)
    try:
        status, upgraded = await api(
            http,
            billing.gateway,
            "PATCH",
            path,
            user,
            body={"plan": "private_office", "interval": "month"},
        )
        assert status == 200 and upgraded["pending_change"] is None, upgraded
        status, canceling = await api(
            http, billing.gateway, "POST", f"{path}/cancel", user, body={"at_period_end": True}
        )
    finally:
        await _pause_deliveries(billing, False)

    assert status == 200, canceling
    assert canceling["cancel_at_period_end"] is True
    in_stripe = await stripe_client.v1.subscriptions.retrieve_async(sub_id)
    assert in_stripe.cancel_at_period_end is True


async def test_cancelling_now_answers_with_the_ended_subscription(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_gone_now"
    sub_id = await subscribe_with_elements(http, billing, user)
    await _pause_deliveries(billing, True)
    try:
        status, canceled = await api(
            http,
            billing.gateway,
            "POST",
            f"/v1/subscriptions/{sub_id}/cancel",
            user,
            body={"at_period_end": False},
        )
        assert status == 200, canceled
        assert canceled["status"] == "canceled", canceled
        assert canceled["ended_at"] is not None
    finally:
        await _pause_deliveries(billing, False)
    # Stripe's event then moves the row, and announces the end.
    await billing.sandbox.flush()
    [ended] = await wait_outbox(db, "subscription.canceled")
    assert ended["data"]["subscription_id"] == sub_id


async def test_a_second_downgrade_after_the_first_took_effect_waits_for_the_period_end(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    user = "u_stepping_down"
    sub_id = await subscribe_with_elements(http, billing, user)
    path = f"/v1/subscriptions/{sub_id}"
    yearly = {"plan": "hot_desk", "interval": "year"}
    status, first = await api(http, billing.gateway, "PATCH", path, user, body=yearly)
    assert status == 200 and first["pending_change"]["interval"] == "year", first
    end = datetime.fromisoformat(first["current_period_end"]).astimezone(UTC)
    await advance(http, billing, user, end + timedelta(hours=2))
    sub = await mine(
        http,
        billing,
        user,
        until=lambda s: (s["plan"], s["interval"]) == ("hot_desk", "year"),
        what="the first downgrade in effect",
    )

    # The schedule of the first downgrade still runs its second phase: the
    # next downgrade comes after it, at the end of the year paid for.
    monthly = {"plan": "hot_desk", "interval": "month"}
    status, second = await api(http, billing.gateway, "PATCH", path, user, body=monthly)

    assert status == 200, second
    assert second["pending_change"]["interval"] == "month"
    assert second["pending_change"]["effective_at"] == sub["current_period_end"]
    await billing.sandbox.flush()
    now = await mine(http, billing, user)
    assert (now["plan"], now["interval"]) == ("hot_desk", "year"), now
    assert now["current_period_end"] == sub["current_period_end"]


async def test_a_declined_upgrade_leaves_the_pending_downgrade_scheduled(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    user = "u_declined"
    sub_id = await subscribe_with_elements(http, billing, user)
    path = f"/v1/subscriptions/{sub_id}"
    status, downgraded = await api(
        http, billing.gateway, "PATCH", path, user, body={"plan": "hot_desk", "interval": "month"}
    )
    assert status == 200 and downgraded["pending_change"]["plan"] == "hot_desk", downgraded
    _, methods = await api(http, billing.gateway, "GET", "/v1/payment-methods", user)
    for method in methods["data"]:
        await billing.sandbox.control(
            "POST",
            f"/_sandbox/payment_methods/{method['id']}/fail_next",
            {"count": 5, "decline_code": "insufficient_funds"},
        )

    status, refused = await api(
        http,
        billing.gateway,
        "PATCH",
        path,
        user,
        body={"plan": "private_office", "interval": "month"},
    )

    assert status == 402, refused
    await billing.sandbox.flush()
    # The member is still shown the downgrade, and Stripe still has it: the
    # schedule released to upgrade is back, ending on the lower plan.
    _, shown = await api(http, billing.gateway, "GET", path, user)
    assert shown["pending_change"]["plan"] == "hot_desk", shown
    # The declined upgrade changed nothing: the member keeps the plan they had,
    # here and in Stripe, until the downgrade.
    assert shown["plan"] == "dedicated_desk", shown
    in_stripe = await stripe_client.v1.subscriptions.retrieve_async(sub_id)
    kept = billing.prices["dedicated_desk_monthly"]
    prices = [item.price.id for item in in_stripe["items"].data]
    assert kept in prices and billing.prices["private_office_monthly"] not in prices, prices
    assert in_stripe.status == "active"
    assert in_stripe.schedule is not None, "the downgrade's schedule was released"
    schedule = await stripe_client.v1.subscription_schedules.retrieve_async(str(in_stripe.schedule))
    assert schedule.status == "active"
    assert kept in [item["price"] for item in schedule.phases[0]["items"]]
    assert schedule.phases[-1]["items"][0]["price"] == billing.prices["hot_desk_monthly"]


async def test_a_downgrade_keeps_the_members_discount(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    # A schedule's phase without discounts inherits only the customer's: the
    # subscription's own coupon would end with the phase the downgrade writes.
    user = "u_discounted_downgrade"
    coupon = await stripe_client.v1.coupons.create_async({"percent_off": 20, "duration": "forever"})
    await stripe_client.v1.promotion_codes.create_async(
        {"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "STAY20"}  # type: ignore[typeddict-item]
    )
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        user,
        body={"plan": "dedicated_desk", "interval": "month", "promotion_code": "STAY20"},
        email=f"{user}@example.com",
    )
    assert status == 201, created
    confirmed, _ = await confirm_in_browser(http, billing.sandbox.url, created["client_secret"])
    assert confirmed == 200
    sub = await mine(http, billing, user, until=lambda s: s["status"] == "active")
    discount = (await stripe_client.v1.subscriptions.retrieve_async(sub["id"])).discounts
    assert len(discount) == 1

    path = f"/v1/subscriptions/{sub['id']}"
    body = {"plan": "hot_desk", "interval": "month"}
    status, downgraded = await api(http, billing.gateway, "PATCH", path, user, body=body)
    assert status == 200 and downgraded["pending_change"]["plan"] == "hot_desk", downgraded
    in_stripe = await stripe_client.v1.subscriptions.retrieve_async(sub["id"])
    assert in_stripe.discounts == discount, "the downgrade ended the member's discount"

    end = datetime.fromisoformat(sub["current_period_end"]).astimezone(UTC)
    await advance(http, billing, user, end + timedelta(hours=2))
    await mine(http, billing, user, until=lambda s: s["plan"] == "hot_desk", what="downgraded")
    renewed = await stripe_client.v1.subscriptions.retrieve_async(sub["id"])
    assert renewed.discounts == discount
    invoice = await stripe_client.v1.invoices.retrieve_async(str(renewed.latest_invoice))
    assert invoice.billing_reason == "subscription_cycle"
    assert invoice.total_discount_amounts, "the renewal on the lower plan was not discounted"
