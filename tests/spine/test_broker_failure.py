"""The broker goes away under the gateway: Stripe gets a quick 503 (and
retries), never a 200 for an event that is not durably in the broker; when
the broker is back, the retried deliveries land exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support import env
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually

# publish_confirm_timeout is 2 s in the test stack; the answer must come
# within it plus request overhead.
ANSWER_BOUND_S = 3.5


@pytest.fixture
async def proxied_stack(clean_state: None, broker_proxy: TcpProxy) -> AsyncIterator[Stack]:
    """Consumers on the broker directly; only the gateway goes through the proxy."""
    running = await start_stack(gateway={"amqp_url": via_proxy(env.AMQP_URL, broker_proxy)})
    yield running
    await running.stop()


async def _readyz(http: aiohttp.ClientSession, stack: Stack) -> tuple[int, Any]:
    async with http.get(f"{stack.gateway}/readyz") as response:
        return response.status, await response.json()


async def _timed_post(
    http: aiohttp.ClientSession, stack: Stack, evt: dict[str, Any]
) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, answer = await post_event(http, stack.gateway, evt)
    return status, answer, time.monotonic() - started


async def _ledger_count(db: asyncpg.Connection, ids: list[str]) -> int:
    return await db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = ANY($1)", ids)


async def _wait_ready(http: aiohttp.ClientSession, stack: Stack) -> None:
    await eventually(
        lambda: _readyz(http, stack),
        until=lambda r: r[0] == 200,
        timeout=15,
        what="gateway ready again (publisher reconnected)",
    )


async def test_broker_refused_gives_503_then_retry_lands_once(
    proxied_stack: Stack,
    broker_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = proxied_stack
    assert (await _readyz(http, stack))[0] == 200
    evt = so.event("customer.subscription.created", so.subscription())

    broker_proxy.refuse()
    status, answer = await eventually(
        lambda: _readyz(http, stack), until=lambda r: r[0] == 503, what="gateway not ready"
    )
    assert answer == {"status": "not_ready", "checks": {"broker": False}}

    status, answer, took = await _timed_post(http, stack, evt)
    assert status == 503
    assert answer["error"]["code"] == "broker_unavailable"
    assert took < ANSWER_BOUND_S

    broker_proxy.restore()
    await _wait_ready(http, stack)
    # Stripe retries the same delivery.
    status, answer, _ = await _timed_post(http, stack, evt)
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})

    await eventually(lambda: _ledger_count(db, [evt["id"]]), until=lambda n: n == 1)
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            evt["data"]["object"]["id"],
        ),
        until=lambda n: n == 1,
        what="subscription stored",
    )
    # The 503'd attempt never reached the broker: no duplicate was counted.
    assert (
        await db.fetchval(
            "SELECT duplicate_count FROM webhooks.inbox WHERE event_id = $1", evt["id"]
        )
        == 0
    )


async def test_connection_cut_mid_stream_loses_nothing_and_stores_nothing_twice(
    proxied_stack: Stack,
    broker_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = proxied_stack
    events = [so.event("customer.subscription.created", so.subscription()) for _ in range(60)]
    results: dict[str, tuple[int, float]] = {}

    async def deliver(evt: dict[str, Any]) -> None:
        status, _, took = await _timed_post(http, stack, evt)
        results[evt["id"]] = (status, took)

    async def answered() -> int:
        return len(results)

    async def cut_mid_stream() -> None:
        await eventually(
            answered,
            until=lambda n: n >= 15,
            timeout=10,
            what="first deliveries answered",
        )
        broker_proxy.refuse()

    # Stripe sends concurrently: a few deliveries in flight at any time.
    sem = asyncio.Semaphore(4)

    async def limited(evt: dict[str, Any]) -> None:
        async with sem:
            await deliver(evt)

    await asyncio.gather(cut_mid_stream(), *(limited(e) for e in events))

    accepted = [i for i, (status, _) in results.items() if status == 200]
    refused = [i for i, (status, _) in results.items() if status == 503]
    assert len(accepted) + len(refused) == len(events), results
    assert accepted, "the cut came before any delivery was accepted"
    assert refused, "the cut came after every delivery was answered"
    assert max(took for _, took in results.values()) < ANSWER_BOUND_S

    # Every event that got a 200 is durable: it lands although the gateway is cut off.
    await eventually(
        lambda: _ledger_count(db, accepted),
        until=lambda n: n == len(accepted),
        timeout=10,
        what="every accepted event in the ledger",
    )

    broker_proxy.restore()
    await _wait_ready(http, stack)
    by_id = {e["id"]: e for e in events}
    retried = await asyncio.gather(*(post_event(http, stack.gateway, by_id[i]) for i in refused))
    assert [status for status, _ in retried] == [200] * len(refused)

    all_ids = list(by_id)
    await eventually(
        lambda: _ledger_count(db, all_ids),
        until=lambda n: n == len(all_ids),
        timeout=10,
        what="every event in the ledger",
    )
    # Exactly once: one inbox row per event; the ledger's primary key holds one row each.
    assert await db.fetchval(
        "SELECT count(*) FROM webhooks.inbox WHERE event_id = ANY($1)", all_ids
    ) == len(all_ids)
    subs = [e["data"]["object"]["id"] for e in events]
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM subscriptions.subscriptions"
            " WHERE stripe_subscription_id = ANY($1)",
            subs,
        ),
        until=lambda n: n == len(subs),
        timeout=10,
        what="every subscription stored",
    )


async def test_broker_not_confirming_gives_503_within_the_confirm_timeout(
    proxied_stack: Stack,
    broker_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = proxied_stack
    evt = so.event("customer.subscription.created", so.subscription())

    # The connection stays up but nothing comes back: no confirm, no error.
    broker_proxy.stall()
    try:
        status, answer, took = await _timed_post(http, stack, evt)
        # A broker that takes messages and never confirms is not a ready one.
        ready_status, readiness = await _readyz(http, stack)
    finally:
        broker_proxy.restore()

    assert status == 503
    assert answer["error"]["code"] == "broker_unavailable"
    assert 1.5 < took < ANSWER_BOUND_S  # waited for the 2 s confirm timeout, no longer
    assert ready_status == 503
    assert readiness["checks"]["broker"] is False

    await _wait_ready(http, stack)
    status, answer, _ = await _timed_post(http, stack, evt)
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    # The stalled copy may have reached the broker after all: the ledger dedupes it.
    await eventually(lambda: _ledger_count(db, [evt["id"]]), until=lambda n: n == 1)
    assert (
        await db.fetchval("SELECT count(*) FROM webhooks.inbox WHERE event_id = $1", evt["id"]) == 1
    )
