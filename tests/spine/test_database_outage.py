"""The database goes away under a consumer: messages wait in the delay queues
beyond the ordinary retry bound instead of being dead-lettered, and are
applied once when the database is back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from shared import queues
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.dead_letters import dead_lettered
from tests.support.gateway_client import post_event
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually

QUEUE = queues.SUBSCRIPTIONS_STRIPE


@pytest.fixture
async def stack_on_proxied_db(clean_state: None, database_proxy: TcpProxy) -> AsyncIterator[Stack]:
    """Only the subscriptions service reaches Postgres through the proxy."""
    running = await start_stack(
        subscriptions={"database_url": via_proxy(env.DATABASE_URL, database_proxy)}
    )
    yield running
    await running.stop()


async def _retried(http: aiohttp.ClientSession, stack: Stack) -> float:
    """The subscriptions service's own count of messages sent to the delay queues."""
    async with http.get(f"{stack.apps['subscriptions'].url}/metrics") as response:
        text = await response.text()
    match = re.search(
        rf'consumer_messages_total{{outcome="retried",queue="{re.escape(QUEUE)}"}} (\S+)', text
    )
    return float(match.group(1)) if match else 0.0


async def test_outage_longer_than_the_retry_bound_loses_nothing(
    stack_on_proxied_db: Stack,
    database_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = stack_on_proxied_db
    before = await _retried(http, stack)
    sub = so.subscription(status="active")
    evt = so.event("customer.subscription.created", sub)

    database_proxy.refuse()
    try:
        status, _ = await post_event(http, stack.gateway, evt)
        assert status == 200  # the gateway has no database on its path
        # Ordinary failures would be dead-lettered after len(delays) retries;
        # wait until well past that.
        bound = len(env.FAST_RETRY_DELAYS_MS)
        await eventually(
            lambda: _retried(http, stack),
            until=lambda n: n - before >= bound + 3,
            timeout=15,
            what="retries beyond the ordinary bound",
        )
        assert await dead_lettered(db, QUEUE) == 0
    finally:
        database_proxy.restore()

    row = await eventually(
        lambda: db.fetchrow(
            "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub["id"],
        ),
        timeout=15,
        what="the subscription applied once the database is back",
    )
    assert row["status"] == "active"
    assert (
        await db.fetchval("SELECT count(*) FROM subscriptions.inbox WHERE event_id = $1", evt["id"])
        == 1
    )
    assert await dead_lettered(db, QUEUE) == 0
