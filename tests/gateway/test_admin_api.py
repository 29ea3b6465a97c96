"""``/v1/admin`` actions with effects: replaying an event (with and without an
``Idempotency-Key``) and what an operator sees when an owning service is down.
Each test gets a fresh stack."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg

from shared import queues
from tests.gateway.helpers import (
    a_valid_event,
    admin,
    assert_error,
    deliver,
    delivered_subscription_event,
    inbox_duplicates,
    wait_in_ledger,
)
from tests.support.db_faults import refusing
from tests.support.stack import Stack
from tests.support.waiting import eventually

REASON = b'{"reason": "operator check"}'


async def duplicates_seen(db: asyncpg.Connection, event_id: str) -> tuple[Any, Any]:
    """Duplicates counted by (the ledger, the subscriptions consumer)."""
    return (
        await inbox_duplicates(db, "webhooks", queues.WEBHOOKS_LEDGER, event_id),
        await inbox_duplicates(db, "subscriptions", queues.SUBSCRIPTIONS_STRIPE, event_id),
    )


async def replay_count(http: aiohttp.ClientSession, stack: Stack, event_id: str) -> int:
    status, shown, _ = await admin(http, stack.gateway, "GET", f"/events/{event_id}")
    assert status == 200, shown
    count: int = shown["replay_count"]
    return count


async def test_replay_publishes_the_event_again_and_consumers_skip_it(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt, row = await delivered_subscription_event(http, stack.gateway, db)

    status, answer, _ = await admin(
        http, stack.gateway, "POST", f"/events/{evt['id']}/replay", data=REASON
    )

    assert (status, answer) == (202, {"id": evt["id"], "replayed": True})
    await eventually(
        lambda: duplicates_seen(db, evt["id"]),
        until=lambda seen: seen == (1, 1),
        what="both consumers to see the replay as a duplicate",
    )
    after = await db.fetchrow(
        "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
        row["stripe_subscription_id"],
    )
    assert dict(after) == dict(row)
    status, shown, _ = await admin(http, stack.gateway, "GET", f"/events/{evt['id']}")
    assert status == 200
    assert (shown["replay_count"], shown["duplicates"]) == (1, 1)
    assert shown["last_replayed_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM webhooks.events") == 1
    # The staff write is in the audit log: who, role, action, target, why, request.
    status, logged, _ = await admin(
        http, stack.gateway, "GET", "/audit", params={"target": evt["id"]}
    )
    assert status == 200, logged
    [entry] = logged["data"]
    assert (entry["service"], entry["action"], entry["target_type"]) == (
        "webhooks",
        "event.replay",
        "event",
    )
    assert (entry["actor_id"], entry["actor_role"]) == ("user_test_operator", "admin")
    assert entry["reason"] == "operator check"
    assert entry["request_id"]
    assert entry["details"] == {"outcome": "published"}


async def test_replay_with_the_same_idempotency_key_publishes_once(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt, _ = await delivered_subscription_event(http, stack.gateway, db)
    key = {"Idempotency-Key": f"replay-once-{evt['id']}"}
    path = f"/events/{evt['id']}/replay"

    first = await admin(http, stack.gateway, "POST", path, headers=key, data=REASON)
    second = await admin(http, stack.gateway, "POST", path, headers=key, data=REASON)

    assert first[:2] == second[:2] == (202, {"id": evt["id"], "replayed": True})
    assert "Idempotent-Replayed" not in first[2]
    assert second[2].get("Idempotent-Replayed") == "true"
    await eventually(
        lambda: duplicates_seen(db, evt["id"]),
        until=lambda seen: seen == (1, 1),
        what="the one replay to reach both consumers",
    )
    # A delivery made after the second call has reached the ledger: had the
    # second call published, its copy would have been counted by now.
    later = a_valid_event()
    await deliver(http, stack.gateway, later)
    await wait_in_ledger(db, later["id"])
    assert await duplicates_seen(db, evt["id"]) == (1, 1)
    assert await replay_count(http, stack, evt["id"]) == 1


async def test_the_same_idempotency_key_for_another_event_is_422(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    one, other = a_valid_event(), a_valid_event()
    for evt in (one, other):
        await deliver(http, stack.gateway, evt)
        await wait_in_ledger(db, evt["id"])
    key = {"Idempotency-Key": "replay-key-reused"}

    status, _, _ = await admin(
        http, stack.gateway, "POST", f"/events/{one['id']}/replay", headers=key, data=REASON
    )
    assert status == 202
    status, answer, _ = await admin(
        http, stack.gateway, "POST", f"/events/{other['id']}/replay", headers=key, data=REASON
    )

    assert_error(status, answer, 422, "idempotency_key_reused")
    assert await replay_count(http, stack, one["id"]) == 1
    assert await replay_count(http, stack, other["id"]) == 0


async def test_an_overlong_idempotency_key_is_400(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await deliver(http, stack.gateway, evt)
    await wait_in_ledger(db, evt["id"])
    status, answer, _ = await admin(
        http,
        stack.gateway,
        "POST",
        f"/events/{evt['id']}/replay",
        headers={"Idempotency-Key": "k" * 256},
        data=REASON,
    )
    assert_error(status, answer, 400, "invalid_idempotency_key")
    assert await replay_count(http, stack, evt["id"]) == 0


async def test_webhooks_service_down_is_503_with_retry_after(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await stack.stop("webhooks")
    for method, path in (("GET", "/events"), ("POST", "/events/evt_test_x/replay")):
        status, answer, headers = await admin(http, stack.gateway, method, path, data=REASON)
        assert_error(status, answer, 503, "upstream_unavailable", "webhooks")
        assert int(headers["Retry-After"]) > 0
    # The other owner still answers.
    status, _, _ = await admin(http, stack.gateway, "GET", "/subscriptions/sub_test_unknown")
    assert status == 404


async def test_subscriptions_service_down_is_503(stack: Stack, http: aiohttp.ClientSession) -> None:
    await stack.stop("subscriptions")
    status, answer, _ = await admin(http, stack.gateway, "GET", "/subscriptions/sub_test_x")
    assert_error(status, answer, 503, "upstream_unavailable", "subscriptions")


async def test_a_reason_holding_a_nul_is_422_and_nothing_is_replayed(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Postgres text cannot store a NUL: accepted, the audit row would fail
    # after the event went out again, an unaudited replay answered with a 500.
    evt = a_valid_event()
    await deliver(http, stack.gateway, evt)
    await wait_in_ledger(db, evt["id"])

    status, answer, _ = await admin(
        http,
        stack.gateway,
        "POST",
        f"/events/{evt['id']}/replay",
        data=b'{"reason": "operator\\u0000check"}',
    )

    assert_error(status, answer, 422, "validation_failed")
    assert [d["field"] for d in answer["error"]["details"]] == ["reason"]
    assert await replay_count(http, stack, evt["id"]) == 0


async def audit_entries(http: aiohttp.ClientSession, stack: Stack, target: str) -> list[Any]:
    status, logged, _ = await admin(http, stack.gateway, "GET", "/audit", params={"target": target})
    assert status == 200, logged
    return list(logged["data"])


async def test_a_replay_that_cannot_be_audited_is_not_published(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Every staff write is audited: when the audit entry cannot be written,
    # the replay must not have gone out either.
    evt, _ = await delivered_subscription_event(http, stack.gateway, db)

    async with refusing(db, "webhooks.audit_log", "INSERT"):
        status, answer, _ = await admin(
            http, stack.gateway, "POST", f"/events/{evt['id']}/replay", data=REASON
        )

    assert status >= 500 and set(answer) == {"error"}, answer
    # A delivery made after the call has reached the ledger: had the replay
    # been published, the ledger would have counted its copy by now.
    later = a_valid_event()
    await deliver(http, stack.gateway, later)
    await wait_in_ledger(db, later["id"])
    assert await duplicates_seen(db, evt["id"]) == (0, 0)
    assert await audit_entries(http, stack, evt["id"]) == []


async def test_a_replay_whose_database_fails_after_publishing_is_still_audited(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # The database fails once the event is back in the broker (the replay
    # count cannot be written): the replay happened, so its entry must exist.
    evt, _ = await delivered_subscription_event(http, stack.gateway, db)

    async with refusing(db, "webhooks.events", "UPDATE"):
        status, answer, _ = await admin(
            http, stack.gateway, "POST", f"/events/{evt['id']}/replay", data=REASON
        )
        assert status >= 500 and set(answer) == {"error"}, answer
        await eventually(
            lambda: duplicates_seen(db, evt["id"]),
            until=lambda seen: seen == (1, 1),
            what="the replay published before the failure",
        )

    [entry] = await audit_entries(http, stack, evt["id"])
    assert (entry["action"], entry["reason"]) == ("event.replay", "operator check")
    assert entry["request_id"]
    # Written before the publish; how it ended is unknown to the log.
    assert entry["details"] == {"outcome": "pending"}
