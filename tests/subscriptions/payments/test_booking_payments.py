"""Booking payments end to end: the gateway, the subscriptions service and the
Stripe sandbox, with Stripe's events coming back through the webhook path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe
from prometheus_client import REGISTRY

from shared.stripe_calls import stripe_json
from tests.subscriptions.payments.helpers import (
    MEMBER,
    OTHER,
    STAFF,
    Api,
    domain_events,
    item,
    until_applied,
    until_events,
)
from tests.support import stripe_objects as so
from tests.support.db_faults import refusing
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually


@pytest.fixture
def api(stripe_stack: Stack, http: aiohttp.ClientSession) -> Api:
    return Api(http, stripe_stack.gateway)


async def confirm(
    client: stripe.StripeClient, intent_id: str, card: str = "pm_card_visa"
) -> stripe.PaymentIntent:
    """What Stripe.js does in the member's browser with the client secret."""
    return await client.v1.payment_intents.confirm_async(intent_id, {"payment_method": card})


def metric(name: str, **labels: str) -> float:
    # The services run in the test's process: their metrics are in its registry.
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_products_are_listed_without_a_token(api: Api) -> None:
    async with api.http.get(f"{api.gateway}/v1/products") as response:
        assert response.status == 200
        listed = await response.json()
    by_key = {p["product"]: p for p in listed["data"]}
    assert by_key["meeting_room_hour"]["unit_amount"] == 2500
    assert by_key["meeting_room_hour"]["max_quantity"] == 100
    assert by_key["day_pass"]["max_quantity"] == 20


async def test_a_two_booking_cart_is_paid_end_to_end(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    cart = [
        # A client-sent price is ignored: the catalog says 2500 per hour.
        item("meeting_room_hour", 2, "room-3:2026-12-01T10", unit_amount=1, amount=1),
        item("day_pass", 1, "desk-day:2026-12-02"),
    ]
    status, created = await api.call(
        "POST", "/v1/payments", json={"items": cart, "amount": 1}, key="cart-1"
    )

    assert status == 201, created
    assert created["amount"] == 2 * 2500 + 3500 and created["currency"] == "usd"
    assert [(line["booking_ref"], line["amount"]) for line in created["lines"]] == [
        ("room-3:2026-12-01T10", 5000),
        ("desk-day:2026-12-02", 3500),
    ]
    assert created["client_secret"].startswith(created["payment_intent_id"])
    intent = await stripe_client.v1.payment_intents.retrieve_async(created["payment_intent_id"])
    assert intent.amount == 8500
    assert intent.metadata["payment_id"] == created["payment_id"]
    assert intent.metadata["user_id"] == MEMBER
    assert {intent.metadata["booking_ref_1"], intent.metadata["booking_ref_2"]} == {
        "room-3:2026-12-01T10",
        "desk-day:2026-12-02",
    }

    succeeded_before = metric("payments_outcomes_total", outcome="succeeded")
    collected_before = metric("payments_collected_minor_units_total", currency="usd")
    await confirm(stripe_client, intent.id)
    paid = await api.until_status(created["payment_id"], "succeeded")
    assert metric("payments_outcomes_total", outcome="succeeded") == succeeded_before + 1
    assert metric("payments_collected_minor_units_total", currency="usd") == collected_before + 8500

    assert paid["amount_paid"] == 8500 and paid["paid_at"] is not None
    assert paid["charge_id"] and paid["payment_intent_id"] == intent.id
    [event] = await until_events(db, "payment.succeeded")
    assert event["data"]["payment"]["payment_id"] == created["payment_id"]
    assert sorted(event["data"]["payment"]["booking_refs"]) == [
        "desk-day:2026-12-02",
        "room-3:2026-12-01T10",
    ]
    assert event["data"]["amount"] == 8500 and event["data"]["member"]["user_id"] == MEMBER
    assert event["data"]["products"] == {"meeting_room_hour": 2, "day_pass": 1}

    # The same request again is answered, not executed again.
    again_status, again = await api.call(
        "POST", "/v1/payments", json={"items": cart, "amount": 1}, key="cart-1"
    )
    assert (again_status, again["payment_id"]) == (201, created["payment_id"])
    # A paid booking cannot be paid again, whatever the key.
    status, refused = await api.pay([item("day_pass", 1, "desk-day:2026-12-02")], key="cart-2")
    assert status == 409
    assert refused["error"]["code"] == "booking_already_paid"
    assert {"field": "payment_id", "reason": created["payment_id"]} in refused["error"]["details"]


async def test_a_failed_card_then_paying_again(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    cart = [item("meeting_room_hour", 1, "room-1:2026-12-03T09")]
    status, first = await api.pay(cart, key="try-1")
    assert status == 201, first
    with pytest.raises(stripe.CardError):
        await confirm(
            stripe_client,
            first["payment_intent_id"],
            "pm_card_visa_chargeDeclinedInsufficientFunds",
        )
    failed = await api.until_status(first["payment_id"], "failed")
    assert failed["decline_code"] == "insufficient_funds"
    assert failed["failure_code"] == "card_declined"
    [event] = await until_events(db, "payment.failed")
    assert event["data"]["payment"]["booking_refs"] == ["room-1:2026-12-03T09"]
    assert event["data"]["decline_code"] == "insufficient_funds"

    status, second = await api.pay(cart, key="try-2")

    assert status == 201, second
    assert second["payment_id"] != first["payment_id"]
    # The failed intent cannot be completed any more: the booking is paid once.
    old = await stripe_client.v1.payment_intents.retrieve_async(first["payment_intent_id"])
    assert old.status == "canceled"
    await confirm(stripe_client, second["payment_intent_id"])
    await api.until_status(second["payment_id"], "succeeded")
    assert (await api.payment(first["payment_id"]))["status"] in ("failed", "canceled")
    # The failed payment had released its booking: no payment.canceled for it.
    await until_events(db, "payment.succeeded")
    assert await domain_events(db, "payment.canceled") == []


async def test_an_expired_checkout_releases_the_booking(
    api: Api, sandbox: SandboxProcess, db: asyncpg.Connection
) -> None:
    body = {
        "items": [item("day_pass", 2, "desk-day:2026-12-07")],
        "success_url": "http://localhost:5173/paid",
        "cancel_url": "http://localhost:5173/cart",
    }
    status, opened = await api.call("POST", "/v1/payments/checkout", json=body, key="co-1")
    assert status == 201, opened
    assert opened["amount"] == 7000 and opened["checkout_url"].startswith("http")
    status, held = await api.pay(body["items"], key="co-2")
    assert (status, held["error"]["code"]) == (409, "booking_already_paid")

    await sandbox.control("POST", f"/_sandbox/checkout/sessions/{opened['session_id']}/expire")

    expired = await api.until_status(opened["payment_id"], "expired")
    assert expired["checkout_session_id"] == opened["session_id"]
    [event] = await until_events(db, "payment.canceled")
    assert event["data"]["reason"] == "expired"
    assert event["data"]["payment"]["booking_refs"] == ["desk-day:2026-12-07"]
    status, again = await api.pay(body["items"], key="co-3")
    assert status == 201, again


async def test_checkout_pays_through_the_hosted_page(
    api: Api, sandbox: SandboxProcess, db: asyncpg.Connection
) -> None:
    body = {
        "items": [item("meeting_room_hour", 3, "room-2:2026-12-09T14")],
        "success_url": "http://127.0.0.1:8000/paid",
        "cancel_url": "http://127.0.0.1:8000/cart",
    }
    status, opened = await api.call("POST", "/v1/payments/checkout", json=body)
    assert status == 201, opened

    await sandbox.control(
        "POST", f"/_sandbox/checkout/sessions/{opened['session_id']}/complete", {}
    )

    paid = await api.until_status(opened["payment_id"], "succeeded")
    assert paid["amount_paid"] == 7500 and paid["payment_intent_id"]
    [event] = await until_events(db, "payment.succeeded")
    assert event["data"]["payment"]["booking_refs"] == ["room-2:2026-12-09T14"]


async def test_checkout_redirects_must_be_on_the_allow_list(api: Api) -> None:
    body = {
        "items": [item("day_pass", 1, "desk-day:2026-12-08")],
        "success_url": "https://evil.example.com/phish",
        "cancel_url": "http://localhost:5173/cart",
    }
    status, refused = await api.call("POST", "/v1/payments/checkout", json=body)
    assert status == 422
    assert refused["error"]["details"][0]["field"] == "success_url"


async def test_two_concurrent_payments_for_one_booking_give_one_409(api: Api) -> None:
    cart = [item("meeting_room_hour", 1, "room-9:2026-12-04T11")]

    answers = await asyncio.gather(*(api.pay(cart, key=f"race-{n}") for n in range(6)))

    statuses = sorted(status for status, _ in answers)
    assert statuses == [201, 409, 409, 409, 409, 409], answers
    winner = next(body for status, body in answers if status == 201)
    for status, body in answers:
        if status == 409:
            assert {"field": "payment_id", "reason": winner["payment_id"]} in body["error"][
                "details"
            ]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"product": "jetpack"}, "items.0.product"),
        ({"quantity": 0}, "items.0.quantity"),
        ({"quantity": 21}, "items.0.quantity"),  # day_pass: at most 20
        ({"booking_ref": "no spaces allowed"}, "items.0.booking_ref"),
        ({"booking_ref": "x" * 65}, "items.0.booking_ref"),
    ],
)
async def test_a_bad_item_is_a_422_naming_the_field(
    api: Api, bad: dict[str, Any], field: str
) -> None:
    status, refused = await api.pay([{**item("day_pass", 1, "desk-day:2026-12-10"), **bad}])
    assert status == 422, refused
    assert field in [d["field"] for d in refused["error"]["details"]]


async def test_refunds_partial_partial_then_too_much(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    status, created = await api.pay([item("meeting_room_hour", 4, "room-4:2026-12-05T09")])
    assert status == 201, created
    await confirm(stripe_client, created["payment_intent_id"])
    await api.until_status(created["payment_id"], "succeeded")
    pid = created["payment_id"]

    status, refused = await api.refund(pid, 1000, role="member")
    assert status == 403, refused
    status, first = await api.refund(pid, 3000, key="refund-1")
    assert status == 201, first
    assert (first["amount"], first["remaining"]) == (3000, 7000)
    status, replayed = await api.refund(pid, 3000, key="refund-1")
    assert (status, replayed["refund_id"]) == (201, first["refund_id"])  # not refunded twice
    await api.until_status(pid, "partially_refunded")
    status, second = await api.refund(pid, 5000, key="refund-2")
    assert (status, second["remaining"]) == (201, 2000)
    status, third = await api.refund(pid, 2001, key="refund-3")
    assert status == 422, third
    assert third["error"]["details"][0]["field"] == "amount"

    settled = await api.until_status(pid, "partially_refunded")
    assert settled["amount_refunded"] in (3000, 8000)
    events = await until_events(db, "payment.refunded", 2)
    assert [e["data"]["total_refunded"] for e in events] == [3000, 8000]
    assert [e["data"]["full"] for e in events] == [False, False]
    status, rest = await api.refund(pid, None, key="refund-4")
    assert (status, rest["amount"], rest["remaining"]) == (201, 2000, 0)
    done = await api.until_status(pid, "refunded")
    assert done["amount_refunded"] == 10000
    last = (await until_events(db, "payment.refunded", 3))[-1]["data"]
    assert (last["amount_refunded"], last["full"]) == (2000, True)

    status, audit = await api.call(
        "GET", "/v1/admin/audit", user="admin_al", role="admin", params={"target": pid}
    )
    assert status == 200, audit
    assert len(audit["data"]) == 3
    assert {e["actor_id"] for e in audit["data"]} == {STAFF}
    assert {e["reason"] for e in audit["data"]} == {"room was double-booked"}


async def test_a_webhook_before_the_create_call_returned(
    api: Api, sandbox: SandboxProcess, stripe_client: stripe.StripeClient
) -> None:
    # Stripe creates the intent (and sends its events) but its answer is late;
    # meanwhile the member's browser confirms it and payment_intent.succeeded lands.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "late_answer", "delay_ms": 8000, "path_prefix": "/v1/payment_intents"},
    )
    creating = asyncio.ensure_future(
        api.pay([item("day_pass", 1, "desk-day:2026-12-11")], key="late-1")
    )

    async def the_intent() -> Any:
        # Through the events API: the intents API's answers are the ones held back.
        listed = await stripe_client.v1.events.list_async({"type": "payment_intent.created"})
        return next((e.data.object for e in listed.data), None)

    intent = None
    while intent is None:
        await asyncio.sleep(0.05)
        intent = await the_intent()
    await confirm(stripe_client, intent["id"])
    early = await api.until_status(intent["metadata"]["payment_id"], "succeeded", timeout=6)
    assert early["payment_intent_id"] == intent["id"]
    assert not creating.done()  # the state was right before the create call returned

    status, created = await creating

    assert status == 201, created
    assert created["payment_intent_id"] == intent["id"]
    paid = await api.until_status(created["payment_id"], "succeeded")
    assert paid["amount_paid"] == 3500


async def test_members_see_only_their_own_payments(
    api: Api, stripe_client: stripe.StripeClient
) -> None:
    status, mine = await api.pay([item("day_pass", 1, "desk-day:2026-12-12")])
    assert status == 201, mine
    status, theirs = await api.pay([item("day_pass", 1, "desk-day:2026-12-13")], user=OTHER)
    assert status == 201, theirs

    status, hidden = await api.call("GET", f"/v1/payments/{theirs['payment_id']}")
    assert (status, hidden["error"]["code"]) == (404, "not_found")
    status, listed = await api.call("GET", "/v1/payments")
    assert [p["id"] for p in listed["data"]] == [mine["payment_id"]]
    status, by_ref = await api.call(
        "GET", "/v1/payments", params={"booking_ref": "desk-day:2026-12-13"}
    )
    assert (status, by_ref["data"]) == (200, [])
    status, found = await api.call(
        "GET", "/v1/payments", user=OTHER, params={"booking_ref": "desk-day:2026-12-13"}
    )
    assert [p["id"] for p in found["data"]] == [theirs["payment_id"]]
    # Staff see everyone's.
    status, seen = await api.call(
        "GET", f"/v1/payments/{theirs['payment_id']}", user=STAFF, role="staff"
    )
    assert (status, seen["user_id"]) == (200, OTHER)
    status, refused = await api.call("GET", "/v1/admin/payments")
    assert status == 403, refused


async def test_a_booking_held_by_another_member_does_not_name_their_payment(
    api: Api, stripe_client: stripe.StripeClient
) -> None:
    # A booking ref names a slot (a room, a desk on a day): one payment holds
    # it, whoever pays. The 409 tells a member the slot is taken, but another
    # member's payment id is theirs alone, like every other read of it.
    cart = [item("day_pass", 1, "desk-day:2026-12-14")]
    status, theirs = await api.pay(cart, user=OTHER, key="held-1")
    assert status == 201, theirs

    status, refused = await api.pay(cart, key="held-2")
    assert (status, refused["error"]["code"]) == (409, "booking_already_paid")
    assert theirs["payment_id"] not in str(refused)
    assert {"field": "booking_ref", "reason": "desk-day:2026-12-14"} in refused["error"]["details"]

    # Their own second request still names the payment that holds it.
    status, own = await api.pay(cart, user=OTHER, key="held-3")
    assert status == 409
    assert {"field": "payment_id", "reason": theirs["payment_id"]} in own["error"]["details"]


async def test_the_processing_fee_setting(
    sandbox: SandboxProcess, clean_state: None, http: aiohttp.ClientSession
) -> None:
    fees = {"payments_processing_fee_minor": 30, "payments_processing_fee_bps": 290}
    running = await start_stack(stripe_api_base=sandbox.url, subscriptions=fees)
    try:
        api = Api(http, running.gateway)
        status, created = await api.pay([item("meeting_room_hour", 1, "room-8:2026-12-15T10")])
    finally:
        await running.stop()
    assert status == 201, created
    assert created["amount"] == 2500 + 30 + 73
    assert created["lines"][-1] == {
        "product": "processing_fee",
        "name": "Processing fee",
        "booking_ref": None,
        "quantity": 1,
        "unit_amount": 103,
        "amount": 103,
    }


async def test_a_member_cancels_a_payment_not_paid_yet(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    cart = [item("meeting_room_hour", 1, "room-6:2026-12-16T15")]
    status, created = await api.pay(cart)
    assert status == 201, created
    path = f"/v1/payments/{created['payment_id']}/cancel"

    status, hidden = await api.call("POST", path, user=OTHER)
    assert status == 404, hidden
    # Staff do not cancel for members (their writes are refunds, with a reason).
    status, hidden = await api.call("POST", path, user=STAFF, role="staff")
    assert status == 404, hidden
    status, _ = await api.call("POST", path, key="cancel-1")
    assert status == 200

    await api.until_status(created["payment_id"], "canceled")
    [event] = await until_events(db, "payment.canceled")
    assert event["data"]["reason"] == "canceled"
    assert event["data"]["payment"]["booking_refs"] == ["room-6:2026-12-16T15"]
    intent = await stripe_client.v1.payment_intents.retrieve_async(created["payment_intent_id"])
    assert intent.status == "canceled"
    status, again = await api.pay(cart)
    assert status == 201, again
    await confirm(stripe_client, again["payment_intent_id"])
    await api.until_status(again["payment_id"], "succeeded")
    status, refused = await api.call("POST", f"/v1/payments/{again['payment_id']}/cancel")
    assert (status, refused["error"]["code"]) == (409, "not_cancelable")


async def test_cancelling_a_checkout_expires_its_session(
    api: Api, stripe_client: stripe.StripeClient
) -> None:
    body = {
        "items": [item("day_pass", 1, "desk-day:2026-12-17")],
        "success_url": "http://localhost:5173/paid",
        "cancel_url": "http://localhost:5173/cart",
    }
    status, opened = await api.call("POST", "/v1/payments/checkout", json=body)
    assert status == 201, opened

    status, _ = await api.call("POST", f"/v1/payments/{opened['payment_id']}/cancel")

    assert status == 200
    await api.until_status(opened["payment_id"], "expired")
    session = await stripe_client.v1.checkout.sessions.retrieve_async(opened["session_id"])
    assert session.status == "expired"


async def test_a_refund_that_fails_gives_the_amount_back(
    api: Api, sandbox: SandboxProcess, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    status, created = await api.pay([item("meeting_room_hour", 2, "room-7:2026-12-18T09")])
    assert status == 201, created
    await confirm(stripe_client, created["payment_intent_id"], "pm_card_refundFail")
    pid = created["payment_id"]
    await api.until_status(pid, "succeeded")
    status, refund = await api.refund(pid, 2000, key="fail-1")
    assert status == 201, refund
    await api.until_status(pid, "partially_refunded")
    refunded = metric("payments_refunded_minor_units_total", currency="usd")
    refund_failed = metric("payments_refund_failed_minor_units_total", currency="usd")

    # The card network gives the money back: the refund failed after looking succeeded.
    await sandbox.control(
        "POST", f"/_sandbox/refunds/{refund['refund_id']}/settle", {"outcome": "failed"}
    )

    back = await api.until_status(pid, "succeeded")
    assert back["amount_refunded"] == 0
    [announced] = await until_events(db, "payment.refunded")
    assert announced["data"]["refund_id"] == refund["refund_id"]
    # The failure is announced too, once, so the credits it took come back.
    [failed] = await until_events(db, "payment.refund_failed")
    data = failed["data"]
    assert (data["refund_id"], data["status"], data["failure_reason"]) == (
        refund["refund_id"],
        "failed",
        "expired_or_canceled_card",
    )
    assert (data["amount_refunded"], data["total_refunded"], data["amount"]) == (2000, 0, 5000)
    assert data["payment"]["payment_id"] == pid
    # A counter never goes down: the failed amount is counted apart, and the
    # net refunded is one minus the other.
    assert metric("payments_refunded_minor_units_total", currency="usd") == refunded
    assert (
        metric("payments_refund_failed_minor_units_total", currency="usd") - refund_failed == 2000
    )
    # What is left to refund is the whole amount again.
    status, again = await api.refund(pid, None, key="fail-2")
    assert (status, again["amount"], again["remaining"]) == (201, 5000, 0), again
    await api.until_status(pid, "refunded")
    assert len(await domain_events(db, "payment.refund_failed")) == 1


async def test_a_full_refund_retried_after_stripe_answered_too_late_is_the_same_refund(
    sandbox: SandboxProcess,
    clean_state: None,
    http: aiohttp.ClientSession,
    stripe_client: stripe.StripeClient,
) -> None:
    # Stripe makes the refund (and sends charge.refunded) but its answer comes
    # too late and the call policy's retry meets an outage: staff see a 503
    # and send the same request again, with the same key.
    patience = {"stripe_timeout_seconds": 1.0, "stripe_call_attempts": 2}
    running = await start_stack(stripe_api_base=sandbox.url, subscriptions=patience)
    try:
        await sandbox.deliver_to(f"{running.gateway}/webhooks/stripe")
        api = Api(http, running.gateway)
        status, created = await api.pay([item("day_pass", 2, "desk-day:2026-12-19")])
        assert status == 201, created
        await confirm(stripe_client, created["payment_intent_id"])
        pid = created["payment_id"]
        await api.until_status(pid, "succeeded")
        await sandbox.control(
            "POST",
            "/_sandbox/faults",
            {"kind": "late_answer", "count": 1, "delay_ms": 2500, "path_prefix": "/v1/refunds"},
        )
        await sandbox.control(
            "POST",
            "/_sandbox/faults",
            {"kind": "server_error", "count": 1, "path_prefix": "/v1/refunds"},
        )

        status, lost = await api.refund(pid, None, key="refund-all")
        assert status == 503, lost
        # Stripe did refund it all; the payment says so once charge.refunded is in.
        await api.until_status(pid, "refunded")
        [made] = (
            await stripe_client.v1.refunds.list_async(
                {"payment_intent": created["payment_intent_id"]}
            )
        ).data
        await asyncio.sleep(3)  # the late answers are gone

        status, again = await api.refund(pid, None, key="refund-all")

        assert status == 201, again
        assert (again["refund_id"], again["amount"], again["remaining"]) == (made.id, 7000, 0)
        # The staff write is in the audit log, once.
        status, audit = await api.call(
            "GET", "/v1/admin/audit", user="admin_al", role="admin", params={"target": pid}
        )
        assert status == 200, audit
        assert [e["action"] for e in audit["data"]] == ["payment.refund"]
        assert audit["data"][0]["actor_id"] == STAFF
        # Nothing more was refunded.
        listed = await stripe_client.v1.refunds.list_async(
            {"payment_intent": created["payment_intent_id"]}
        )
        assert [r.id for r in listed.data] == [made.id]
    finally:
        await running.stop()


async def test_a_declined_payment_paid_again_stays_failed_in_the_history(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    cart = [item("meeting_room_hour", 1, "room-1:2026-12-20T09")]
    status, first = await api.pay(cart, key="decline-1")
    assert status == 201, first
    with pytest.raises(stripe.CardError):
        await confirm(stripe_client, first["payment_intent_id"], "pm_card_chargeDeclined")
    await api.until_status(first["payment_id"], "failed")
    status, second = await api.pay(cart, key="decline-2")
    assert status == 201, second
    await confirm(stripe_client, second["payment_intent_id"])
    await api.until_status(second["payment_id"], "succeeded")

    # The declined payment's intent was canceled so it cannot be paid as
    # well; once that event is in, the payment is still the decline it was.
    async def old_intent() -> Any:
        return await db.fetchval(
            "SELECT intent_status FROM subscriptions.payments WHERE id = $1", first["payment_id"]
        )

    await eventually(old_intent, until=lambda s: s == "canceled", what="the cancel applied")
    assert (await api.payment(first["payment_id"]))["status"] == "failed"
    status, summary = await api.call("GET", "/v1/admin/payments/summary", user=STAFF, role="staff")
    assert status == 200, summary
    assert (summary["succeeded"]["count"], summary["failed"]["count"]) == (1, 1), summary
    assert summary["success_rate"] == 0.5
    status, failed = await api.call(
        "GET", "/v1/admin/payments", user=STAFF, role="staff", params={"status": "failed"}
    )
    assert [p["id"] for p in failed["data"]] == [first["payment_id"]]


async def test_a_failed_refund_gives_the_amount_back_when_events_leave_refunds_out(
    api: Api,
    *,
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # Current API versions leave a charge's refunds out of its events (the
    # list is only there when expanded): Stripe's events are sent here as
    # Stripe sends them, without it.
    status, created = await api.pay([item("meeting_room_hour", 2, "room-7:2026-12-21T09")])
    assert status == 201, created
    await confirm(stripe_client, created["payment_intent_id"], "pm_card_refundFail")
    pid = created["payment_id"]
    charge_id = (await api.until_status(pid, "succeeded"))["charge_id"]
    await sandbox.control("POST", "/_sandbox/delivery", {"paused": True})

    async def deliver(event_type: str, obj: dict[str, Any]) -> None:
        status, answer = await post_event(http, stripe_stack.gateway, so.event(event_type, obj))
        assert status == 200, answer

    status, refund = await api.refund(pid, 2000, key="unlisted-1")
    assert status == 201, refund
    charge = stripe_json(await stripe_client.v1.charges.retrieve_async(charge_id))
    del charge["refunds"]
    await deliver("charge.refunded", charge)
    await api.until_status(pid, "partially_refunded")
    refunded = metric("payments_refunded_minor_units_total", currency="usd")
    refund_failed = metric("payments_refund_failed_minor_units_total", currency="usd")

    # The card network gives the money back: the refund failed after looking succeeded.
    await sandbox.control(
        "POST", f"/_sandbox/refunds/{refund['refund_id']}/settle", {"outcome": "failed"}
    )
    failed = stripe_json(await stripe_client.v1.refunds.retrieve_async(refund["refund_id"]))
    assert failed["status"] == "failed"
    await deliver("charge.refund.updated", failed)

    back = await api.until_status(pid, "succeeded")
    assert back["amount_refunded"] == 0
    # The same failure delivered again (Stripe's retry): announced once.
    await deliver("charge.refund.updated", failed)
    await until_applied(db, "charge.refund.updated", 2)
    status, again = await api.refund(pid, None, key="unlisted-2")
    assert (status, again["amount"], again["remaining"]) == (201, 5000, 0), again
    [announced] = await domain_events(db, "payment.refund_failed")
    assert announced["data"]["refund_id"] == refund["refund_id"]
    # Its amount counted once too.
    assert metric("payments_refunded_minor_units_total", currency="usd") == refunded
    assert (
        metric("payments_refund_failed_minor_units_total", currency="usd") - refund_failed == 2000
    )


async def test_a_payment_given_up_on_a_lost_answer_stays_released(
    sandbox: SandboxProcess,
    clean_state: None,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # Without an Idempotency-Key a request that could not reach Stripe gives
    # its payment up and frees the booking. Here Stripe did make the intent
    # (its answer came too late, the retry met an outage), and its
    # payment_intent.created arrives afterwards.
    patience = {"stripe_timeout_seconds": 1.0, "stripe_call_attempts": 2}
    running = await start_stack(stripe_api_base=sandbox.url, subscriptions=patience)
    try:
        await sandbox.deliver_to(f"{running.gateway}/webhooks/stripe")
        api = Api(http, running.gateway)
        for fault in (
            {"kind": "late_answer", "count": 1, "delay_ms": 2500},
            {"kind": "server_error", "count": 1},
        ):
            await sandbox.control(
                "POST", "/_sandbox/faults", {**fault, "path_prefix": "/v1/payment_intents"}
            )
        cart = [item("day_pass", 1, "desk-day:2026-12-22")]
        await sandbox.control("POST", "/_sandbox/delivery", {"paused": True})

        status, lost = await api.pay(cart)
        assert status == 503, lost
        [given_up] = (await api.call("GET", "/v1/payments"))[1]["data"]
        assert given_up["status"] == "canceled"
        await sandbox.control("POST", "/_sandbox/delivery", {"paused": False})

        async def intent_known() -> Any:
            return await db.fetchval(
                "SELECT stripe_payment_intent_id FROM subscriptions.payments WHERE id = $1",
                given_up["id"],
            )

        await eventually(intent_known, until=lambda i: i is not None, what="the late intent")
        await asyncio.sleep(3)  # the late answer is gone

        # The intent nobody can confirm does not take the booking back.
        assert (await api.payment(given_up["id"]))["status"] == "canceled"
        status, again = await api.pay(cart)
        assert status == 201, again
    finally:
        await running.stop()


async def test_a_refund_that_cannot_be_audited_refunds_nothing(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    # Every staff write is audited: when the entry cannot be written, no
    # money may have gone back to the card either.
    status, created = await api.pay([item("meeting_room_hour", 2, "room-9:2026-12-07T09")])
    assert status == 201, created
    await confirm(stripe_client, created["payment_intent_id"])
    pid = created["payment_id"]
    await api.until_status(pid, "succeeded")

    async with refusing(db, "subscriptions.audit_log", "INSERT"):
        status, refused = await api.refund(pid, 1000, key="unaudited-1")

    assert status >= 500 and set(refused) == {"error"}, refused
    listed = await stripe_client.v1.refunds.list_async(
        {"payment_intent": created["payment_intent_id"]}
    )
    assert listed.data == []

    # Retried once the entry can be written: refunded, with one settled entry.
    status, refund = await api.refund(pid, 1000, key="unaudited-1")
    assert (status, refund["amount"]) == (201, 1000), refund
    status, replayed = await api.refund(pid, 1000, key="unaudited-1")
    assert (status, replayed["refund_id"]) == (201, refund["refund_id"])
    entries = await db.fetch(
        "SELECT * FROM subscriptions.audit_log WHERE action = 'payment.refund'"
    )
    assert len(entries) == 1, entries
    details = json.loads(entries[0]["details"])
    assert details["outcome"] == "refunded"
    assert (details["refund_id"], details["amount"]) == (refund["refund_id"], 1000)


async def test_a_refund_retried_after_failing_half_way_keeps_one_audit_entry(
    api: Api, stripe_client: stripe.StripeClient, db: asyncpg.Connection
) -> None:
    status, created = await api.pay([item("meeting_room_hour", 2, "room-9:2026-12-08T09")])
    assert status == 201, created
    await confirm(stripe_client, created["payment_intent_id"])
    pid = created["payment_id"]
    await api.until_status(pid, "succeeded")

    # Stripe refunds, then the database fails to record it: the entry stays pending.
    async with refusing(db, "subscriptions.payment_refunds", "INSERT"):
        status, failed = await api.refund(pid, 1000, key="half-way-1")
    assert status >= 500 and set(failed) == {"error"}, failed
    [pending] = await db.fetch("SELECT * FROM subscriptions.audit_log")
    assert json.loads(pending["details"])["outcome"] == "pending"

    status, refund = await api.refund(pid, 1000, key="half-way-1")
    assert (status, refund["amount"]) == (201, 1000), refund
    listed = await stripe_client.v1.refunds.list_async(
        {"payment_intent": created["payment_intent_id"]}
    )
    assert [r.id for r in listed.data] == [refund["refund_id"]]
    [entry] = await db.fetch("SELECT * FROM subscriptions.audit_log")
    details = json.loads(entry["details"])
    assert (details["outcome"], details["refund_id"]) == ("refunded", refund["refund_id"])
