"""The member API through the gateway, against the sandbox: plans, cards,
subscribing, checkout, invoices, entitlements, and the errors of each."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import asyncpg
import stripe

from tests.subscriptions.conftest import Billing
from tests.subscriptions.helpers import api, confirm_in_browser, subscription_row, token
from tests.support.waiting import eventually


async def _active(http: aiohttp.ClientSession, billing: Billing, user: str) -> dict[str, object]:
    async def entitlements() -> dict[str, object]:
        return (await api(http, billing.gateway, "GET", "/v1/entitlements/me", user))[1]

    return await eventually(entitlements, until=lambda e: e["active"], what=f"{user} active")


async def subscribe_with_elements(
    http: aiohttp.ClientSession, billing: Billing, user: str, plan: str = "dedicated_desk"
) -> str:
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        user,
        body={"plan": plan, "interval": "month"},
        email=f"{user}@example.com",
    )
    assert status == 201, created
    assert created["status"] == "incomplete"
    assert created["client_secret_type"] == "payment_intent"
    confirmed, _ = await confirm_in_browser(http, billing.sandbox.url, created["client_secret"])
    assert confirmed == 200
    await _active(http, billing, user)
    return str(created["id"])


async def test_plans_are_public_and_a_token_shows_eligibility_prices(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    status, anonymous = await api(http, billing.gateway, "GET", "/v1/plans", None)
    assert status == 200
    hot = next(p for p in anonymous["data"] if p["key"] == "hot_desk")
    assert {(p["interval"], p["amount"]) for p in hot["prices"]} == {
        ("month", 19900),
        ("year", 199000),
    }
    assert hot["credits"]["meeting_room_hours"] == 10 and hot["trial_days"] == 14
    _, partner = await api(http, billing.gateway, "GET", "/v1/plans", "u_partner", tier="partner")
    hot = next(p for p in partner["data"] if p["key"] == "hot_desk")
    assert {
        "interval": "month",
        "amount": 15900,
        "currency": "usd",
        "lookup_key": "hot_desk_partner_monthly",
        "eligibility": "partner",
    } in hot["prices"]


async def test_subscribe_confirm_with_elements_and_a_second_is_refused(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub_id = await subscribe_with_elements(http, billing, "u_ada")

    status, mine = await api(http, billing.gateway, "GET", "/v1/subscriptions/me", "u_ada")
    assert status == 200 and mine["id"] == sub_id
    assert (mine["plan"], mine["interval"], mine["amount"]) == ("dedicated_desk", "month", 34900)
    _, entitlements = await api(http, billing.gateway, "GET", "/v1/entitlements/me", "u_ada")
    assert entitlements["features"][0] == "Your own desk"
    assert entitlements["credits"]["meeting_room_hours"] == 25
    assert entitlements["access_until"] == mine["current_period_end"]

    status, again = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_ada",
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 409 and again["error"]["code"] == "subscription_exists"

    invoices = await eventually(
        lambda: api(http, billing.gateway, "GET", "/v1/invoices", "u_ada"),
        until=lambda answer: answer[1]["data"] and answer[1]["data"][0]["status"] == "paid",
        what="the paid invoice listed",
    )
    invoice = invoices[1]["data"][0]
    assert invoice["amount_paid"] == 34900 and invoice["currency"] == "usd"
    assert invoice["hosted_invoice_url"] and invoice["invoice_pdf"]
    row = await subscription_row(db, sub_id)
    assert row is not None and row["user_id"] == "u_ada"


async def test_a_saved_card_that_declines_is_a_402_with_the_decline_code(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    status, setup = await api(http, billing.gateway, "POST", "/v1/payment-methods/setup", "u_bo")
    assert status == 201, setup
    confirmed, intent = await confirm_in_browser(
        http, billing.sandbox.url, setup["client_secret"], "pm_card_chargeCustomerFail"
    )
    assert confirmed == 200, intent
    _, methods = await api(http, billing.gateway, "GET", "/v1/payment-methods", "u_bo")
    [card] = methods["data"]
    status, made_default = await api(
        http, billing.gateway, "POST", f"/v1/payment-methods/{card['id']}/default", "u_bo"
    )
    assert status == 200 and made_default["default"] is True

    status, refused = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_bo",
        body={"plan": "private_office", "interval": "year"},
    )

    assert status == 402, refused
    assert refused["error"]["decline_code"] == "generic_decline"


async def test_request_errors_name_the_field(billing: Billing, http: aiohttp.ClientSession) -> None:
    status, unknown = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_err",
        body={"plan": "castle", "interval": "month"},
    )
    assert status == 422 and unknown["error"]["details"][0]["field"] == "plan"
    status, bad_interval = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_err",
        body={"plan": "hot_desk", "interval": "week"},
    )
    assert status == 422 and bad_interval["error"]["details"][0]["field"] == "interval"
    status, no_year = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/checkout/sessions",
        "u_err",
        body={
            "plan": "hot_desk",
            "interval": "year",
            "promotion_code": "NOPE",
            "success_url": "http://localhost:3000/ok",
            "cancel_url": "http://localhost:3000/no",
        },
    )
    assert status == 422 and no_year["error"]["details"][0]["field"] == "promotion_code"
    async with http.post(
        f"{billing.gateway}/v1/subscriptions",
        data=b"{not json",
        headers={
            "Authorization": f"Bearer {token('u_err')}",
            "Content-Type": "application/json",
        },
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"


async def test_checkout_redirects_only_to_allowed_origins_and_reports_the_real_outcome(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    body = {
        "plan": "hot_desk",
        "interval": "month",
        "success_url": "https://evil.example/ok",
        "cancel_url": "http://localhost:5173/no",
    }
    status, refused = await api(
        http, billing.gateway, "POST", "/v1/checkout/sessions", "u_cy", body=body
    )
    assert status == 422 and refused["error"]["details"][0]["field"] == "success_url"

    body["success_url"] = "http://127.0.0.1:8000/ok"
    status, session = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/checkout/sessions",
        "u_cy",
        body=body,
        idempotency_key="checkout-1",
    )
    assert status == 201, session
    assert session["checkout_url"] and session["session_id"].startswith("cs_")
    path = f"/v1/checkout/sessions/{session['session_id']}"
    _, outcome = await api(http, billing.gateway, "GET", path, "u_cy")
    assert outcome["status"] == "open" and outcome["subscription_id"] is None

    await billing.sandbox.control(
        "POST",
        f"/_sandbox/checkout/sessions/{session['session_id']}/complete",
        {"payment_method": "pm_card_visa"},
    )
    _, outcome = await api(http, billing.gateway, "GET", path, "u_cy")
    assert outcome["status"] == "complete" and outcome["subscription_id"].startswith("sub_")
    # Trialing first (hot desk has a trial): access now, the trial's credits.
    entitlements = await _active(http, billing, "u_cy")
    assert entitlements["status"] == "trialing"
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT status, stripe_subscription_id FROM subscriptions.checkout_sessions"
            " WHERE stripe_session_id = $1",
            session["session_id"],
        ),
        until=lambda r: r["status"] == "complete",
        what="the checkout.session.completed event applied",
    )
    assert row["stripe_subscription_id"] == outcome["subscription_id"]


async def test_an_abandoned_checkout_expires(
    billing: Billing, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    body = {
        "plan": "private_office",
        "interval": "year",
        "success_url": "http://localhost/ok",
        "cancel_url": "http://localhost/no",
    }
    _, session = await api(
        http, billing.gateway, "POST", "/v1/checkout/sessions", "u_gone", body=body
    )
    await billing.sandbox.control(
        "POST", f"/_sandbox/checkout/sessions/{session['session_id']}/expire", {}
    )
    _, outcome = await api(
        http, billing.gateway, "GET", f"/v1/checkout/sessions/{session['session_id']}", "u_gone"
    )
    assert outcome["status"] == "expired" and outcome["subscription_id"] is None
    await eventually(
        lambda: db.fetchval(
            "SELECT status FROM subscriptions.checkout_sessions WHERE stripe_session_id = $1",
            session["session_id"],
        ),
        until=lambda status: status == "expired",
        what="the checkout.session.expired event applied",
    )
    assert (await api(http, billing.gateway, "GET", "/v1/subscriptions/me", "u_gone"))[0] == 404


async def test_the_billing_portal_and_idempotent_retries(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    status, _ = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/billing-portal/sessions",
        "u_di",
        body={"return_url": "https://elsewhere.example/"},
    )
    assert status == 422
    status, portal = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/billing-portal/sessions",
        "u_di",
        body={"return_url": "http://localhost:3000/account"},
    )
    assert status == 201 and portal["url"].startswith("http")

    first, second = await asyncio.gather(
        *(
            api(
                http,
                billing.gateway,
                "POST",
                "/v1/subscriptions",
                "u_di",
                body={"plan": "dedicated_desk", "interval": "month"},
                idempotency_key="sub-1",
            )
            for _ in range(2)
        )
    )
    answers = sorted([first, second], key=lambda a: a[0])
    # The same key: one subscription; the retry gets the first answer (or waits its turn).
    assert answers[0][0] == 201
    assert answers[1][0] in (201, 409)
    if answers[1][0] == 201:
        assert answers[1][1]["id"] == answers[0][1]["id"]
    status, replay = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_di",
        body={"plan": "dedicated_desk", "interval": "month"},
        idempotency_key="sub-1",
    )
    assert status == 201 and replay["id"] == answers[0][1]["id"]


async def test_a_trial_entitles_to_the_trials_credits_not_the_plans(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    status, created = await api(
        http,
        billing.gateway,
        "POST",
        "/v1/subscriptions",
        "u_trying",
        body={"plan": "hot_desk", "interval": "month"},
    )
    assert status == 201 and created["status"] == "trialing", created

    access = await _active(http, billing, "u_trying")

    # What subscription.activated granted for the trial (catalog.toml's
    # trial_credits), not the paid plan's allotment of 10 hours.
    assert access["status"] == "trialing"
    assert access["credits"] == {"meeting_room_hours": 2, "guest_passes": 0, "printing_pages": 20}


async def test_a_checkout_opened_in_another_tab_cannot_start_a_second_subscription(
    billing: Billing, http: aiohttp.ClientSession, stripe_client: stripe.StripeClient
) -> None:
    body = {
        "plan": "dedicated_desk",
        "interval": "month",
        "success_url": "http://localhost/ok",
        "cancel_url": "http://localhost/no",
    }
    sessions = []
    for _ in range(2):  # two tabs, before either is paid
        status, session = await api(
            http, billing.gateway, "POST", "/v1/checkout/sessions", "u_tabs", body=body
        )
        assert status == 201, session
        sessions.append(session["session_id"])

    for session_id in reversed(sessions):  # the member pays in both
        with contextlib.suppress(aiohttp.ClientResponseError):
            await billing.sandbox.control(
                "POST",
                f"/_sandbox/checkout/sessions/{session_id}/complete",
                {"payment_method": "pm_card_visa"},
            )

    customer = (await stripe_client.v1.checkout.sessions.retrieve_async(sessions[1])).customer
    subs = await stripe_client.v1.subscriptions.list_async(
        {"customer": str(customer), "status": "all"}
    )
    assert len(subs.data) == 1, [s.id for s in subs.data]
    first = await stripe_client.v1.checkout.sessions.retrieve_async(sessions[0])
    assert first.status == "expired"


async def test_a_double_click_opens_one_payable_checkout(
    billing: Billing, http: aiohttp.ClientSession
) -> None:
    body = {
        "plan": "dedicated_desk",
        "interval": "month",
        "success_url": "http://localhost/ok",
        "cancel_url": "http://localhost/no",
    }
    answers = await asyncio.gather(
        *(
            api(http, billing.gateway, "POST", "/v1/checkout/sessions", "u_clicks", body=body)
            for _ in range(3)
        )
    )
    opened = [answer["session_id"] for status, answer in answers if status == 201]
    assert opened, answers
    assert all(status in (201, 409) for status, _ in answers), answers

    paid = 0
    for session_id in opened:
        with contextlib.suppress(aiohttp.ClientResponseError):
            await billing.sandbox.control(
                "POST",
                f"/_sandbox/checkout/sessions/{session_id}/complete",
                {"payment_method": "pm_card_visa"},
            )
            paid += 1
    assert paid == 1, f"{paid} of {len(opened)} checkouts could be paid"
