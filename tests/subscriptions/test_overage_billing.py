"""Overage end to end: a member on a plan that bills overage spends beyond the
balance through the API; the usage reaches Stripe as one meter event, and the
renewal invoice (``GET /v1/invoices``) bills it, once, however often the
report is retried."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from services.credits import overage
from services.subscriptions import plans
from services.subscriptions.state.snapshots import InvoiceSnapshot, SubscriptionSnapshot
from shared import catalog, runtime
from shared.clock import from_unix
from shared.stripe_client import StripeSettings, stripe_client
from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import api
from tests.subscriptions.test_lifecycle import advance, mine
from tests.subscriptions.test_member_api import subscribe_with_elements
from tests.support.waiting import eventually

PLAN = "dedicated_desk"  # catalog.toml: 25 meeting-room hours, overage at 2500 an hour


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


async def _balance(http: aiohttp.ClientSession, billing: Billing, user: str) -> int:
    async def probe() -> dict[str, int]:
        _, body = await api(http, billing.gateway, "GET", "/v1/credits/me", user)
        return {b["credit_type"]: b["balance"] for b in body.get("balances", [])}

    # Every credit type is listed, at zero until subscription.activated is granted.
    found = await eventually(
        probe, until=lambda b: b.get("meeting_room_hours", 0) > 0, what="the period's grant"
    )
    return found["meeting_room_hours"]


async def _spend(
    http: aiohttp.ClientSession, billing: Billing, user: str, amount: int, key: str
) -> tuple[int, Any]:
    return await api(
        http,
        billing.gateway,
        "POST",
        "/v1/credits/spend",
        user,
        body={"credit_type": "meeting_room_hours", "amount": amount, "reference": "room-2"},
        idempotency_key=key,
    )


def test_only_plans_that_bill_overage_carry_a_metered_price() -> None:
    cat = catalog.default()
    dedicated = plans.chosen(PLAN, "month", None)
    hot = plans.chosen("hot_desk", "month", "partner")
    yearly = plans.chosen("private_office", "year", None)
    assert dedicated is not None and hot is not None and yearly is not None
    assert dedicated.metered_keys == ["meeting_room_hour_overage"]
    assert yearly.metered_keys == ["meeting_room_hour_overage_yearly"]
    assert hot.metered_keys == []
    assert not cat.plans["hot_desk"].overage


def test_the_plan_is_read_from_the_licensed_item_whatever_the_order() -> None:
    start, end, later = 1_767_225_600, 1_769_904_000, 1_772_323_200
    metered = {
        "price": {
            "id": "price_overage",
            "lookup_key": "meeting_room_hour_overage",
            "recurring": {"interval": "month", "usage_type": "metered"},
        },
        "current_period_start": start,
        "current_period_end": end,
    }
    licensed = {
        "price": {
            "id": "price_desk",
            "lookup_key": "dedicated_desk_monthly",
            "recurring": {"interval": "month", "usage_type": "licensed"},
        },
        "quantity": 1,
        "current_period_start": start,
        "current_period_end": end,
    }
    sub = SubscriptionSnapshot.model_validate(
        {"id": "sub_1", "customer": "cus_1", "status": "active"}
        | {"items": {"data": [metered, licensed]}}
    )
    assert sub.price_id() == "price_desk"
    # A renewal: the metered line bills the period that ended, the plan's the next.
    renewal = InvoiceSnapshot.model_validate(
        {
            "id": "in_1",
            "customer": "cus_1",
            "status": "paid",
            "currency": "usd",
            "created": end,
            "period_start": start,
            "period_end": end,
            "lines": {
                "data": [
                    {"period": {"start": start, "end": end}, "parent": None},
                    {"period": {"start": end, "end": later}, "parent": None},
                ]
            },
        }
    )
    assert renewal.billed_period() == (from_unix(end), from_unix(later))


async def test_overage_is_on_the_renewal_invoice_once(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_overage"
    sub_id = await subscribe_with_elements(http, billing, user, plan=PLAN)
    client = stripe_client(StripeSettings(stripe_api_base=billing.sandbox.url))
    sub = await client.v1.subscriptions.retrieve_async(sub_id)
    plan_item, metered_item = sub["items"].data
    assert plan_item.price.id == billing.prices["dedicated_desk_monthly"]
    assert metered_item.price.id == billing.prices["meeting_room_hour_overage"]
    assert "quantity" not in metered_item.to_dict()  # usage decides

    async def first_invoice() -> dict[str, Any]:
        _, listed = await api(http, billing.gateway, "GET", "/v1/invoices", user)
        newest: dict[str, Any] = listed["data"][0] if listed["data"] else {}
        return newest

    # invoice.paid reaches the subscriptions service on its own, after the
    # subscription turned active: wait for it rather than read a half-told invoice.
    first = await eventually(
        first_invoice, until=lambda i: i.get("status") == "paid", what="the first invoice paid"
    )
    assert first["amount_paid"] == 34900  # nothing used yet: the plan alone
    assert await _balance(http, billing, user) == 25

    key = uuid.uuid4().hex
    status, spent = await _spend(http, billing, user, 30, key)
    assert status == 201, spent
    assert (spent["overage"], spent["balance_after"]) == (5, 0)
    # The request retried: the same answer, no second spend, no second meter event.
    assert await _spend(http, billing, user, 30, key) == (201, spent)
    # The report retried as if Stripe's answer had been lost: Stripe knows the
    # identifier (the spend id) and bills nothing more.
    assert await db.fetchval("SELECT count(*) FROM credits.overage_reports") == 1
    await db.execute(
        "UPDATE credits.overage_reports SET reported_at = NULL, next_attempt_at = now()"
    )
    app = billing.stack.app("credits")
    clock = app[runtime.CLOCK]
    assert await overage.report_due(app[runtime.POOL], app[runtime.STRIPE], clock) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM credits.overage_reports WHERE reported_at IS NOT NULL"
        )
        == 1
    )

    row = await mine(http, billing, user)
    end = _at(row["current_period_end"])
    await advance(http, billing, user, end + timedelta(hours=2))

    async def renewal() -> dict[str, Any]:
        _, listed = await api(http, billing.gateway, "GET", "/v1/invoices", user)
        latest: dict[str, Any] = listed["data"][0]
        return latest

    invoice = await eventually(
        renewal,
        until=lambda i: i["billing_reason"] == "subscription_cycle" and i["status"] == "paid",
        what="the renewal invoice paid",
    )
    assert invoice["amount_paid"] == 34900 + 5 * 2500
    assert _at(invoice["period_start"]) == end  # the plan's period, paid in advance
    # On Stripe's invoice: a line of the metered price for the period that ended.
    stripe_invoice = await client.v1.invoices.retrieve_async(invoice["id"])
    [line] = [
        line
        for line in stripe_invoice.lines.data
        if line.pricing is not None
        and line.pricing.price_details is not None
        and line.pricing.price_details.price == billing.prices["meeting_room_hour_overage"]
    ]
    assert (line.amount, line.quantity) == (12500, 5)
    assert line.period.end == int(end.timestamp())


async def test_plan_changes_keep_the_overage_item_while_the_plan_bills_overage(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    user = "u_overage_changes"
    sub_id = await subscribe_with_elements(http, billing, user, plan=PLAN)
    client = stripe_client(StripeSettings(stripe_api_base=billing.sandbox.url))
    _, metered_item = (await client.v1.subscriptions.retrieve_async(sub_id))["items"].data
    assert await _balance(http, billing, user) == 25
    status, spent = await _spend(http, billing, user, 27, uuid.uuid4().hex)
    assert (status, spent["overage"]) == (201, 2)

    # An upgrade to a plan billing the same overage keeps the item: its usage stays.
    change = {"plan": "private_office", "interval": "month"}
    status, upgraded = await api(
        http, billing.gateway, "PATCH", f"/v1/subscriptions/{sub_id}", user, body=change
    )
    assert status == 200, upgraded
    items = (await client.v1.subscriptions.retrieve_async(sub_id))["items"].data
    assert [i.price.id for i in items] == [
        billing.prices["private_office_monthly"],
        billing.prices["meeting_room_hour_overage"],
    ]
    assert items[1].id == metered_item.id

    # A downgrade to a plan that refuses overage drops it at the period end,
    # and its usage so far is billed with the first invoice of the new plan.
    status, downgraded = await api(
        http,
        billing.gateway,
        "PATCH",
        f"/v1/subscriptions/{sub_id}",
        user,
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 200, downgraded
    end = _at(downgraded["current_period_end"])
    await advance(http, billing, user, end + timedelta(hours=2))
    await mine(http, billing, user, until=lambda s: s["plan"] == "hot_desk", what="downgraded")
    items = (await client.v1.subscriptions.retrieve_async(sub_id))["items"].data
    assert [i.price.id for i in items] == [billing.prices["hot_desk_monthly"]]

    async def renewal() -> dict[str, Any]:
        _, listed = await api(http, billing.gateway, "GET", "/v1/invoices", user)
        latest: dict[str, Any] = listed["data"][0]
        return latest

    invoice = await eventually(
        renewal,
        until=lambda i: i["billing_reason"] == "subscription_cycle" and i["status"] == "paid",
        what="the first hot_desk invoice paid",
    )
    assert invoice["amount_paid"] == 19900 + 2 * 2500
