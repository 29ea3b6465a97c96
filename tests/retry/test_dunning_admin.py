"""Operators and dunning: list cases, retry one now, stop one; audited."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import stripe

from tests.gateway.helpers import admin, api, bearer, token
from tests.retry.helpers import case_in, fail_renewal, new_member, succeeded_charges
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


@pytest.fixture
def retry_settings(retry_settings: dict[str, Any]) -> dict[str, Any]:
    # Attempts an hour away: only an operator moves them.
    return {
        **retry_settings,
        "dunning_first_delay_seconds": 3600.0,
        "dunning_max_delay_seconds": 3600.0,
    }


def _reason(text: str = "member called, card fixed") -> bytes:
    return orjson.dumps({"reason": text})


async def test_operators_list_retry_now_and_stop_cases(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    gateway = dunning_stack.gateway
    first = await new_member(stripe_client, "a@example.com")
    second = await new_member(stripe_client, "b@example.com")
    first_invoice = await fail_renewal(stripe_client, sandbox, first, declines=1)
    second_invoice = await fail_renewal(stripe_client, sandbox, second, declines=1)
    await case_in(db, first_invoice, "open")
    await case_in(db, second_invoice, "open")

    async def gauges() -> str:
        async with http.get(f"{dunning_stack.apps['retry'].url}/metrics") as response:
            return await response.text()

    # The scheduler refreshes the gauges from the database every few seconds.
    exposed = await eventually(
        gauges, until=lambda text: 'dunning_cases{state="open"} 2.0' in text, what="gauges"
    )
    assert "dunning_oldest_due_attempt_age_seconds 0.0" in exposed  # nothing due yet
    assert "dunning_recovery_rate 0.0" in exposed

    status, page, _ = await admin(
        http, gateway, "GET", "/dunning", params={"state": "open", "limit": "1"}
    )
    assert status == 200, page
    assert len(page["data"]) == 1 and page["has_more"]
    status, rest, _ = await admin(
        http, gateway, "GET", "/dunning", params={"state": "open", "cursor": page["next_cursor"]}
    )
    assert status == 200
    listed = {c["invoice_id"] for c in page["data"] + rest["data"]}
    assert listed == {first_invoice, second_invoice}
    assert all(c["attempts"] == [] and c["next_attempt_at"] for c in page["data"] + rest["data"])
    status, none, _ = await admin(http, gateway, "GET", "/dunning", params={"state": "recovered"})
    assert (status, none["data"]) == (200, [])

    # A member is no operator.
    status, _, _ = await api(
        http, "GET", f"{gateway}/v1/admin/dunning", headers=bearer(token("member", sub="user_42"))
    )
    assert status in (403, 404)

    # Retry now, found by the subscription: the card works again, so it is recovered.
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{first.subscription_id}/retry-now", data=_reason()
    )
    assert status == 200, body
    assert body["invoice_id"] == first_invoice
    case = await case_in(db, first_invoice, "recovered")
    assert case["close_reason"] == "attempt_succeeded"
    assert len(await succeeded_charges(stripe_client, first.customer_id)) == 2

    # Stop the other: canceled, never charged.
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{second_invoice}/stop", data=_reason("goodwill")
    )
    assert status == 200, body
    assert body["state"] == "canceled" and body["close_reason"] == "stopped_by_staff"
    assert len(await succeeded_charges(stripe_client, second.customer_id)) == 1

    # Closed cases refuse both; unknown ones are 404; a reason is required.
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{second_invoice}/retry-now", data=_reason()
    )
    assert status == 409, body
    status, body, _ = await admin(http, gateway, "POST", "/dunning/in_nothing/stop", data=_reason())
    assert status == 404, body
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{second_invoice}/stop", data=orjson.dumps({})
    )
    assert status == 422, body

    for invoice_id, action, reason in (
        (first_invoice, "dunning.retry_now", "member called, card fixed"),
        (second_invoice, "dunning.stop", "goodwill"),
    ):
        status, logged, _ = await admin(
            http, gateway, "GET", "/audit", params={"target": invoice_id}
        )
        assert status == 200, logged
        [entry] = logged["data"]
        assert (entry["service"], entry["action"], entry["reason"]) == ("retry", action, reason)
        assert entry["actor_role"] == "admin" and entry["request_id"]


async def test_a_case_cannot_be_stopped_while_its_attempt_is_at_stripe(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    gateway = dunning_stack.gateway
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # Stripe is slow to take the payment: the attempt is under way meanwhile.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {
            "kind": "slow",
            "count": 1,
            "delay_ms": 3000,
            "path_prefix": f"/v1/invoices/{invoice_id}/pay",
        },
    )
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{invoice_id}/retry-now", data=_reason()
    )
    assert status == 200, body
    await eventually(
        lambda: sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST"),
        until=lambda found: len(found) == 1,
        what="the attempt at Stripe",
    )

    # Stopping now cannot stop the charge: the operator is told so, not "canceled".
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{invoice_id}/stop", data=_reason("goodwill")
    )
    assert status == 409, body
    assert body["error"]["code"] == "attempt_in_progress"

    case = await case_in(db, invoice_id, "recovered")
    assert case["close_reason"] == "attempt_succeeded"
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2


@pytest.fixture
def stripe_retried_late(retry_settings: dict[str, Any]) -> dict[str, Any]:
    # An attempt Stripe could not take is tried again an hour later.
    retry_settings["dunning_unavailable_retry_seconds"] = 3600.0
    return retry_settings


@pytest.mark.usefixtures("stripe_retried_late")
async def test_a_stopped_case_leaves_no_attempt_pending(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    gateway = dunning_stack.gateway
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # Stripe is down for the payment: the attempt is left to be repeated.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "server_error", "count": 10_000, "path_prefix": f"/v1/invoices/{invoice_id}/pay"},
    )
    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{invoice_id}/retry-now", data=_reason()
    )
    assert status == 200, body
    await eventually(
        lambda: db.fetchrow(
            "SELECT * FROM retry.cases WHERE invoice_id = $1"
            " AND lease_owner IS NULL AND pending_attempt = 1",
            invoice_id,
        ),
        what="the attempt waiting to be repeated",
    )

    status, body, _ = await admin(
        http, gateway, "POST", f"/dunning/{invoice_id}/stop", data=_reason("goodwill")
    )
    assert status == 200, body
    assert body["state"] == "canceled"
    # Closed, the case will never finish that attempt: it is not shown as under way.
    assert [(a["number"], a["outcome"]) for a in body["attempts"]] == [(1, "superseded")]
    assert body["attempts_made"] == 1


def _failed_renewal(subscription_id: str) -> dict[str, Any]:
    invoice = so.fixture("invoice")
    invoice.update(
        id=so.new_id("in"),
        customer="cus_test_member",
        status="open",
        billing_reason="subscription_cycle",
        amount_due=19900,
        amount_paid=0,
        amount_remaining=19900,
        currency="usd",
        attempt_count=1,
        customer_email="ada@example.com",
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "subscription": subscription_id,
                "metadata": {"user_id": "user_7"},
            },
        },
    )
    return invoice


@pytest.mark.parametrize("action", ["retry-now", "stop"])
async def test_a_subscription_with_two_open_cases_names_them_instead_of_picking_one(
    action: str, stack: Stack, db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    # Two renewals of one subscription failed, the first still chased.
    sub_id = so.new_id("sub")
    invoices = [_failed_renewal(sub_id), _failed_renewal(sub_id)]
    for invoice in invoices:
        status, body = await post_event(
            http, stack.gateway, so.event("invoice.payment_failed", invoice)
        )
        assert status == 200, body
    before = [await case_in(db, invoice["id"], "open") for invoice in invoices]

    status, body, _ = await admin(
        http, stack.gateway, "POST", f"/dunning/{sub_id}/{action}", data=_reason()
    )
    assert status == 409, body
    assert body["error"]["code"] == "several_open_cases"
    named = " ".join(d["reason"] for d in body["error"]["details"])
    assert all(invoice["id"] in named for invoice in invoices)
    # Neither case moved, and no staff write is on record.
    after = [await case_in(db, invoice["id"], "open") for invoice in invoices]
    assert [c["next_attempt_at"] for c in after] == [c["next_attempt_at"] for c in before]
    assert await db.fetchval("SELECT count(*) FROM retry.audit_log") == 0

    # Named by its invoice, each case can be acted on.
    status, body, _ = await admin(
        http, stack.gateway, "POST", f"/dunning/{invoices[0]['id']}/{action}", data=_reason()
    )
    assert status == 200, body
