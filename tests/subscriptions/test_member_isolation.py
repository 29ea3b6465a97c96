"""A member reading or acting on another member's records gets 404, never 403:
no route tells a stranger whether a record exists."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import api, subscription_row
from tests.subscriptions.test_member_api import subscribe_with_elements


async def test_another_members_records_are_404_on_every_member_route(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub_id = await subscribe_with_elements(http, billing, "u_owner")
    _, session = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/checkout/sessions",
        "u_owner2",
        body={
            "plan": "hot_desk",
            "interval": "month",
            "success_url": "http://localhost/ok",
            "cancel_url": "http://localhost/no",
        },
    )
    _, methods = await api(http, billing.gateway, "GET", "/v1/payment-methods", "u_owner")
    card = methods["data"][0]["id"]
    change = {"plan": "private_office", "interval": "month"}
    routes = [
        ("GET", f"/v1/subscriptions/{sub_id}", None),
        ("POST", f"/v1/subscriptions/{sub_id}/preview-change", change),
        ("PATCH", f"/v1/subscriptions/{sub_id}", change),
        ("POST", f"/v1/subscriptions/{sub_id}/cancel", {"at_period_end": True}),
        ("POST", f"/v1/subscriptions/{sub_id}/resume", None),
        ("GET", f"/v1/checkout/sessions/{session['session_id']}", None),
        ("POST", f"/v1/payment-methods/{card}/default", None),
    ]
    for method, path, body in routes:
        status, answer = await api(http, billing.gateway, method, path, "u_stranger", body=body)
        assert status == 404, (method, path, answer)
        assert answer["error"]["code"] == "not_found"
    # Lists and "me" routes show the caller's own records only: none here.
    assert (await api(http, billing.gateway, "GET", "/v1/subscriptions/me", "u_stranger"))[0] == 404
    _, invoices = await api(http, billing.gateway, "GET", "/v1/invoices", "u_stranger")
    assert invoices["data"] == []
    _, entitlements = await api(http, billing.gateway, "GET", "/v1/entitlements/me", "u_stranger")
    assert entitlements["active"] is False
    _, theirs = await api(http, billing.gateway, "GET", "/v1/payment-methods", "u_stranger")
    assert card not in [m["id"] for m in theirs["data"]]
    # Nothing changed for the owner.
    row = await subscription_row(db, sub_id)
    assert (
        row is not None and row["cancel_at_period_end"] is False and row["plan"] == "dedicated_desk"
    )
    status, mine = await api(http, billing.gateway, "GET", f"/v1/subscriptions/{sub_id}", "u_owner")
    assert status == 200 and mine["id"] == sub_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/subscriptions"),
        ("GET", "/v1/admin/customers/u_owner"),
        ("GET", "/v1/admin/revenue"),
        ("POST", "/v1/admin/test-clocks/u_owner/advance"),
    ],
)
async def test_staff_routes_are_refused_to_members(
    billing: Billing, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    status, _ = await api(http, billing.gateway, method, path, "u_member")
    assert status == 403
