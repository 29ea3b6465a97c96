"""Dunning against the sandbox on a test clock: the flows the issue names,
proved from the case, its attempts and the sandbox's record of charges."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe

from tests.gateway.helpers import admin
from tests.retry.helpers import (
    attempts_of,
    case_in,
    charges_of,
    fail_renewal,
    new_member,
    outbox_events,
    succeeded_charges,
)
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def test_a_failed_renewal_is_recovered_on_the_second_attempt(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    member = await new_member(stripe_client)
    # The renewal and our first attempt are declined; the second goes through.
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=2)

    case = await case_in(db, invoice_id, "recovered")
    assert case["close_reason"] == "attempt_succeeded"
    assert case["recovered_amount"] == 19900
    attempts = await attempts_of(db, invoice_id)
    assert [(a["outcome"], a["decline_code"]) for a in attempts] == [
        ("failed", "generic_decline"),
        ("succeeded", None),
    ]
    assert [a["amount"] for a in attempts] == [19900, 19900]
    invoice = await stripe_client.v1.invoices.retrieve_async(invoice_id)
    assert invoice.status == "paid"
    # The first charge of the subscription, and the recovery: nothing more.
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2
    recovered = await outbox_events(db, "dunning.recovered")
    assert [e["data"]["invoice_id"] for e in recovered] == [invoice_id]
    assert recovered[0]["data"]["member"]["user_id"] == "user_42"
    failed = await outbox_events(db, "dunning.attempt_failed")
    assert [e["data"]["attempt"] for e in failed] == [0, 1]
    assert failed[1]["data"]["next_attempt_at"] is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{dunning_stack.apps['retry'].url}/metrics") as response,
    ):
        exposed = await response.text()
    assert 'dunning_attempts_total{decline_code="generic_decline",outcome="failed"}' in exposed
    assert 'dunning_recovered_amount_total{currency="usd"}' in exposed


async def test_when_every_attempt_fails_the_end_action_runs_once(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=10)

    case = await case_in(db, invoice_id, "exhausted")
    assert case["end_action"] == "cancel_subscription"
    await _eventually_done(db, invoice_id)
    attempts = await attempts_of(db, invoice_id)
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "failed"]
    sub = await stripe_client.v1.subscriptions.retrieve_async(member.subscription_id)
    assert sub.status == "canceled"
    cancels = await sandbox.requests(f"/v1/subscriptions/{member.subscription_id}", method="DELETE")
    assert len(cancels) == 1
    assert len(await outbox_events(db, "dunning.exhausted")) == 1
    # The subscription's own deletion event arrives after: the case stays exhausted.
    await sandbox.flush()
    assert (await case_in(db, invoice_id, "exhausted"))["close_reason"] == "attempts_spent"
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 1


async def _eventually_done(db: asyncpg.Connection, invoice_id: str) -> dict[str, Any]:
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT * FROM retry.cases WHERE invoice_id = $1 AND end_action_done_at IS NOT NULL",
            invoice_id,
        ),
        what="the end action done",
    )
    return dict(row)


async def test_an_invoice_paid_by_hand_between_attempts_is_not_charged_again(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    retry_settings: dict[str, Any],
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=10)
    await case_in(db, invoice_id, "open")
    await stripe_client.v1.invoices.pay_async(
        invoice_id, params={"payment_method": "pm_card_mastercard"}
    )

    case = await case_in(db, invoice_id, "recovered")
    assert case["close_reason"] in ("invoice_paid", "attempt_succeeded")
    payments = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    ours = [r for r in payments if (r["idempotency_key"] or "").startswith("dunning-")]
    before = len(ours)
    # Nothing more happens however long we wait: the case is closed.
    await _quiet(retry_settings)
    payments = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert (
        len([r for r in payments if (r["idempotency_key"] or "").startswith("dunning-")]) == before
    )
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2


async def _quiet(settings: dict[str, Any]) -> None:
    # Longer than the whole schedule: any attempt still to come would have run.
    await asyncio.sleep(settings["dunning_max_delay_seconds"] * settings["dunning_max_attempts"])


@pytest.mark.usefixtures("attempts_on_demand")
async def test_a_subscription_canceled_between_attempts_is_not_charged(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    # The renewal and the first attempt are declined; the card works after that.
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=2)
    await case_in(db, invoice_id, "open")
    await _retry_now(http, dunning_stack, invoice_id)
    await eventually(
        lambda: attempts_of(db, invoice_id),
        until=lambda found: [a["outcome"] for a in found] == ["failed"],
        what="the first attempt declined",
    )
    # The member cancels, and we do not even hear of it (Stripe's events stop):
    # the next attempt's re-read must find it.
    await sandbox.stop_deliveries()
    await stripe_client.v1.subscriptions.cancel_async(member.subscription_id)
    before = await _request_ids(sandbox)
    await _retry_now(http, dunning_stack, invoice_id)

    case = await case_in(db, invoice_id, "canceled")
    assert case["close_reason"] in ("subscription_canceled", "invoice_void")
    # The re-read found it: the invoice, its subscription expanded; no payment.
    # (Whether the attempt also read the subscription alone is for the test
    # below: other services may read it here for the events before.)
    made = await _attempt_requests(sandbox, before)
    assert ("GET", f"/v1/invoices/{invoice_id}", True) in made
    assert not [m for m in made if m[0] == "POST"]
    attempts = await attempts_of(db, invoice_id)
    assert [(a["number"], a["outcome"]) for a in attempts] == [
        (1, "failed"),
        (2, "already_settled"),
    ]
    payments = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert {r["idempotency_key"] for r in payments} == {f"dunning-{invoice_id}-attempt-1"}
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 1


@pytest.mark.usefixtures("attempts_on_demand")
async def test_an_attempt_makes_two_stripe_requests(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    # Only the renewal is declined: our first attempt goes through.
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # Stripe's events stop, so the log holds only what the attempt asks.
    await sandbox.stop_deliveries()
    before = await _request_ids(sandbox)
    await _retry_now(http, dunning_stack, invoice_id)

    case = await case_in(db, invoice_id, "recovered")
    assert case["close_reason"] == "attempt_succeeded"
    # The re-read (the subscription expanded in it, not read on its own) and the
    # payment, nothing between them. (Other services may still read the
    # subscription for the events that came before: not the attempt's requests.)
    made = await _attempt_requests(sandbox, before)
    start = made.index(("GET", f"/v1/invoices/{invoice_id}", True))
    paid = made.index(("POST", f"/v1/invoices/{invoice_id}/pay", False))
    assert made[start : paid + 1] == [
        ("GET", f"/v1/invoices/{invoice_id}", True),
        ("POST", f"/v1/invoices/{invoice_id}/pay", False),
    ]
    assert made.count(("POST", f"/v1/invoices/{invoice_id}/pay", False)) == 1
    assert len(await succeeded_charges(stripe_client, member.customer_id)) == 2


async def _request_ids(sandbox: SandboxProcess) -> set[str]:
    return {r["request_id"] for r in await sandbox.requests()}


async def _attempt_requests(
    sandbox: SandboxProcess, before: set[str]
) -> list[tuple[str, str, bool]]:
    """The /v1 requests made since ``before``: method, path, subscription expanded."""
    return [
        (r["method"], r["path"], "parent.subscription_details.subscription" in r["query"])
        for r in await sandbox.requests()
        if r["request_id"] not in before
    ]


async def _retry_now(http: aiohttp.ClientSession, stack: Stack, invoice_id: str) -> None:
    status, body, _ = await admin(
        http,
        stack.gateway,
        "POST",
        f"/dunning/{invoice_id}/retry-now",
        data=b'{"reason": "test makes the attempt due"}',
    )
    assert status == 200, body


async def test_a_hard_decline_pauses_until_a_new_card_then_resumes_at_once(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    retry_settings: dict[str, Any],
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(
        stripe_client, sandbox, member, declines=10, decline_code="stolen_card"
    )
    case = await case_in(db, invoice_id, "paused")
    assert case["last_decline_code"] == "stolen_card"
    await _quiet(retry_settings)
    assert (await case_in(db, invoice_id, "paused"))["attempts"] == 1
    charges_before = len(await charges_of(stripe_client, member.customer_id))

    new_card = await stripe_client.v1.payment_methods.attach_async(
        "pm_card_mastercard", params={"customer": member.customer_id}
    )
    await stripe_client.v1.customers.update_async(
        member.customer_id, params={"invoice_settings": {"default_payment_method": new_card.id}}
    )

    case = await case_in(db, invoice_id, "recovered")
    attempts = await attempts_of(db, invoice_id)
    # The first attempt saw the renewal's hard decline on the same card and
    # made no charge; the second, on the new card, recovers.
    assert [(a["outcome"], a["decline_code"]) for a in attempts] == [
        ("skipped", "stolen_card"),
        ("succeeded", None),
    ]
    assert len(await charges_of(stripe_client, member.customer_id)) == charges_before + 1
    # The member heard of the failure when the case opened; the skip, which
    # tried no payment, published nothing of its own.
    failed = await outbox_events(db, "dunning.attempt_failed")
    assert [e["data"]["attempt"] for e in failed] == [0]


async def test_a_customer_update_that_keeps_the_card_leaves_a_paused_case_paused(
    *,
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    retry_settings: dict[str, Any],
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(
        stripe_client, sandbox, member, declines=10, decline_code="stolen_card"
    )
    await case_in(db, invoice_id, "paused")
    pays_before = len(await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST"))

    # Another invoice setting changes (the footer); the default card, the
    # stolen one, stays. Stripe's previous_attributes name only what changed.
    customer = (await stripe_client.v1.customers.retrieve_async(member.customer_id)).to_dict()
    customer["invoice_settings"]["footer"] = "Thank you"
    updated = so.event("customer.updated", customer)
    updated["data"]["previous_attributes"] = {"invoice_settings": {"footer": None}}
    status, body = await post_event(http, dunning_stack.gateway, updated)
    assert status == 200, body
    await eventually(
        lambda: db.fetchval(
            "SELECT true FROM retry.inbox WHERE queue = 'retry.stripe-events' AND event_id = $1",
            updated["id"],
        ),
        what="the customer.updated applied",
    )
    await _quiet(retry_settings)

    case = await case_in(db, invoice_id, "paused")
    assert case["attempts"] == 1
    pays = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert len(pays) == pays_before


@pytest.fixture
def uncollectible(retry_settings: dict[str, Any]) -> dict[str, Any]:
    retry_settings["dunning_end_action"] = "mark_uncollectible"
    return retry_settings


async def test_the_end_action_can_write_the_invoice_off_instead(
    uncollectible: dict[str, Any],
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=10)

    case = await case_in(db, invoice_id, "exhausted")
    assert case["end_action"] == "mark_uncollectible"
    await _eventually_done(db, invoice_id)
    invoice = await stripe_client.v1.invoices.retrieve_async(invoice_id)
    assert invoice.status == "uncollectible"
    sub = await stripe_client.v1.subscriptions.retrieve_async(member.subscription_id)
    assert sub.status != "canceled"
    marks = await sandbox.requests(f"/v1/invoices/{invoice_id}/mark_uncollectible", method="POST")
    assert [r["idempotency_key"] for r in marks] == [f"dunning-{invoice_id}-end"]
    # Stripe's invoice.marked_uncollectible that follows leaves the case exhausted.
    await sandbox.flush()
    assert (await case_in(db, invoice_id, "exhausted"))["close_reason"] == "attempts_spent"


@pytest.fixture
def attempts_on_demand(retry_settings: dict[str, Any]) -> dict[str, Any]:
    # The first attempt an hour away: the test makes it due when it is ready.
    retry_settings["dunning_first_delay_seconds"] = 3600.0
    retry_settings["dunning_max_delay_seconds"] = 3600.0
    return retry_settings


@pytest.fixture
def one_attempt_on_demand(attempts_on_demand: dict[str, Any]) -> dict[str, Any]:
    attempts_on_demand["dunning_max_attempts"] = 1
    return attempts_on_demand


@pytest.mark.usefixtures("one_attempt_on_demand")
async def test_an_invoice_paid_before_the_end_action_ran_keeps_the_membership(
    *,
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
    retry_settings: dict[str, Any],
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=2)
    await case_in(db, invoice_id, "open")
    # Stripe fails the cancellation for now: the end action is left undone.
    subscription_path = f"/v1/subscriptions/{member.subscription_id}"
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "server_error", "count": 10_000, "path_prefix": subscription_path},
    )
    await _retry_now(http, dunning_stack, invoice_id)
    await case_in(db, invoice_id, "exhausted")
    await eventually(
        lambda: sandbox.requests(subscription_path, method="DELETE"),
        until=lambda found: len(found) > 0,
        what="the end action tried",
    )
    # The member pays by hand before the end action is repeated.
    await stripe_client.v1.invoices.pay_async(
        invoice_id, params={"payment_method": "pm_card_mastercard"}
    )
    await eventually(
        lambda: db.fetchval(
            "SELECT status FROM retry.settled_invoices WHERE invoice_id = $1", invoice_id
        ),
        until=lambda status: status == "paid",
        what="invoice.paid applied",
    )
    # A cancellation already under way (the call policy's retries) ends first;
    # then Stripe works again, long enough for the sweep to repeat an end
    # action still due.
    await asyncio.sleep(retry_settings["stripe_call_budget_seconds"] + 1)
    await sandbox.control("DELETE", "/_sandbox/faults")
    await asyncio.sleep(retry_settings["dunning_lease_seconds"] + 2)

    sub = await stripe_client.v1.subscriptions.retrieve_async(member.subscription_id)
    assert sub.status != "canceled"
    cancels = await sandbox.requests(subscription_path, method="DELETE")
    assert all(r["fault"] for r in cancels)


@pytest.mark.usefixtures("attempts_on_demand")
async def test_stripe_rate_limits_are_retried_within_the_attempt(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # Stripe answers the first two payment requests with 429 and Retry-After.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {
            "kind": "rate_limit",
            "count": 2,
            "retry_after": 1,
            "path_prefix": f"/v1/invoices/{invoice_id}/pay",
        },
    )
    await _retry_now(http, dunning_stack, invoice_id)

    await case_in(db, invoice_id, "recovered")
    attempts = await attempts_of(db, invoice_id)
    assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "succeeded")]
    requests = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert [r["fault"] for r in requests] == ["rate_limit", "rate_limit", None]
    # One key for the three: the policy's retries are the same attempt.
    assert {r["idempotency_key"] for r in requests} == {f"dunning-{invoice_id}-attempt-1"}
    assert requests[2]["at"] - requests[1]["at"] >= 0.9  # Retry-After honoured


@pytest.mark.usefixtures("one_attempt_on_demand")
async def test_a_key_without_stripe_permission_spends_no_attempt(
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    invoice_id = await fail_renewal(stripe_client, sandbox, member, declines=1)
    await case_in(db, invoice_id, "open")
    # A restricted key lacking a permission: Stripe answers 403 to the payment.
    # It is our configuration, not the member's card: the only attempt is not
    # spent, the member is not told it failed, the membership is not ended.
    await sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "permission", "count": 1, "path_prefix": f"/v1/invoices/{invoice_id}/pay"},
    )
    await _retry_now(http, dunning_stack, invoice_id)

    case = await case_in(db, invoice_id, "recovered", "exhausted")
    assert case["state"] == "recovered", case
    attempts = await attempts_of(db, invoice_id)
    assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "succeeded")]
    requests = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert [r["fault"] for r in requests if r["idempotency_key"]] == ["permission", None]
    failed = await outbox_events(db, "dunning.attempt_failed")
    assert [e["data"]["attempt"] for e in failed] == [0]
    sub = await stripe_client.v1.subscriptions.retrieve_async(member.subscription_id)
    assert sub.status != "canceled"


async def test_a_renewal_hard_declined_is_not_charged_again_on_the_same_card(
    *,
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    retry_settings: dict[str, Any],
    http: aiohttp.ClientSession,
) -> None:
    member = await new_member(stripe_client)
    # The renewal's own charge meets a hard decline: the card is reported stolen.
    invoice_id = await fail_renewal(
        stripe_client, sandbox, member, declines=10, decline_code="stolen_card"
    )
    charges_before = len(await charges_of(stripe_client, member.customer_id))

    case = await case_in(db, invoice_id, "paused")
    assert case["last_decline_code"] == "stolen_card"
    await _quiet(retry_settings)
    # Stripe's record of the renewal already said so: the stolen card is never
    # charged by us, the case waits for a new card.
    assert (await case_in(db, invoice_id, "paused"))["attempts"] == 1
    pays = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert [r for r in pays if (r["idempotency_key"] or "").startswith("dunning-")] == []
    assert len(await charges_of(stripe_client, member.customer_id)) == charges_before
    attempts = await attempts_of(db, invoice_id)
    assert [(a["outcome"], a["decline_code"]) for a in attempts] == [("skipped", "stolen_card")]
    failed = await outbox_events(db, "dunning.attempt_failed")
    assert [e["data"]["attempt"] for e in failed] == [0]

    # An operator's retry-now overrides it (the member says the bank lifted a
    # block): that attempt charges the card, declined here once more.
    await _retry_now(http, dunning_stack, invoice_id)
    await eventually(
        lambda: attempts_of(db, invoice_id),
        until=lambda found: len(found) == 2 and found[1]["outcome"] != "pending",
        what="the operator's attempt",
    )
    attempts = await attempts_of(db, invoice_id)
    assert [(a["outcome"], a["decline_code"]) for a in attempts] == [
        ("skipped", "stolen_card"),
        ("failed", "stolen_card"),
    ]
    pays = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert [r["idempotency_key"] for r in pays if r["idempotency_key"]] == [
        f"dunning-{invoice_id}-attempt-2"
    ]
    # Paused again; the override was for that one attempt, a charge declined:
    # that one is published, paused.
    case = await case_in(db, invoice_id, "paused")
    assert case["retry_requested_at"] is None
    failed = await outbox_events(db, "dunning.attempt_failed")
    assert [(e["data"]["attempt"], e["data"]["paused"]) for e in failed] == [(0, False), (2, True)]
    assert failed[1]["data"]["decline_code"] == "stolen_card"
    assert failed[1]["data"]["next_attempt_at"] is None


async def test_a_skipped_attempt_spends_none_of_the_members_attempts(
    *,
    dunning_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    db: asyncpg.Connection,
    http: aiohttp.ClientSession,
) -> None:
    before = await _attempts_counted(http, dunning_stack)
    member = await new_member(stripe_client)
    # The renewal meets a hard decline: our first attempt skips the stolen card.
    invoice_id = await fail_renewal(
        stripe_client, sandbox, member, declines=10, decline_code="stolen_card"
    )
    await case_in(db, invoice_id, "paused")
    await eventually(
        lambda: attempts_of(db, invoice_id),
        until=lambda found: [a["outcome"] for a in found] == ["skipped"],
        what="the skipped attempt",
    )

    # A new card, declined too: the member still gets every one of the
    # DUNNING_MAX_ATTEMPTS (3) charges. It is made the default only once it is
    # set to decline; an attempt between the two (the attachment resumes the
    # case) finds the stolen card still the default and skips it again.
    new_card = await stripe_client.v1.payment_methods.attach_async(
        "pm_card_mastercard", params={"customer": member.customer_id}
    )
    await sandbox.control(
        "POST",
        f"/_sandbox/payment_methods/{new_card.id}/fail_next",
        {"decline_code": "generic_decline", "count": 10},
    )
    await stripe_client.v1.customers.update_async(
        member.customer_id, params={"invoice_settings": {"default_payment_method": new_card.id}}
    )

    case = await case_in(db, invoice_id, "exhausted")
    assert case["close_reason"] == "attempts_spent"
    attempts = await attempts_of(db, invoice_id)
    outcomes = [(a["outcome"], a["decline_code"]) for a in attempts]
    skips = [o for o in outcomes if o[0] == "skipped"]
    assert skips and set(skips) == {("skipped", "stolen_card")}
    # Every skip came before the new card was charged, and none took a charge's place.
    assert outcomes[len(skips) :] == [("failed", "generic_decline")] * 3
    pays = await sandbox.requests(f"/v1/invoices/{invoice_id}/pay", method="POST")
    assert [r["idempotency_key"] for r in pays if r["idempotency_key"]] == [
        f"dunning-{invoice_id}-attempt-{n}" for n in range(len(skips) + 1, len(skips) + 4)
    ]
    # The attempts made are the three charges, in the admin view and the event.
    [exhausted] = await outbox_events(db, "dunning.exhausted")
    assert exhausted["data"]["attempts"] == 3
    status, body, _ = await admin(http, dunning_stack.gateway, "GET", "/dunning")
    assert status == 200, body
    [listed] = [c for c in body["data"] if c["invoice_id"] == invoice_id]
    assert listed["attempts_made"] == 3
    assert [a["outcome"] for a in listed["attempts"]][: len(skips)] == ["skipped"] * len(skips)
    # The metrics still tell a skip from a decline.
    after = await _attempts_counted(http, dunning_stack)
    assert after[("skipped", "stolen_card")] - before[("skipped", "stolen_card")] == len(skips)
    assert after[("failed", "generic_decline")] - before[("failed", "generic_decline")] == 3


async def _attempts_counted(
    http: aiohttp.ClientSession, stack: Stack
) -> dict[tuple[str, str], float]:
    """``dunning_attempts_total`` by (outcome, decline code), as the retry service exposes it."""
    async with http.get(f"{stack.apps['retry'].url}/metrics") as response:
        exposed = await response.text()
    found: dict[tuple[str, str], float] = defaultdict(float)
    for code, outcome, value in re.findall(
        r'^dunning_attempts_total\{decline_code="([^"]*)",outcome="([^"]*)"\} (\S+)$',
        exposed,
        re.MULTILINE,
    ):
        found[(outcome, code)] = float(value)
    return found
