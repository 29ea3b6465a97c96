"""Drift report and repair: a subscription changed in Stripe behind the
product's back (its webhook never delivered) is reported field by field with
ours and Stripe's value, and with ``repair`` applied again through the
subscriptions service's own event path, each repair in the audit log; one
object can be re-read on its own; objects that agree with Stripe are left
alone.

Stripe is the sandbox, as a process; "behind the product's back" is a change
made while the sandbox's deliveries are paused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe

from tests.gateway.helpers import admin, api, assert_error, bearer, token
from tests.support.db_faults import refusing
from tests.support.gateway_client import admin_get, admin_post
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

STATE = "/v1/admin/reconcile/state"
JOBS = "/v1/admin/reconcile/jobs"


@dataclass
class Rig:
    stack: Stack
    sandbox: SandboxProcess
    stripe: stripe.StripeClient
    http: aiohttp.ClientSession
    db: asyncpg.Connection

    async def subscription(self) -> str:
        """A subscription in Stripe that the product has applied; its id."""
        customer = await self.stripe.v1.customers.create_async(
            params={"email": f"m{uuid.uuid4().hex[:8]}@example.com"}
        )
        card = await self.stripe.v1.payment_methods.attach_async(
            "pm_card_visa", params={"customer": customer.id}
        )
        await self.stripe.v1.customers.update_async(
            customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
        )
        product = await self.stripe.v1.products.create_async(params={"name": "Hot desk"})
        price = await self.stripe.v1.prices.create_async(
            params={
                "product": product.id,
                "unit_amount": 19_900,
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        )
        sub = await self.stripe.v1.subscriptions.create_async(
            params={"customer": customer.id, "items": [{"price": price.id}]}
        )
        await self.settled()
        return sub.id

    async def settled(self) -> None:
        """Every subscription event Stripe delivered is handled by subscriptions."""
        await self.sandbox.flush()
        listed = await self.stripe.v1.events.list_async(params={"limit": 100})
        sent = {e.id for e in listed.data if e.type.startswith("customer.subscription.")}
        await eventually(
            lambda: self.db.fetchval(
                "SELECT count(*) FROM subscriptions.inbox WHERE event_id = ANY($1)", list(sent)
            ),
            until=lambda n: n == len(sent),
            what="subscription events handled",
        )

    async def row(self, sub_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub_id
        )

    async def deliveries(self, *, paused: bool) -> None:
        await self.sandbox.control("POST", "/_sandbox/delivery", {"paused": paused})

    async def report(self, **body: Any) -> dict[str, Any]:
        status, job = await admin_post(
            self.http, self.stack.gateway, STATE, {"reason": "weekly drift check", **body}
        )
        assert status == 202, job
        assert job["kind"] == "state"
        done = await eventually(
            lambda: admin_get(
                self.http, self.stack.gateway, f"/v1/admin/reconcile/jobs/{job['id']}"
            ),
            until=lambda j: j["state"] in ("succeeded", "failed"),
            what="drift report finished",
        )
        assert done["state"] == "succeeded", done
        return dict(done)

    async def differences(self, job_id: str) -> list[dict[str, Any]]:
        page = await admin_get(
            self.http, self.stack.gateway, f"/v1/admin/reconcile/jobs/{job_id}/differences"
        )
        return list(page["data"])

    async def audit(self, target: str) -> list[dict[str, Any]]:
        status, page, _ = await admin(
            self.http, self.stack.gateway, "GET", "/audit", params={"target": target}
        )
        assert status == 200, page
        return list(page["data"])


@pytest.fixture
def rig(
    stripe_stack: Stack,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> Rig:
    return Rig(stripe_stack, sandbox, stripe_client, http, db)


async def test_a_drift_is_reported_then_repaired_through_the_event_path(rig: Rig) -> None:
    sub_id = await rig.subscription()
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is False

    # In Stripe, not in the product: the webhook is never delivered.
    await rig.deliveries(paused=True)
    await rig.stripe.v1.subscriptions.update_async(sub_id, params={"cancel_at_period_end": True})

    report = await rig.report()
    assert (report["repair"], report["checked"], report["differing"], report["repaired"]) == (
        False,
        1,
        1,
        0,
    )
    found = await rig.differences(report["id"])
    assert {(d["service"], d["kind"], d["object_id"], d["repair"]) for d in found} == {
        ("subscriptions", "subscription", sub_id, None)
    }
    # Cancelling at the period end is also when Stripe says it was cancelled.
    stripe_sub = await rig.stripe.v1.subscriptions.retrieve_async(sub_id)
    assert {d["field"]: (d["ours"], d["stripe"]) for d in found} == {
        "cancel_at_period_end": (False, True),
        "canceled_at": (None, datetime.fromtimestamp(stripe_sub.canceled_at, UTC).isoformat()),
    }
    # A report alone changes nothing.
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is False
    assert [e["action"] for e in await rig.audit(sub_id)] == []

    repaired = await rig.report(repair=True)
    assert (repaired["checked"], repaired["differing"], repaired["repaired"]) == (1, 1, 1)
    found = await rig.differences(repaired["id"])
    assert {(d["field"], d["repair"]) for d in found} == {
        ("cancel_at_period_end", "applied"),
        ("canceled_at", "applied"),
    }
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is True
    # Applied as an event: through the subscriptions inbox, a synthetic event id.
    assert row["last_event_id"].startswith("evt_refetch_")
    assert await rig.db.fetchval(
        "SELECT count(*) FROM subscriptions.inbox WHERE event_id = $1", row["last_event_id"]
    )
    [entry] = await rig.audit(sub_id)
    assert (entry["action"], entry["reason"], entry["target_type"]) == (
        "reconcile.repair",
        "weekly drift check",
        "subscription",
    )
    assert entry["details"]["outcome"] == "applied"
    assert entry["details"]["fields"]["cancel_at_period_end"] == {"ours": False, "stripe": True}
    assert row["canceled_at"] == datetime.fromtimestamp(stripe_sub.canceled_at, UTC)

    # Now in step: a further report finds nothing, repairs nothing.
    again = await rig.report(repair=True)
    assert (again["checked"], again["differing"], again["repaired"]) == (1, 0, 0)
    assert await rig.differences(again["id"]) == []
    assert len(await rig.audit(sub_id)) == 1

    # The late delivery changes nothing either: the row already says it.
    await rig.deliveries(paused=False)
    await rig.settled()
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is True


async def test_a_repair_is_audited_even_when_its_differences_cannot_be_stored(
    rig: Rig,
) -> None:
    # The database fails after the owner applied Stripe's object (the
    # differences cannot be stored): the repair happened, so its entry exists.
    sub_id = await rig.subscription()
    await rig.deliveries(paused=True)
    await rig.stripe.v1.subscriptions.update_async(sub_id, params={"cancel_at_period_end": True})

    async with refusing(rig.db, "webhooks.reconcile_differences", "INSERT"):
        status, job = await admin_post(
            rig.http, rig.stack.gateway, STATE, {"reason": "weekly drift check", "repair": True}
        )
        assert status == 202, job
        await eventually(
            lambda: admin_get(rig.http, rig.stack.gateway, f"/v1/admin/reconcile/jobs/{job['id']}"),
            until=lambda j: j["state"] in ("succeeded", "failed"),
            what="drift report finished",
        )

    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is True
    [entry] = await rig.audit(sub_id)
    assert (entry["action"], entry["reason"]) == ("reconcile.repair", "weekly drift check")
    assert entry["details"]["job_id"] == job["id"]


async def test_objects_that_agree_with_stripe_are_not_repaired(rig: Rig) -> None:
    ids = [await rig.subscription(), await rig.subscription()]
    rows_before = [await rig.row(i) for i in ids]

    report = await rig.report(repair=True, kinds=["subscription"])
    assert (report["checked"], report["differing"], report["repaired"]) == (2, 0, 0)
    assert report["kinds"] == ["subscription"]
    assert await rig.differences(report["id"]) == []
    assert [await rig.row(i) for i in ids] == rows_before
    for sub_id in ids:
        assert await rig.audit(sub_id) == []

    status, answer = await admin_post(
        rig.http, rig.stack.gateway, STATE, {"kinds": ["charge_x"], "reason": "check"}
    )
    assert_error(status, answer, 422, "validation_failed", "kinds")
    status, answer = await admin_post(rig.http, rig.stack.gateway, STATE, {"repair": True})
    assert_error(status, answer, 422, "validation_failed", "reason")


async def test_one_object_is_refetched_and_applied(rig: Rig) -> None:
    sub_id = await rig.subscription()
    await rig.deliveries(paused=True)
    await rig.stripe.v1.subscriptions.update_async(sub_id, params={"cancel_at_period_end": True})
    path = f"/v1/admin/objects/{sub_id}/refetch"

    status, answer = await admin_post(
        rig.http, rig.stack.gateway, path, {"reason": "member says it is cancelled"}
    )
    assert status == 200, answer
    assert (answer["id"], answer["kind"], answer["service"], answer["outcome"]) == (
        sub_id,
        "subscription",
        "subscriptions",
        "applied",
    )
    assert answer["ours"] == answer["stripe"]
    assert answer["stripe"]["cancel_at_period_end"] is True
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is True

    # Once more: Stripe's object has not changed, nothing is applied.
    status, answer = await admin_post(rig.http, rig.stack.gateway, path, {"reason": "again"})
    assert (status, answer["outcome"]) == (200, "unchanged")
    entries = await rig.audit(sub_id)
    assert [(e["action"], e["details"]["outcome"]) for e in entries] == [
        ("object.refetch", "unchanged"),
        ("object.refetch", "applied"),
    ]

    # No service mirrors customers; Stripe has no such subscription.
    status, answer = await admin_post(
        rig.http, rig.stack.gateway, "/v1/admin/objects/cus_Nope123/refetch", {"reason": "check"}
    )
    assert_error(status, answer, 404, "not_found")
    status, answer = await admin_post(
        rig.http, rig.stack.gateway, "/v1/admin/objects/sub_Nope123/refetch", {"reason": "check"}
    )
    assert_error(status, answer, 404, "not_found")
    status, answer = await admin_post(rig.http, rig.stack.gateway, path, {})
    assert_error(status, answer, 422, "validation_failed", "reason")


async def test_a_refetch_that_cannot_be_audited_applies_nothing(rig: Rig) -> None:
    # Every staff write is audited: when the entry cannot be written, the
    # owner must not have applied Stripe's object either.
    sub_id = await rig.subscription()
    await rig.deliveries(paused=True)
    await rig.stripe.v1.subscriptions.update_async(sub_id, params={"cancel_at_period_end": True})
    path = f"/v1/admin/objects/{sub_id}/refetch"

    async with refusing(rig.db, "webhooks.audit_log", "INSERT"):
        status, answer = await admin_post(
            rig.http, rig.stack.gateway, path, {"reason": "member says it is cancelled"}
        )

    assert status >= 500 and set(answer) == {"error"}, answer
    row = await rig.row(sub_id)
    assert row is not None and row["cancel_at_period_end"] is False
    assert await rig.audit(sub_id) == []


async def test_a_member_is_refused(rig: Rig) -> None:
    member = bearer(token("member", sub="user_member_1"))
    job = await rig.report()
    for method, path in (
        ("POST", STATE),
        ("GET", f"/v1/admin/reconcile/jobs/{job['id']}/differences"),
        ("POST", "/v1/admin/objects/sub_Abc123/refetch"),
    ):
        status, answer, _ = await api(
            rig.http,
            method,
            f"{rig.stack.gateway}{path}",
            headers={**member, "Content-Type": "application/json"},
            data=b'{"reason": "just looking"}' if method == "POST" else None,
        )
        assert_error(status, answer, 403, "forbidden")
