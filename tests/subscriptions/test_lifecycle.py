"""A membership's whole life against the sandbox, moved along by the member's
own Stripe test clock through the staff endpoint, as a developer would in
``make dev``: renewals, plan changes, cancellation, failed renewals and their
grace period, trials, promotion codes, and a race of first subscribes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import stripe

from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import api, confirm_in_browser, outbox, wait_outbox
from tests.subscriptions.test_member_api import subscribe_with_elements
from tests.support.waiting import eventually


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


async def advance(http: aiohttp.ClientSession, billing: Billing, user: str, to: datetime) -> None:
    status, clock = await api(
        http,
        billing.gateway,
        "POST",
        f"/v1/admin/test-clocks/{user}/advance",
        "ops",
        role="staff",
        body={"to": to.isoformat(), "reason": "lifecycle test"},
    )
    assert status == 200, clock
    assert clock["status"] == "ready"
    await billing.sandbox.flush()


async def mine(
    http: aiohttp.ClientSession, billing: Billing, user: str, until: Any = bool, what: str = "state"
) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        return (await api(http, billing.gateway, "GET", "/v1/subscriptions/me", user))[1]

    return await eventually(probe, until=until, what=what, timeout=20)


async def entitlements(http: aiohttp.ClientSession, billing: Billing, user: str) -> dict[str, Any]:
    return (await api(http, billing.gateway, "GET", "/v1/entitlements/me", user))[1]


async def test_subscribe_renew_twice_upgrade_downgrade_cancel_and_access_ends(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_life"
    sub_id = await subscribe_with_elements(http, billing, user)
    sub = await mine(http, billing, user)
    for renewal in (1, 2):
        end = _at(sub["current_period_end"])
        await advance(http, billing, user, end + timedelta(hours=2))
        sub = await mine(
            http,
            billing,
            user,
            until=lambda s, end=end: _at(s["current_period_start"]) == end,
            what=f"renewal {renewal}",
        )
        await wait_outbox(db, "subscription.renewed", renewal)
    assert sub["status"] == "active" and sub["plan"] == "dedicated_desk"

    # Upgrade mid-period: charged now, prorated, exactly what the preview said.
    await advance(http, billing, user, _at(sub["current_period_start"]) + timedelta(days=10))
    change = {"plan": "private_office", "interval": "month"}
    status, preview = await api(
        http,
        billing.gateway,
        "POST",
        f"/v1/subscriptions/{sub_id}/preview-change",
        user,
        body=change,
    )
    assert status == 200 and preview["kind"] == "upgrade"
    assert 0 < preview["amount_due_now"] < 89900 - 34900
    status, upgraded = await api(
        http, billing.gateway, "PATCH", f"/v1/subscriptions/{sub_id}", user, body=change
    )
    assert status == 200, upgraded
    sub = await mine(
        http, billing, user, until=lambda s: s["plan"] == "private_office", what="upgrade"
    )
    invoices = await eventually(
        lambda: api(http, billing.gateway, "GET", "/v1/invoices", user),
        until=lambda a: (
            a[1]["data"][0]["billing_reason"] == "subscription_update"
            and a[1]["data"][0]["status"] == "paid"
        ),
        what="the proration invoice paid",
    )
    assert invoices[1]["data"][0]["amount_paid"] == preview["amount_due_now"]
    changed = await wait_outbox(db, "subscription.changed")
    assert changed[0]["data"]["previous"]["plan"] == "dedicated_desk"
    assert changed[0]["data"]["current"]["plan"] == "private_office"
    assert changed[0]["data"]["status"] == "active"

    # Downgrade: waits for the period end, shown as pending until then.
    status, downgraded = await api(
        http,
        billing.gateway,
        "PATCH",
        f"/v1/subscriptions/{sub_id}",
        user,
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 200, downgraded
    assert downgraded["plan"] == "private_office"
    assert downgraded["pending_change"]["plan"] == "hot_desk"
    assert downgraded["pending_change"]["effective_at"] == sub["current_period_end"]
    end = _at(sub["current_period_end"])
    await advance(http, billing, user, end + timedelta(hours=2))
    sub = await mine(
        http,
        billing,
        user,
        until=lambda s: s["plan"] == "hot_desk" and s["pending_change"] is None,
        what="the downgrade at the period end",
    )
    await wait_outbox(db, "subscription.changed", 2)

    # Cancel at the period end: access lasts until then, and ends with it.
    status, canceling = await api(
        http,
        billing.gateway,
        "POST",
        f"/v1/subscriptions/{sub_id}/cancel",
        user,
        body={"at_period_end": True},
    )
    assert status == 200 and canceling["cancel_at_period_end"] is True, canceling
    access = await entitlements(http, billing, user)
    assert access["active"] is True and access["plan"] == "hot_desk"
    end = _at(sub["current_period_end"])
    await advance(http, billing, user, end + timedelta(hours=2))
    await mine(http, billing, user, until=lambda s: s["status"] == "canceled", what="ended")
    access = await entitlements(http, billing, user)
    assert access["active"] is False and access["status"] == "canceled"
    canceled = await wait_outbox(db, "subscription.canceled")
    assert canceled[0]["data"]["subscription_id"] == sub_id
    # One activation, and it is this subscription's (not one of another test's).
    activated = await outbox(db, "subscription.activated")
    assert [a["data"]["subscription_id"] for a in activated] == [sub_id], activated


async def test_a_failed_renewal_keeps_access_through_the_grace_period_then_loses_it(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_grace"
    await subscribe_with_elements(http, billing, user)
    _, methods = await api(http, billing.gateway, "GET", "/v1/payment-methods", user)
    for method in methods["data"]:
        await billing.sandbox.control(
            "POST",
            f"/_sandbox/payment_methods/{method['id']}/fail_next",
            {"count": 50, "decline_code": "insufficient_funds"},
        )
    sub = await mine(http, billing, user)
    end = _at(sub["current_period_end"])

    await advance(http, billing, user, end + timedelta(hours=2))

    await mine(http, billing, user, until=lambda s: s["status"] == "past_due", what="past due")
    access = await entitlements(http, billing, user)
    assert access["active"] is True and access["status"] == "past_due"
    grace_until = _at(access["access_until"])
    assert end < grace_until <= end + timedelta(days=7, hours=3)
    [past_due] = await wait_outbox(db, "subscription.past_due")
    assert _at(past_due["data"]["grace_until"]) == grace_until
    failed = await wait_outbox(db, "invoice.payment_failed")
    assert failed[0]["data"]["attempt_count"] == 1

    await advance(http, billing, user, grace_until - timedelta(hours=1))
    assert (await entitlements(http, billing, user))["active"] is True
    await advance(http, billing, user, grace_until + timedelta(hours=1))
    access = await entitlements(http, billing, user)
    assert access["active"] is False


async def _card_on_file(http: aiohttp.ClientSession, billing: Billing, user: str) -> None:
    _, setup = await api(http, billing.gateway, "POST", "/v1/payment-methods/setup", user)
    await confirm_in_browser(http, billing.sandbox.url, setup["client_secret"])
    _, methods = await api(http, billing.gateway, "GET", "/v1/payment-methods", user)
    pm = methods["data"][0]["id"]
    assert (await api(http, billing.gateway, "POST", f"/v1/payment-methods/{pm}/default", user))[
        0
    ] == 200


async def test_a_trial_converts_to_paid(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_trial"
    await _card_on_file(http, billing, user)
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        user,
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 201 and created["status"] == "trialing", created
    sub = await mine(http, billing, user, until=lambda s: s["status"] == "trialing")
    [activated] = await wait_outbox(db, "subscription.activated")
    assert activated["data"]["status"] == "trialing"
    assert activated["data"]["allotments"]["meeting_room_hours"] == 2  # the trial's credits
    trial_end = _at(sub["trial_end"])

    await advance(http, billing, user, trial_end - timedelta(days=2))
    await wait_outbox(db, "subscription.trial_ending")
    await advance(http, billing, user, trial_end + timedelta(hours=2))

    await mine(http, billing, user, until=lambda s: s["status"] == "active", what="converted")
    [renewed] = await wait_outbox(db, "subscription.renewed")
    assert renewed["data"]["amount_paid"] == 19900
    assert renewed["data"]["allotments"]["meeting_room_hours"] == 10
    assert (await entitlements(http, billing, user))["active"] is True


async def test_a_change_during_a_trial_says_the_subscription_is_trialing(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Credits grant a trial its trial credits, whatever the plan: the change's
    # event says the period it names is still the trial, even when it is
    # applied before the trial's activation.
    user = "u_trial_change"
    await _card_on_file(http, billing, user)
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        user,
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 201 and created["status"] == "trialing", created
    await mine(http, billing, user, until=lambda s: s["status"] == "trialing")
    await wait_outbox(db, "subscription.activated")
    status, changed_view = await api(
        http,
        billing.gateway,
        "PATCH",
        f"/v1/subscriptions/{created['id']}",
        user,
        body={"plan": "hot_desk", "interval": "year"},
    )
    assert status == 200, changed_view
    [changed] = await wait_outbox(db, "subscription.changed")
    assert changed["data"]["current"] == {"plan": "hot_desk", "interval": "year"}
    assert changed["data"]["status"] == "trialing"


async def test_a_trial_that_ends_unpaid_ends_access(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_trial_unpaid"
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        user,
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 201 and created["status"] == "trialing", created
    sub = await mine(http, billing, user, until=lambda s: s["status"] == "trialing")
    assert (await entitlements(http, billing, user))["active"] is True

    await advance(http, billing, user, _at(sub["trial_end"]) + timedelta(hours=2))

    await mine(
        http,
        billing,
        user,
        until=lambda s: s["status"] in ("canceled", "past_due", "unpaid"),
        what="the trial ended without a card",
    )
    access = await entitlements(http, billing, user)
    await eventually(
        lambda: entitlements(http, billing, user),
        until=lambda a: a["status"] == "canceled",
        what="canceled",
    )
    assert access["active"] is False or access["status"] == "past_due"
    assert (await entitlements(http, billing, user))["active"] is False
    await wait_outbox(db, "subscription.canceled")
    assert await outbox(db, "subscription.renewed") == []


async def test_checkout_with_a_promotion_code(
    billing: Billing,
    http: aiohttp.ClientSession,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    coupon = await stripe_client.v1.coupons.create_async({"percent_off": 20, "duration": "forever"})
    await stripe_client.v1.promotion_codes.create_async(
        {"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "WELCOME20"}  # type: ignore[typeddict-item]
    )
    status, session = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/checkout/sessions",
        "u_promo",
        body={
            "plan": "private_office",
            "interval": "month",
            "promotion_code": "WELCOME20",
            "success_url": "http://localhost:3000/ok",
            "cancel_url": "http://localhost:3000/no",
        },
    )
    assert status == 201, session
    await billing.sandbox.control(
        "POST", f"/_sandbox/checkout/sessions/{session['session_id']}/complete", {}
    )
    await billing.sandbox.flush()
    sub = await mine(
        http,
        billing,
        "u_promo",
        until=lambda s: s["status"] == "active" and s["discounts"],
        what="the discounted subscription",
    )
    assert sub["discounts"][0]["percent_off"] == 20
    invoices = await eventually(
        lambda: api(http, billing.gateway, "GET", "/v1/invoices", "u_promo"),
        until=lambda a: a[1]["data"] and a[1]["data"][0]["status"] == "paid",
        what="the first invoice",
    )
    assert invoices[1]["data"][0]["amount_paid"] == 89900 * 80 // 100
    _, outcome = await api(
        http, billing.gateway, "GET", f"/v1/checkout/sessions/{session['session_id']}", "u_promo"
    )
    assert outcome["status"] == "complete" and outcome["subscription_id"] == sub["id"]
    revenue = (await api(http, billing.gateway, "GET", "/v1/admin/revenue", "boss", role="admin"))[
        1
    ]
    assert revenue["by_currency"] == [{"currency": "usd", "mrr": 71920, "arr": 863040}]


async def test_concurrent_first_subscribes_make_one_customer_and_one_subscription(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    answers = await asyncio.gather(
        *(
            api(
                http,
                billing.gateway,
                "POST",
                "/v1/subscriptions",
                "u_race",
                body={"plan": "dedicated_desk", "interval": "month"},
                idempotency_key=f"race-{n}",
            )
            for n in range(6)
        )
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201, 409, 409, 409, 409, 409], answers
    customers = (await stripe_client.v1.customers.list_async({"limit": 100})).data
    mine_ = [c for c in customers if c.metadata and c.metadata.to_dict().get("user_id") == "u_race"]
    assert len(mine_) == 1
    subs = (
        await stripe_client.v1.subscriptions.list_async({"customer": mine_[0].id, "status": "all"})
    ).data
    assert len(subs) == 1
