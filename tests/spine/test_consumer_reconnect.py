"""A consumer whose broker connection drops picks up where it left off: the
messages published meanwhile are consumed once it reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from tests.support import env
from tests.support import stripe_objects as so
from tests.support.gateway_client import post_event
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually


@pytest.fixture
async def stack_with_proxied_consumer(
    clean_state: None, broker_proxy: TcpProxy
) -> AsyncIterator[Stack]:
    running = await start_stack(subscriptions={"amqp_url": via_proxy(env.AMQP_URL, broker_proxy)})
    yield running
    await running.stop()


async def _status(db: asyncpg.Connection, sub_id: str) -> str | None:
    status: str | None = await db.fetchval(
        "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub_id
    )
    return status


async def test_consumption_resumes_after_the_connection_is_cut(
    stack_with_proxied_consumer: Stack,
    broker_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = stack_with_proxied_consumer
    before = so.subscription(status="active")
    assert (
        await post_event(http, stack.gateway, so.event("customer.subscription.created", before))
    )[0] == 200
    await eventually(lambda: _status(db, before["id"]), what="consumed before the cut")

    broker_proxy.refuse()  # the consumer's connection dies and cannot come back yet
    during = so.subscription(status="trialing")
    assert (
        await post_event(http, stack.gateway, so.event("customer.subscription.created", during))
    )[0] == 200
    # The gateway publishes directly: the event waits in the queue meanwhile.
    assert await _status(db, during["id"]) is None
    broker_proxy.restore()

    assert (
        await eventually(
            lambda: _status(db, during["id"]), timeout=20, what="consumed after reconnecting"
        )
        == "trialing"
    )
