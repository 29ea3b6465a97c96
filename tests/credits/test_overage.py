"""Overage: beyond the balance, a plan with an overage meter bills the rest
through a Stripe meter event, once; every other plan refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
import stripe

from services.credits import overage
from shared import runtime
from shared.billing_events import Member, Period, Plan, SubscriptionActivated
from shared.clock import SettableClock, to_unix
from tests.credits.conftest import MONTH, START, Credits
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, start_stack

METER_EVENT = "meeting_room_hours_overage"  # catalog.toml: dedicated_desk's overage meter


@pytest.fixture
async def billed(
    clean_state: None,
    sandbox: SandboxProcess,
    clock: SettableClock,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> AsyncIterator[Credits]:
    # The timers run once at start; the tests run the retries when they mean to.
    running: Stack = await start_stack(
        clock=clock,
        stripe_api_base=sandbox.url,
        credits={"credits_sweep_interval_seconds": 3600, "credits_overage_retry_seconds": 3600},
    )
    yield Credits(http=http, gateway=running.gateway, db=db, clock=clock, stack=running)
    await running.stop()


async def _member_on(credits: Credits, user: str, customer: str, plan: str) -> None:
    await credits.send(
        "subscription.activated",
        SubscriptionActivated(
            member=Member(user_id=user, customer_id=customer),
            subscription_id=f"sub_{user}",
            plan=Plan(plan=plan, interval="month"),
            status="active",
            period=Period(start=START, end=START + MONTH),
            allotments={"meeting_room_hours": 25},
            invoice_id=f"in_{user}",
        ),
    )


async def _usage(client: stripe.StripeClient, meter_id: str, customer: str) -> float:
    start = to_unix(START)
    summaries = await client.v1.billing.meters.event_summaries.list_async(
        meter_id,
        params={"customer": customer, "start_time": start, "end_time": start + 86_400 * 30},
    )
    return float(summaries.data[0].aggregated_value)


async def test_overage_is_billed_once_through_a_meter_event(
    billed: Credits, stripe_client: stripe.StripeClient
) -> None:
    customer = await stripe_client.v1.customers.create_async(params={"email": "m@example.com"})
    meter = await stripe_client.v1.billing.meters.create_async(
        params={
            "display_name": "Meeting-room hours overage",
            "event_name": METER_EVENT,
            "default_aggregation": {"formula": "sum"},
        }
    )
    await _member_on(billed, "desk-1", customer.id, "dedicated_desk")
    status, spent = await billed.spend("desk-1", 30, key="big-booking")
    assert status == 201, spent
    assert (spent["overage"], spent["balance_after"]) == (5, 0)
    assert sum(c["amount"] for c in spent["consumed"]) == 25
    assert await _usage(stripe_client, meter.id, customer.id) == 5
    # The same request again: the same answer, no second meter event.
    assert await billed.spend("desk-1", 30, key="big-booking") == (201, spent)
    billed.clock.advance(timedelta(minutes=5))
    report = await billed.db.fetchrow("SELECT * FROM credits.overage_reports")
    assert report is not None
    assert (report["quantity"], report["attempts"]) == (5, 1)
    assert report["reported_at"] is not None
    assert await _usage(stripe_client, meter.id, customer.id) == 5
    # Never a negative balance: the ledger holds only what was granted.
    assert (await billed.balances("desk-1"))["meeting_room_hours"] == 0
    await billed.consistent("desk-1")


async def test_a_plan_without_overage_refuses_beyond_the_balance(
    billed: Credits, stripe_client: stripe.StripeClient
) -> None:
    customer = await stripe_client.v1.customers.create_async(params={"email": "h@example.com"})
    await _member_on(billed, "hot-1", customer.id, "hot_desk")
    status, body = await billed.spend("hot-1", 30)
    assert status == 422
    assert {"field": "balance", "reason": "25"} in body["error"]["details"]
    assert await billed.db.fetchval("SELECT count(*) FROM credits.overage_reports") == 0


async def test_overage_stripe_did_not_take_is_reported_later_once(
    billed: Credits, stripe_client: stripe.StripeClient, sandbox: SandboxProcess
) -> None:
    customer = await stripe_client.v1.customers.create_async(params={"email": "d@example.com"})
    meter = await stripe_client.v1.billing.meters.create_async(
        params={
            "display_name": "Meeting-room hours overage",
            "event_name": METER_EVENT,
            "default_aggregation": {"formula": "sum"},
        }
    )
    await _member_on(billed, "desk-2", customer.id, "dedicated_desk")
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "server_error", "count": 50, "path_prefix": "/v1/billing/meter_events"},
    )
    status, spent = await billed.spend("desk-2", 27)
    # The spend stands (Stripe is reached after the commit); the report waits.
    assert (status, spent["overage"]) == (201, 2)
    report = await billed.db.fetchrow("SELECT * FROM credits.overage_reports")
    assert report is not None
    assert report["reported_at"] is None
    assert report["last_error"]
    await sandbox.control("DELETE", "/_sandbox/faults")
    app = billed.stack.app("credits")
    # Not yet due: nothing is sent.
    assert await overage.report_due(app[runtime.POOL], app[runtime.STRIPE], billed.clock) == 0
    billed.clock.advance(timedelta(minutes=1))
    assert await overage.report_due(app[runtime.POOL], app[runtime.STRIPE], billed.clock) == 1
    assert await overage.report_due(app[runtime.POOL], app[runtime.STRIPE], billed.clock) == 0
    assert await _usage(stripe_client, meter.id, customer.id) == 2


async def test_a_trial_refuses_the_overage_it_would_not_bill(credits: Credits) -> None:
    # A hot_desk trial (2 hours) upgraded to dedicated_desk stays a trial:
    # its trial grants 25 hours, and usage during a trial is not billed.
    await credits.activate("u1", "sub_1", trial=True)
    await credits.change(
        "u1",
        "sub_1",
        previous={"meeting_room_hours": 10},
        current={"meeting_room_hours": 25},
        effective_at=START + timedelta(days=3),
    )
    status, body = await credits.spend("u1", 30)
    assert (status, body["error"]["code"]) == (422, "insufficient_credits"), body
    assert (await credits.balances("u1"))["meeting_room_hours"] == 25
    # Once the trial converts, the paid period bills what goes beyond.
    await credits.renew(
        "u1",
        "sub_1",
        start=START + MONTH,
        plan="dedicated_desk",
        allotments={"meeting_room_hours": 25},
    )
    credits.clock.set(START + MONTH + timedelta(hours=1))
    status, body = await credits.spend("u1", 30)
    assert (status, body["overage"]) == (201, 5), body
