"""Each service its own RabbitMQ user limited to its own queues
(shared/broker/users.py), and the whole product running on its own users,
its own database roles and its own service tokens."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import aiohttp
import aiormq
import asyncpg
import pytest

from shared import queues
from shared.broker.topology import BILLING_EVENTS, STRIPE_EVENTS
from shared.broker.users import SERVICES
from tests.gateway.helpers import api, bearer, token
from tests.support import stripe_objects as so
from tests.support.broker_users import provision_test_users
from tests.support.db_roles import provision_test_roles
from tests.support.gateway_client import post_event
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually


@pytest.fixture
async def users(clean_state: None) -> dict[str, str]:
    return await provision_test_users()


@contextlib.asynccontextmanager
async def channel_of(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject(requeue=True)


async def _refused(url: str, action: str, name: str) -> bool:
    """Whether the broker refuses ``url``'s user ``action`` on ``name``."""
    try:
        async with channel_of(url) as channel:
            if action == "declare":
                await channel.declare_queue(name, durable=True, auto_delete=True)
            elif action == "consume":
                queue = await channel.declare_queue(name, passive=True)
                await queue.consume(_ignore)
            elif action == "publish":
                # Confirmed: a refusal closes the channel before the confirm.
                exchange = await channel.get_exchange(name, ensure=False)
                await exchange.publish(aio_pika.Message(b"{}"), routing_key="least-privilege")
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    return False


async def test_a_service_user_keeps_to_its_own_queues(users: dict[str, str]) -> None:
    # Queues to be refused on, declared by the admin.
    async with channel_of(users["webhooks"]) as channel:
        await channel.declare_queue("webhooks.least-privilege", durable=True, auto_delete=True)
    credits = users["credits"]
    assert not await _refused(credits, "declare", "credits.least-privilege")
    assert await _refused(credits, "declare", "subscriptions.least-privilege")
    assert await _refused(credits, "consume", "webhooks.least-privilege")
    assert await _refused(credits, "publish", STRIPE_EVENTS)
    assert not await _refused(credits, "publish", BILLING_EVENTS)


async def test_the_gateway_user_only_publishes_stripe_events(users: dict[str, str]) -> None:
    gateway = users["gateway"]
    assert not await _refused(gateway, "publish", STRIPE_EVENTS)
    assert await _refused(gateway, "publish", BILLING_EVENTS)
    assert await _refused(gateway, "declare", "gateway.anything")


@pytest.fixture
async def least_privilege_stack(users: dict[str, str]) -> AsyncIterator[Stack]:
    databases = await provision_test_roles()
    tokens = {s: f"{s}-own-internal-token-0123456789" for s in databases}
    running = await start_stack(
        gateway={
            "amqp_url": users["gateway"],
            "service_token": None,
            **{f"{s}_service_token": t for s, t in tokens.items()},
        },
        **{
            s: {"amqp_url": users[s], "database_url": databases[s], "service_token": tokens[s]}
            for s in databases
        },
    )
    yield running
    await running.stop()


async def test_the_product_runs_on_its_own_users_roles_and_tokens(
    least_privilege_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    stack = least_privilege_stack
    for name, running in stack.apps.items():
        async with http.get(f"{running.url}/readyz") as response:
            assert response.status == 200, (name, await response.text())
    # A Stripe event through the gateway's publish, into the webhooks
    # ledger and the subscriptions consumer.
    evt = so.event("customer.subscription.created", so.subscription())
    status, answer = await post_event(http, stack.gateway, evt)
    assert status == 200, answer
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", evt["id"]),
        until=lambda n: n == 1,
        what="the event in the ledger",
    )
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM subscriptions.inbox WHERE event_id = $1", evt["id"]
        ),
        until=lambda n: n >= 1,
        what="the event applied by subscriptions",
    )
    # The admin API reaches the services with their own tokens, including
    # the dead letters of every queue through the webhooks user.
    for path in ("/v1/admin/audit", "/v1/admin/dead-letters"):
        status, answer, _ = await api(
            http, "GET", f"{stack.gateway}{path}", headers=bearer(token())
        )
        assert status == 200, (path, answer)


def test_every_queue_is_named_after_the_service_that_owns_it() -> None:
    # The broker users' permissions grant a service "<service>.*": a queue
    # named otherwise would be refused to its own consumer.
    for queue in queues.ALL:
        assert queue.split(".")[0] in SERVICES, queue
