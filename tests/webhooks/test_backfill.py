"""Backfill from Stripe's Events API: events Stripe never delivered (the
endpoint down, deliveries paused) are found by paging ``GET /v1/events`` and
enter the normal path, each once, even with two backfills at once; a late
delivery afterwards is a duplicate every inbox absorbs.

Stripe is the sandbox, as a process; "missed" events are sandbox events whose
webhooks were never sent (no endpoint, or deliveries paused).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import stripe

from services.webhooks.app import create_app
from services.webhooks.settings import WebhooksSettings
from shared import queues
from tests.gateway.helpers import admin, assert_error, inbox_duplicates
from tests.support.amqp import message_count
from tests.support.gateway_client import admin_get, admin_post
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, common_settings, serve, start_stack
from tests.support.waiting import eventually

RECONCILE = "/v1/admin/reconcile/events"


@dataclass
class Rig:
    stack: Stack
    sandbox: SandboxProcess
    stripe: stripe.StripeClient
    http: aiohttp.ClientSession
    db: asyncpg.Connection

    async def stripe_events(self, count: int) -> list[str]:
        """``count`` new events in Stripe (customers created); their ids, oldest first."""
        for _ in range(count):
            await self.stripe.v1.customers.create_async(
                params={"email": f"m{uuid.uuid4().hex[:8]}@example.com"}
            )
        listed = await self.stripe.v1.events.list_async(params={"limit": count})
        return [e.id for e in reversed(listed.data)]

    async def backfill(self, **body: Any) -> dict[str, Any]:
        status, job = await admin_post(
            self.http, self.stack.gateway, RECONCILE, {"reason": "endpoint was down", **body}
        )
        assert status == 202, job
        return dict(job)

    async def finished(self, job_id: str) -> dict[str, Any]:
        job = await eventually(
            lambda: admin_get(self.http, self.stack.gateway, f"/v1/admin/reconcile/jobs/{job_id}"),
            until=lambda j: j["state"] in ("succeeded", "failed"),
            what=f"job {job_id} finished",
        )
        return dict(job)

    async def in_ledger(self, ids: list[str]) -> int:
        return int(
            await self.db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = ANY($1)", ids)
        )

    async def ledger_duplicates(self, ids: list[str]) -> list[int]:
        return [
            await inbox_duplicates(self.db, "webhooks", queues.WEBHOOKS_LEDGER, i) or 0 for i in ids
        ]

    async def drained(self) -> None:
        """Nothing left in flight for the ledger: a second copy would be stored by now."""
        await eventually(
            lambda: message_count(queues.WEBHOOKS_LEDGER), until=lambda n: n == 0, what="drained"
        )
        await asyncio.sleep(0.3)


@pytest.fixture
async def rig(
    clean_state: None,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> AsyncIterator[Rig]:
    # The sandbox delivers nowhere until a test says so: every event is missed.
    stack = await start_stack(
        stripe_api_base=sandbox.url,
        webhooks={
            "reconcile_interval_seconds": 0,
            "reconcile_grace_seconds": 0,
            "reconcile_page_size": 2,  # several pages from a handful of events
        },
    )
    yield Rig(stack, sandbox, stripe_client, http, db)
    await stack.stop()


async def test_a_gap_of_missed_events_is_recovered_and_a_late_delivery_is_a_duplicate(
    rig: Rig,
) -> None:
    await rig.sandbox.deliver_to(f"{rig.stack.gateway}/webhooks/stripe")
    delivered = await rig.stripe_events(2)
    await rig.sandbox.flush()
    await eventually(lambda: rig.in_ledger(delivered), until=lambda n: n == 2, what="delivered")
    # The endpoint goes away: Stripe holds what happens next.
    await rig.sandbox.control("POST", "/_sandbox/delivery", {"paused": True})
    missed = await rig.stripe_events(3)
    assert await rig.in_ledger(missed) == 0

    job = await rig.backfill()
    assert job["trigger"] == "manual"
    assert job["state"] in ("queued", "running", "succeeded")
    done = await rig.finished(job["id"])
    assert done["state"] == "succeeded", done
    assert (done["seen"], done["already_had"], done["recovered"]) == (5, 2, 3)
    assert done["error"] is None

    # In the ledger once each, exactly as Stripe lists them.
    await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 3, what="recovered")
    for event_id in missed:
        stored = orjson.loads(
            await rig.db.fetchval("SELECT payload FROM webhooks.events WHERE id = $1", event_id)
        )
        from_stripe = await rig.stripe.v1.events.retrieve_async(event_id)
        assert (stored["type"], stored["created"]) == (from_stripe.type, from_stripe.created)
        assert stored["data"]["object"]["id"] == from_stripe.data.object["id"]
    await rig.drained()
    assert await rig.ledger_duplicates(missed) == [0, 0, 0]

    # Stripe delivers them after all: each is a duplicate, nothing is stored twice.
    await rig.sandbox.control("POST", "/_sandbox/delivery", {"paused": False})
    await rig.sandbox.flush()
    await eventually(
        lambda: rig.ledger_duplicates(missed), until=lambda d: d == [1, 1, 1], what="absorbed"
    )
    assert await rig.db.fetchval("SELECT count(*) FROM webhooks.events") == 5

    # The request is in the audit log; a second backfill finds nothing missing.
    status, audit, _ = await admin(
        rig.http, rig.stack.gateway, "GET", "/audit", params={"target": job["id"]}
    )
    assert status == 200
    [entry] = audit["data"]
    assert (entry["action"], entry["reason"]) == ("reconcile.events", "endpoint was down")
    again = await rig.finished((await rig.backfill())["id"])
    assert (again["seen"], again["already_had"], again["recovered"]) == (5, 5, 0)


async def test_two_backfills_at_once_recover_each_event_once(rig: Rig) -> None:
    missed = await rig.stripe_events(6)

    first, second = await asyncio.gather(rig.backfill(), rig.backfill())
    done = [await rig.finished(first["id"]), await rig.finished(second["id"])]
    assert [d["state"] for d in done] == ["succeeded", "succeeded"], done
    assert [d["seen"] for d in done] == [6, 6]
    assert sum(d["recovered"] for d in done) == 6
    assert all(d["recovered"] + d["already_had"] == 6 for d in done)

    await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 6, what="recovered")
    await rig.drained()
    # Published once each: not one duplicate reached the ledger's inbox.
    assert await rig.ledger_duplicates(missed) == [0] * 6
    published = await rig.db.fetch(
        "SELECT event_id, state FROM webhooks.backfilled_events ORDER BY event_id"
    )
    assert sorted(r["event_id"] for r in published) == sorted(missed)
    assert {r["state"] for r in published} == {"published"}


async def test_stripe_rate_limits_are_waited_out(rig: Rig) -> None:
    missed = await rig.stripe_events(3)
    await rig.sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "rate_limit", "count": 2, "path_prefix": "/v1/events", "retry_after": 1},
    )
    await rig.sandbox.control("DELETE", "/_sandbox/requests")

    done = await rig.finished((await rig.backfill())["id"])
    assert done["state"] == "succeeded", done
    assert done["recovered"] == 3
    listed = await rig.sandbox.requests("/v1/events", "GET")
    assert [r["fault"] for r in listed[:2]] == ["rate_limit", "rate_limit"]
    # Retry-After: 1 was honoured between the refusals and the retry.
    assert listed[2]["at"] - listed[0]["at"] >= 1.8
    await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 3, what="recovered")


async def test_since_is_bounded_by_what_stripe_keeps_and_checked(rig: Rig) -> None:
    long_ago = (datetime.now(UTC) - timedelta(days=45)).isoformat()
    job = await rig.backfill(since=long_ago)
    since = datetime.fromisoformat(job["since"])
    assert abs(since - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=1)

    status, answer = await admin_post(
        rig.http, rig.stack.gateway, RECONCILE, {"since": "yesterday", "reason": "check"}
    )
    assert_error(status, answer, 422, "validation_failed", "since")
    status, answer = await admin_post(rig.http, rig.stack.gateway, RECONCILE, {})
    assert_error(status, answer, 422, "validation_failed", "reason")
    status, answer, _ = await admin(
        rig.http, rig.stack.gateway, "GET", f"/reconcile/jobs/{uuid.uuid4()}"
    )
    assert_error(status, answer, 404, "not_found")
    status, answer, _ = await admin(rig.http, rig.stack.gateway, "GET", "/reconcile/jobs/job_1")
    assert_error(status, answer, 400, "invalid_parameter")


async def test_the_schedule_runs_one_backfill_at_a_time_across_replicas(
    rig: Rig, sandbox: SandboxProcess
) -> None:
    missed = await rig.stripe_events(4)
    # Two more replicas of the webhooks service with the schedule on, every second.
    settings = WebhooksSettings(
        **common_settings(
            stripe_api_base=sandbox.url,
            reconcile_interval_seconds=1,
            reconcile_grace_seconds=0,
            reconcile_page_size=2,
        )
    )
    replicas = [await serve(create_app(settings)) for _ in range(2)]
    try:
        await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 4, what="recovered")
        jobs = await eventually(
            lambda: rig.db.fetch(
                "SELECT * FROM webhooks.reconcile_jobs WHERE trigger = 'schedule'"
                " AND state = 'succeeded' ORDER BY started_at"
            ),
            until=lambda rows: len(rows) >= 2,
            what="two scheduled runs",
        )
    finally:
        for replica in replicas:
            await replica.stop()
    # One at a time: no two runs overlap, each starts at least an interval
    # after the one before, and together they recovered each event once.
    for earlier, later in itertools.pairwise(jobs):
        assert later["started_at"] >= earlier["finished_at"]
        assert later["created_at"] - earlier["created_at"] >= timedelta(seconds=0.9)
    assert sum(j["recovered"] for j in jobs) == 4
    cursor = await rig.db.fetchval(
        "SELECT checked_until FROM webhooks.reconcile_cursor WHERE name = 'events'"
    )
    assert cursor == max(j["until"] for j in jobs)
    # The next run starts from the cursor (less the overlap), not 30 days back.
    assert jobs[-1]["since"] > datetime.now(UTC) - timedelta(days=1)


async def test_a_cursor_older_than_stripe_keeps_moves_on_after_a_full_backfill(rig: Rig) -> None:
    # The first scheduled run failed (Stripe away, a key without access to
    # events) and left the cursor where it started; weeks later that is older
    # than anything Stripe lists.
    await rig.db.execute(
        "INSERT INTO webhooks.reconcile_cursor (name, checked_until) VALUES ('events', $1)",
        datetime.now(UTC) - timedelta(days=40),
    )
    missed = await rig.stripe_events(2)

    done = await rig.finished((await rig.backfill())["id"])

    assert done["state"] == "succeeded", done
    assert done["recovered"] == 2
    # The job checked everything Stripe lists: no hole is left behind its end,
    # so the next run starts there, not 30 days back again (and the
    # ReconcileBehind alert clears).
    cursor = await rig.db.fetchval(
        "SELECT checked_until FROM webhooks.reconcile_cursor WHERE name = 'events'"
    )
    assert cursor == datetime.fromisoformat(done["until"])
    await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 2, what="recovered")


async def test_an_event_a_dead_replica_claimed_is_recovered_by_a_later_backfill(
    clean_state: None,
    sandbox: SandboxProcess,
    stripe_client: stripe.StripeClient,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # No overlap: only the cursor says where the next backfill starts.
    stack = await start_stack(
        stripe_api_base=sandbox.url,
        webhooks={
            "reconcile_interval_seconds": 0,
            "reconcile_grace_seconds": 0,
            "reconcile_overlap_seconds": 0,
        },
    )
    rig = Rig(stack, sandbox, stripe_client, http, db)
    try:
        missed = await rig.stripe_events(2)
        await asyncio.sleep(1.1)  # the events are in an earlier second than any job
        # A replica claimed one of them and was killed before publishing it.
        await db.execute(
            "INSERT INTO webhooks.backfilled_events (event_id, job_id, state, claimed_at)"
            " VALUES ($1, $2, 'publishing', now())",
            missed[0],
            uuid.uuid4(),
        )

        first = await rig.finished((await rig.backfill())["id"])
        assert (first["state"], first["recovered"]) == ("succeeded", 1), first
        # Later the dead replica's claim is stale and may be taken over.
        await db.execute(
            "UPDATE webhooks.backfilled_events SET claimed_at = now() - interval '1 hour'"
            " WHERE event_id = $1",
            missed[0],
        )
        second = await rig.finished((await rig.backfill())["id"])

        assert second["state"] == "succeeded", second
        await eventually(lambda: rig.in_ledger(missed), until=lambda n: n == 2, what="both")
    finally:
        await stack.stop()
