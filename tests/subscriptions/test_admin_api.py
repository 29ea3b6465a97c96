"""Staff: every subscription with filters and a cursor, a member's whole picture
by user id or email, and writes on a member's behalf, each with a reason and an
audit entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import stripe

from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import api
from tests.subscriptions.test_member_api import subscribe_with_elements
from tests.support.db_faults import refusing
from tests.support.waiting import eventually


async def _staff(
    http: aiohttp.ClientSession, billing: Billing, method: str, path: str, **kw: object
) -> tuple[int, dict]:  # type: ignore[type-arg]
    return await api(http, billing.gateway, method, path, "staff_1", role="staff", **kw)  # type: ignore[arg-type]


async def test_staff_list_lookup_and_audited_writes(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    first = await subscribe_with_elements(http, billing, "u_one")
    second = await subscribe_with_elements(http, billing, "u_two", plan="private_office")

    status, page = await _staff(
        http, billing, "GET", "/v1/admin/subscriptions", params={"limit": "1"}
    )
    assert status == 200 and len(page["data"]) == 1 and page["has_more"]
    _, rest = await _staff(
        http,
        billing,
        "GET",
        "/v1/admin/subscriptions",
        params={"limit": "1", "cursor": page["next_cursor"]},
    )
    assert {page["data"][0]["id"], rest["data"][0]["id"]} == {first, second}
    assert rest["has_more"] is False
    _, offices = await _staff(
        http,
        billing,
        "GET",
        "/v1/admin/subscriptions",
        params={"plan": "private_office", "status": "active"},
    )
    assert [s["id"] for s in offices["data"]] == [second]

    status, by_id = await _staff(http, billing, "GET", "/v1/admin/customers/u_one")
    assert status == 200 and by_id["customer"]["email"] == "u_one@example.com"
    assert [s["id"] for s in by_id["subscriptions"]] == [first]
    assert by_id["invoices"] and by_id["history"]
    status, by_email = await _staff(
        http, billing, "GET", "/v1/admin/customers", params={"email": "U_ONE@example.com"}
    )
    assert status == 200 and by_email["customer"]["user_id"] == "u_one"
    assert (await _staff(http, billing, "GET", "/v1/admin/customers/nobody"))[0] == 404

    # A staff write without a reason is refused; with one it acts and is audited.
    path = f"/v1/admin/subscriptions/{first}/cancel"
    status, refused = await _staff(http, billing, "POST", path, body={"at_period_end": True})
    assert status == 422 and refused["error"]["details"][0]["field"] == "reason"
    status, canceled = await _staff(
        http, billing, "POST", path, body={"at_period_end": True, "reason": "member asked by phone"}
    )
    assert status == 200 and canceled["cancel_at_period_end"] is True
    status, resumed = await _staff(
        http,
        billing,
        "POST",
        f"/v1/admin/subscriptions/{first}/resume",
        body={"reason": "member changed their mind"},
    )
    assert status == 200 and resumed["cancel_at_period_end"] is False
    status, upgraded = await _staff(
        http,
        billing,
        "PATCH",
        f"/v1/admin/subscriptions/{first}",
        body={"plan": "private_office", "interval": "month", "reason": "goodwill upgrade"},
    )
    assert status == 200, upgraded

    audit = await eventually(
        lambda: _staff(http, billing, "GET", "/v1/admin/audit", params={"target": first}),
        until=lambda answer: len(answer[1].get("data", [])) == 3,
        what="three audit entries",
    )
    entries = audit[1]["data"]
    assert [e["action"] for e in entries] == [
        "subscription.upgrade",
        "subscription.resume",
        "subscription.cancel_at_period_end",
    ]
    assert entries[-1]["reason"] == "member asked by phone"
    assert {e["actor_id"] for e in entries} == {"staff_1"}
    assert {e["actor_role"] for e in entries} == {"staff"}
    assert all(e["request_id"] for e in entries)
    _, detail = await _staff(http, billing, "GET", "/v1/admin/customers/u_one")
    assert {"staff"} <= {h["actor_type"] for h in detail["history"]}


async def test_a_test_clock_time_without_its_offset_is_a_422_naming_the_field(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    # The member's customer, on its own test clock.
    assert (await api(http, billing.gateway, "GET", "/v1/payment-methods", "u_clocked"))[0] == 200
    path = "/v1/admin/test-clocks/u_clocked/advance"
    for to in ("0001-01-01T00:00:00", "2031-01-01T00:00:00"):
        status, refused = await _staff(
            http, billing, "POST", path, body={"to": to, "reason": "a time without its zone"}
        )
        assert status == 422, (to, status, refused)
        assert refused["error"]["details"][0]["field"] == "to"


async def test_a_nul_character_is_a_422_not_an_unaudited_write(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    sub_id = await subscribe_with_elements(http, billing, "u_nul")

    # Postgres text cannot hold U+0000: refused before anything is done in Stripe.
    status, refused = await _staff(
        http,
        billing,
        "POST",
        f"/v1/admin/subscriptions/{sub_id}/cancel",
        body={"at_period_end": True, "reason": "asked\x00 by phone"},
    )
    assert status == 422, refused
    assert refused["error"]["details"][0]["field"] == "reason"
    assert (
        await stripe_client.v1.subscriptions.retrieve_async(sub_id)
    ).cancel_at_period_end is False

    for path, params in (
        ("/v1/admin/subscriptions", {"status": "active\x00"}),
        ("/v1/admin/subscriptions", {"plan": "hot\x00desk"}),
        ("/v1/admin/customers", {"email": "u_nul\x00@example.com"}),
    ):
        status, refused = await _staff(http, billing, "GET", path, params=params)
        assert status == 422, (path, params, refused)
        assert refused["error"]["details"][0]["field"] == next(iter(params))


async def test_a_staff_cancel_that_cannot_be_audited_cancels_nothing_in_stripe(
    billing: Billing,
    http: aiohttp.ClientSession,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    # Every staff write is audited: when the entry cannot be written, Stripe
    # must not have ended the member's subscription either.
    sub_id = await subscribe_with_elements(http, billing, "u_unaudited")
    path = f"/v1/admin/subscriptions/{sub_id}/cancel"
    body = {"at_period_end": False, "reason": "member asked by phone"}

    async with refusing(db, "subscriptions.audit_log", "INSERT"):
        status, refused = await _staff(http, billing, "POST", path, body=body)

    assert status >= 500 and set(refused) == {"error"}, refused
    assert (await stripe_client.v1.subscriptions.retrieve_async(sub_id)).status == "active"

    # Once the entry can be written, the cancel goes ahead: one entry, settled.
    status, canceled = await _staff(http, billing, "POST", path, body=body)
    assert (status, canceled["status"]) == (200, "canceled"), canceled
    assert (await stripe_client.v1.subscriptions.retrieve_async(sub_id)).status == "canceled"
    _, audit = await _staff(http, billing, "GET", "/v1/admin/audit", params={"target": sub_id})
    [entry] = audit["data"]
    assert (entry["action"], entry["reason"]) == ("subscription.cancel", "member asked by phone")
    assert entry["details"]["outcome"] == "applied"
    assert entry["details"]["status"] == ["active", "canceled"]


async def test_a_test_clock_advance_that_cannot_be_audited_moves_no_clock(
    billing: Billing,
    http: aiohttp.ClientSession,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    assert (await api(http, billing.gateway, "GET", "/v1/payment-methods", "u_tick"))[0] == 200
    clock_id = await db.fetchval(
        "SELECT test_clock_id FROM subscriptions.customers WHERE user_id = 'u_tick'"
    )
    before = (await stripe_client.v1.test_helpers.test_clocks.retrieve_async(clock_id)).frozen_time
    path = "/v1/admin/test-clocks/u_tick/advance"
    to = datetime.fromtimestamp(before, UTC) + timedelta(days=3)
    body = {"to": to.isoformat(), "reason": "trial end rehearsal"}

    async with refusing(db, "subscriptions.audit_log", "INSERT"):
        status, refused = await _staff(http, billing, "POST", path, body=body)

    assert status >= 500 and set(refused) == {"error"}, refused
    clock = await stripe_client.v1.test_helpers.test_clocks.retrieve_async(clock_id)
    assert clock.frozen_time == before

    status, advanced = await _staff(http, billing, "POST", path, body=body)
    assert status == 200, advanced
    clock = await stripe_client.v1.test_helpers.test_clocks.retrieve_async(clock_id)
    assert clock.frozen_time == int(to.timestamp())
    _, audit = await _staff(http, billing, "GET", "/v1/admin/audit", params={"target": "u_tick"})
    [entry] = audit["data"]
    assert (entry["action"], entry["details"]["outcome"]) == ("test_clock.advance", "applied")
