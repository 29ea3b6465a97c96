"""A consumer whose broker connection drops picks up where it left off: the
messages published meanwhile are consumed once it reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import amqp_url_via_port
from tests.support.gateway_client import post_event
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    broker = urlsplit(env.AMQP_URL)
    running = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def stack_with_proxied_consumer(clean_state: None, proxy: TcpProxy) -> AsyncIterator[Stack]:
    running = await start_stack(subscriptions={"amqp_url": amqp_url_via_port(proxy.port)})
    yield running
    await running.stop()


async def _status(db: asyncpg.Connection, sub_id: str) -> str | None:
    status: str | None = await db.fetchval(
        "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub_id
    )
    return status


async def test_consumption_resumes_after_the_connection_is_cut(
    stack_with_proxied_consumer: Stack,
    proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = stack_with_proxied_consumer
    before = so.subscription(status="active")
    assert (
        await post_event(http, stack.gateway, so.event("customer.subscription.created", before))
    )[0] == 200
    await eventually(lambda: _status(db, before["id"]), what="consumed before the cut")

    proxy.refuse()  # the consumer's connection dies and cannot come back yet
    during = so.subscription(status="trialing")
    assert (
        await post_event(http, stack.gateway, so.event("customer.subscription.created", during))
    )[0] == 200
    # The gateway publishes directly: the event waits in the queue meanwhile.
    assert await _status(db, during["id"]) is None
    proxy.restore()

    assert (
        await eventually(
            lambda: _status(db, during["id"]), timeout=20, what="consumed after reconnecting"
        )
        == "trialing"
    )
