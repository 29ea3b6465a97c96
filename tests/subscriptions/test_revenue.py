"""MRR, ARR and the counts, computed from the mirrored state, checked figure by
figure against a portfolio computed by hand."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg

from services.subscriptions import revenue_gauge
from shared import queues
from tests.gateway.helpers import metric
from tests.support import stripe_objects as so
from tests.support.gateway_client import admin_get, post_event
from tests.support.stack import Stack
from tests.support.waiting import eventually

DAY = 86_400


def _sub(
    status: str,
    lookup_key: str,
    amount: int,
    interval: str = "month",
    currency: str = "usd",
    **fields: Any,
) -> dict[str, Any]:
    obj = so.subscription(status=status, user_id=f"u_{so.new_id('x')}")
    price = obj["items"]["data"][0]["price"]
    price.update(
        lookup_key=lookup_key,
        unit_amount=amount,
        currency=currency,
        recurring={**price["recurring"], "interval": interval, "interval_count": 1},
    )
    now = int(time.time())
    obj["items"]["data"][0]["current_period_start"] = now - 10 * DAY
    obj["items"]["data"][0]["current_period_end"] = now + 20 * DAY
    obj.update(cancel_at=None, ended_at=None, canceled_at=None, trial_end=None, discounts=[])
    obj.update(fields)
    return obj


def _discount(sub_id: str, coupon: dict[str, Any], end: int | None = None) -> dict[str, Any]:
    discount = so.fixture("discount")
    discount.update(
        id=so.new_id("di"),
        subscription=sub_id,
        source={"coupon": coupon["id"], "type": "coupon"},
        # The older shape, with the coupon on the discount: nothing to fetch.
        coupon=coupon,
        start=int(time.time()) - DAY,
        end=end,
    )
    return discount


def _coupon(**fields: Any) -> dict[str, Any]:
    coupon = so.fixture("coupon")
    coupon.update({"id": so.new_id("co"), "percent_off": None, "amount_off": None, **fields})
    return coupon


async def test_revenue_matches_a_portfolio_computed_by_hand(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    now = int(time.time())
    quarter = _coupon(percent_off=25, duration="forever")
    five_off = _coupon(amount_off=5000, currency="usd", duration="repeating", duration_in_months=3)
    half_once = _coupon(percent_off=50, duration="once")
    subs = {
        "monthly": _sub("active", "hot_desk_monthly", 19900),  # 19,900
        "yearly": _sub("active", "dedicated_desk_yearly", 349000, "year"),  # 29,083.33
        "trial": _sub("trialing", "hot_desk_monthly", 19900, trial_end=now + 5 * DAY),  # 0
        "leaving": _sub(  # counted until its period ends: 89,900
            "active",
            "private_office_monthly",
            89900,
            cancel_at_period_end=True,
            cancel_at=now + 20 * DAY,
        ),
        "quarter_off": _sub("active", "dedicated_desk_monthly", 34900),  # 26,175
        "past_due": _sub("past_due", "hot_desk_monthly", 19900),  # 19,900 - 5,000 = 14,900
        "once_off": _sub("active", "hot_desk_monthly", 19900),  # a once coupon: 19,900
        "euro": _sub("active", "desk_eur", 10000, currency="eur"),  # EUR 10,000
        "gone": _sub(
            "canceled", "hot_desk_monthly", 19900, canceled_at=now - 5 * DAY, ended_at=now - 5 * DAY
        ),
        "gone_long_ago": _sub(
            "canceled",
            "hot_desk_monthly",
            19900,
            canceled_at=now - 60 * DAY,
            ended_at=now - 60 * DAY,
        ),
    }
    events = [
        so.event("customer.subscription.created", s, created=now - 100) for s in subs.values()
    ]
    events += [
        so.event("customer.discount.created", d, created=now - 90)
        for d in (
            _discount(subs["quarter_off"]["id"], quarter),
            _discount(subs["past_due"]["id"], five_off, end=now + 60 * DAY),
            _discount(subs["once_off"]["id"], half_once),
        )
    ]
    for evt in events:
        assert (await post_event(http, stack.gateway, evt))[0] == 200
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM subscriptions.inbox WHERE queue = $1",
            queues.SUBSCRIPTIONS_STRIPE,
        ),
        until=lambda n: n == len(events),
        what="every event applied",
    )

    revenue = await admin_get(http, stack.gateway, "/v1/admin/revenue")

    usd_mrr = 19900 + 349000 / 12 + 89900 + 34900 * 0.75 + (19900 - 5000) + 19900
    assert abs(usd_mrr - (199858 + 1 / 3)) < 1e-6
    assert revenue["by_currency"] == [
        {"currency": "eur", "mrr": 10000, "arr": 120000},
        {"currency": "usd", "mrr": 199858, "arr": 2398300},
    ]
    assert revenue["active"] == 6  # monthly, yearly, leaving, quarter_off, once_off, euro
    assert revenue["trialing"] == 1
    # Access began for every active or trialing one whose plan the catalog knows.
    assert revenue["new_last_30_days"] == 6
    assert revenue["churned_last_30_days"] == 1

    # Once the leaving one's period has ended it no longer counts.
    later = await admin_get(
        http,
        stack.gateway,
        "/v1/admin/revenue",
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 25 * DAY)),
    )
    usd = next(c for c in later["by_currency"] if c["currency"] == "usd")
    assert usd["mrr"] == 199858 - 89900

    # The dashboard's gauge is the same computation, refreshed on a timer.
    await revenue_gauge.refresh(stack.app("subscriptions"))
    subscriptions = stack.apps["subscriptions"].url
    for currency, mrr in (("usd", 199858), ("eur", 10000)):
        labels = {"currency": currency}
        assert await metric(http, subscriptions, "subscriptions_mrr_minor_units", labels) == mrr


async def test_the_gauge_drops_to_zero_when_a_currencys_last_subscription_ends(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    now = int(time.time())
    franc = _sub("active", "desk_chf", 12000, currency="chf")
    ended = {**franc, "status": "canceled", "canceled_at": now, "ended_at": now}
    subscriptions = stack.apps["subscriptions"].url
    labels = {"currency": "chf"}

    for n, (evt_type, obj) in enumerate(
        (("customer.subscription.created", franc), ("customer.subscription.deleted", ended))
    ):
        evt = so.event(evt_type, obj, created=now - 100 + n)
        assert (await post_event(http, stack.gateway, evt))[0] == 200
        await eventually(
            lambda evt=evt: db.fetchval(
                "SELECT count(*) FROM subscriptions.inbox WHERE event_id = $1", evt["id"]
            ),
            until=lambda found: found == 1,
            what=f"{evt_type} applied",
        )
        await revenue_gauge.refresh(stack.app("subscriptions"))
        if n == 0:
            assert (
                await metric(http, subscriptions, "subscriptions_mrr_minor_units", labels) == 12000
            )

    # No franc subscription is left: the dashboard must not keep showing the last figure.
    assert await metric(http, subscriptions, "subscriptions_mrr_minor_units", labels) == 0
