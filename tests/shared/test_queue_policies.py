"""Queue arguments that may change live in RabbitMQ policies; a consumer takes
no message until its queues' policies are in force."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.subscriptions.handlers import stripe_events_queue
from shared import queues
from shared.broker import policies
from shared.broker.policies import Management, QueuePolicy, policies_for
from shared.broker.topology import (
    DEAD_LETTER_DELIVERY_LIMIT,
    DELIVERY_LIMIT,
    STRIPE_EVENTS,
    Binding,
    ConsumerQueue,
)
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count
from tests.support.gateway_client import post_event
from tests.support.policies import management
from tests.support.stack import delete_queues, reset_state, start_stack
from tests.support.waiting import eventually

SPEC = ConsumerQueue(
    name="orders.events", bindings=(Binding(STRIPE_EVENTS, "#"),), retry_delays_ms=(100, 400, 100)
)


def test_every_queue_of_the_topology_has_its_policy() -> None:
    by_queue = {p.queue: dict(p.definition) for p in policies_for(SPEC)}

    assert set(by_queue) == set(SPEC.queues)
    assert by_queue["orders.events"] == {
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "orders.events.dlq",
        "delivery-limit": DELIVERY_LIMIT,
    }
    assert by_queue["orders.events.dlq"] == {"delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}
    # A tier's TTL travels with its way back: without the policy its messages
    # wait, they never expire into nowhere.
    assert by_queue["orders.events.retry.400ms"] == {
        "message-ttl": 400,
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "orders.events",
        "dead-letter-strategy": "at-least-once",
        "overflow": "reject-publish",
    }


def test_a_policy_matches_its_queue_only() -> None:
    main = policies_for(SPEC)[0]
    assert main.body()["pattern"] == r"^orders\.events$"
    assert main.body()["apply-to"] == "queues"
    assert policies.problems([_as_listed(main)], [main]) == {}
    # The same pattern does not cover the retry tiers or the dead letters.
    others = policies_for(SPEC)[1:]
    assert set(policies.problems([_as_listed(main)], others)) == {p.queue for p in others}


def _as_listed(policy: QueuePolicy, **changes: Any) -> dict[str, Any]:
    """``policy`` as GET /api/policies lists it."""
    return {"name": policy.name, "vhost": "v", **policy.body(), **changes}


def test_problems_name_what_is_missing_or_shadowing() -> None:
    main = policies_for(SPEC)[0]
    mine = _as_listed(main)
    lowered = _as_listed(main, definition={**main.definition, "delivery-limit": 5})
    catch_all = {"name": "ha", "pattern": ".*", "apply-to": "all", "definition": {}}

    assert policies.problems([], [main]) == {"orders.events": "no policy matches it"}
    assert policies.problems([catch_all, mine], [main]) == {}
    assert "delivery-limit=20" in policies.problems([lowered], [main])["orders.events"]
    # RabbitMQ applies only the matching policy of highest priority.
    shadow = {**catch_all, "priority": 1000}
    assert "'ha' is in force" in policies.problems([shadow, mine], [main])["orders.events"]
    tie = {**catch_all, "priority": main.body()["priority"]}
    assert "same priority" in policies.problems([tie, mine], [main])["orders.events"]
    exchanges_only = {**shadow, "apply-to": "exchanges"}
    assert policies.problems([exchanges_only, mine], [main]) == {}


def test_the_management_api_is_found_from_the_amqp_url() -> None:
    plain = Management.for_broker("amqp://svc:p%40ss@rabbit.internal:5672/billing")
    assert plain.where == "http://rabbit.internal:15672"
    assert (plain.vhost, plain.user) == ("billing", "svc")
    tls = Management.for_broker("amqps://svc:pw@rabbit.internal/")
    assert tls.where == "https://rabbit.internal:15671"
    assert tls.vhost == "/"
    own = Management.for_broker("amqp://svc:pw@rabbit/", "https://admin:secret@mgmt.example:443/")
    # Its own user; and no password where the address is logged.
    assert (own.where, own.user, own.vhost) == ("https://mgmt.example:443", "admin", "/")


async def test_queues_are_declared_with_their_type_only(stack: Any) -> None:
    api = management()

    async def declared(name: str) -> dict[str, Any] | None:
        try:
            return await api.queue(name)
        except policies.ManagementError:
            return None

    for name in stripe_events_queue(env.FAST_RETRY_DELAYS_MS).queues:
        info = await eventually(lambda name=name: declared(name), what=name)  # type: ignore[misc]
        assert info["arguments"] == {"x-queue-type": "quorum"}, name


@pytest.fixture
async def without_subscriptions_policies() -> AsyncIterator[list[QueuePolicy]]:
    """The vhost as a fresh broker has it: no policy for the subscriptions queues."""
    await reset_state()
    wanted = policies.all_policies([stripe_events_queue(env.FAST_RETRY_DELAYS_MS)])
    api = management()
    present = {p["name"] for p in await api.policies()}
    for policy in wanted:
        if policy.name in present:
            await api.delete_policy(policy.name)
    yield wanted
    await policies.apply(api, wanted)


def _in_force(queue: str) -> float | None:
    return REGISTRY.get_sample_value("broker_queue_policy_in_force", {"queue": queue})


async def _ready(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


async def _migrate(service: str) -> None:
    """``python -m services.<service> migrate``, what the init container runs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{service}",
        "migrate",
        cwd=env.ROOT,
        env={
            **os.environ,
            "DATABASE_URL": env.DATABASE_URL,
            "AMQP_URL": env.AMQP_URL,
            "SERVICE_TOKEN": env.SERVICE_TOKEN,
            "RETRY_DELAYS_MS": "[" + ",".join(map(str, env.FAST_RETRY_DELAYS_MS)) + "]",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


async def test_no_message_is_taken_before_the_policies_are_in_force(
    without_subscriptions_policies: list[QueuePolicy],
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    # As in Kubernetes: the service itself neither migrates nor applies policies.
    stack = await start_stack(subscriptions={"migrate_on_start": False})
    try:
        subscriptions = stack.apps["subscriptions"].url
        status, body = await _ready(http, subscriptions)
        assert status == 503
        assert body["checks"] == {"database": True, "broker": True, "consumers": False}
        assert _in_force(queues.SUBSCRIPTIONS_STRIPE) == 0

        # The queue exists and keeps what arrives; nothing takes it.
        sub = so.subscription(status="active")
        assert (
            await post_event(http, stack.gateway, so.event("customer.subscription.created", sub))
        )[0] == 200
        await asyncio.sleep(1.5)
        assert await message_count(queues.SUBSCRIPTIONS_STRIPE) == 1

        await _migrate("subscriptions")

        await eventually(
            lambda: _ready(http, subscriptions),
            until=lambda r: r[0] == 200,
            timeout=20,
            what="consumers started once the policies are in force",
        )
        row = await eventually(
            lambda: db.fetchrow(
                "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
                sub["id"],
            ),
            what="the waiting event applied",
        )
        assert row["status"] == "active"
        assert await policies.verify(management(), without_subscriptions_policies) == {}
        assert _in_force(queues.SUBSCRIPTIONS_STRIPE) == 1
    finally:
        await stack.stop()


async def test_queues_declared_with_arguments_by_an_earlier_release_are_used_as_they_are(
    clean_state: None, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    spec = stripe_events_queue(env.FAST_RETRY_DELAYS_MS)
    # No queue of the family may exist yet: what the earlier release left is
    # declared here, and the declaration below would fail on a queue that
    # exists without those arguments.
    await delete_queues(list(spec.queues))
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        # What the previous release declared: the settings as arguments.
        await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": spec.dead_letter_queue,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )
    stack = await start_stack()
    try:
        sub = so.subscription(status="active")
        assert (
            await post_event(http, stack.gateway, so.event("customer.subscription.created", sub))
        )[0] == 200
        await eventually(
            lambda: db.fetchval(
                "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
                sub["id"],
            ),
            what="the event consumed from the queue of the earlier release",
        )
        assert (await _ready(http, stack.apps["subscriptions"].url))[0] == 200
    finally:
        await stack.stop()
        await delete_queues([spec.name])
