"""A failed message whose copy to a retry or dead-letter queue cannot be
published (the publisher's broker connection refused, or stalled so that no
confirm comes) is held unacknowledged, never handed back to its queue: it
keeps its retry budget instead of burning the queue's delivery limit in
milliseconds, and it is handled, once, when publishing works again. Stopping
the consumer returns a held message to its queue unacknowledged, promptly.

The consumer here is the real one, on a queue of its own; only its publisher
goes through a proxy, which plays the broker going away for publishes while
deliveries keep coming.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict

from shared.broker.consumer import Consumer
from shared.broker.handlers import ANY_TYPE, Context, Handlers
from shared.broker.publisher import Publisher
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count, publish_raw
from tests.support.policies import queue_policies
from tests.support.stack import delete_queues, queue_family
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually

DELAYS = tuple(env.FAST_RETRY_DELAYS_MS)
# Long enough for a message handed back to its queue on every failure to hit
# the delivery limit (20) many times over: that takes milliseconds.
BLOCKED_FOR_S = 1.5


class AnyMessage(BaseModel):
    model_config = ConfigDict(extra="allow")


class ObservedConsumer(Consumer):
    """The real consumer; it only notes each delivery's x-attempt."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts: dict[str, list[int | None]] = defaultdict(list)

    async def process(self, message: AbstractIncomingMessage) -> None:
        attempt = (message.headers or {}).get("x-attempt")
        self.attempts[message.message_id or ""].append(
            attempt if isinstance(attempt, int) else None
        )
        await super().process(message)


@dataclass
class Rig:
    spec: ConsumerQueue
    pool: asyncpg.Pool
    publisher: Publisher
    proxy: TcpProxy
    connection: AbstractRobustConnection
    routing_key: str
    broken: bool = True
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    consumers: list[Consumer] = field(default_factory=list)

    def handlers(self) -> Handlers:
        handlers = Handlers()

        @handlers.on(ANY_TYPE, model=AnyMessage)
        async def handle(_: AnyMessage, ctx: Context) -> None:
            """Fails while the rig is broken (the same outage, say); applies once it is not."""
            self.calls[ctx.message_id] += 1
            if self.broken:
                raise RuntimeError("downstream unavailable")
            await ctx.conn.execute("INSERT INTO effects (event_id) VALUES ($1)", ctx.message_id)

        return handlers

    async def start_consumer(self) -> ObservedConsumer:
        consumer = ObservedConsumer(
            queue=self.spec,
            pool=self.pool,
            publisher=self.publisher,
            handlers=self.handlers(),
            source="test",
            prefetch=8,
        )
        await consumer.start(self.connection)
        self.consumers.append(consumer)
        return consumer

    async def send(self) -> str:
        event_id = so.new_id("evt")
        body = {"id": event_id, "object": "event", "type": self.routing_key, "data": {}}
        await publish_raw(STRIPE_EVENTS, self.routing_key, orjson.dumps(body), message_id=event_id)
        return event_id

    async def effects(self, event_ids: list[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT event_id, count(*) AS n FROM effects WHERE event_id = ANY($1) GROUP BY 1",
            event_ids,
        )
        return {r["event_id"]: r["n"] for r in rows}

    def held(self) -> float:
        value = REGISTRY.get_sample_value("consumer_messages_held", {"queue": self.spec.name})
        return value or 0.0


@pytest.fixture
async def rig(broker_proxy: TcpProxy, tmp_path: Path) -> AsyncIterator[Rig]:
    suffix = uuid.uuid4().hex[:10]
    schema = f"spine_copies_{suffix}"
    routing_key = f"test.retry_copies_{suffix}.event"
    spec = ConsumerQueue(
        name=f"test.retry-copies.{suffix}",
        bindings=(Binding(STRIPE_EVENTS, routing_key),),
        retry_delays_ms=DELAYS,
    )
    (tmp_path / "0001_effects.sql").write_text("CREATE TABLE effects (event_id text NOT NULL);")
    admin = await asyncpg.connect(env.DATABASE_URL)
    await migrate(admin, schema, tmp_path, shared=SHARED_MIGRATIONS)
    pool = await create_pool(env.DATABASE_URL, schema, min_size=1, max_size=4)
    publisher = Publisher(
        via_proxy(env.AMQP_URL, broker_proxy), name="test-retry-copies", confirm_timeout=1.0
    )
    await publisher.start(wait=5.0)
    connection = await aio_pika.connect_robust(env.AMQP_URL)
    running = Rig(spec, pool, publisher, broker_proxy, connection, routing_key)
    try:
        async with queue_policies(spec):
            yield running
    finally:
        broker_proxy.restore()
        for consumer in running.consumers:
            await consumer.stop(grace=2.0)
        await connection.close()
        await publisher.close()
        await pool.close()
        await delete_queues(queue_family(spec.name, DELAYS))
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def _publisher_blocked(rig: Rig, how: str) -> None:
    if how == "refused":
        rig.proxy.refuse()
        await eventually(
            lambda: _now(not rig.publisher.ready), what="publisher disconnected", timeout=5
        )
    else:
        rig.proxy.stall()  # connected, but nothing is confirmed


async def _now(value: bool) -> bool:
    """For eventually(): the condition as evaluated at each poll."""
    return value


@pytest.mark.parametrize("how", ["refused", "stalled"])
async def test_messages_keep_their_retry_budget_while_copies_cannot_be_published(
    rig: Rig, how: str
) -> None:
    consumer = await rig.start_consumer()
    await _publisher_blocked(rig, how)

    sent = [await rig.send() for _ in range(5)]
    await eventually(
        lambda: _now(all(rig.calls[i] >= 1 for i in sent)), what="every message tried once"
    )
    await asyncio.sleep(BLOCKED_FOR_S)

    # Each failed once and waits for its copy: not redelivered again and
    # again, not dead-lettered by the queue's delivery limit.
    assert {i: rig.calls[i] for i in sent} == dict.fromkeys(sent, 1)
    assert await message_count(rig.spec.dead_letter_queue) == 0
    assert rig.held() == len(sent)

    rig.broken = False
    rig.proxy.restore()

    await eventually(
        lambda: rig.effects(sent),
        until=lambda effects: effects == dict.fromkeys(sent, 1),
        timeout=30,
        what="every message applied once after publishing came back",
    )
    for event_id in sent:
        # The second try came through the first retry tier, as if the
        # publisher had never been away.
        attempts = consumer.attempts[event_id]
        assert attempts[:2] == [None, 1], attempts
    await eventually(lambda: _now(rig.held() == 0), what="nothing held any more")
    assert await message_count(rig.spec.dead_letter_queue) == 0
    # Copies that did reach the broker before a confirm was lost are
    # duplicates the inbox absorbs: still one effect each.
    await asyncio.sleep(0.5)
    assert await rig.effects(sent) == dict.fromkeys(sent, 1)


async def test_stopping_returns_a_held_message_to_its_queue_unacked_and_promptly(
    rig: Rig,
) -> None:
    await rig.start_consumer()
    await _publisher_blocked(rig, "refused")
    event_id = await rig.send()
    await eventually(lambda: _now(rig.held() == 1), what="the message held")

    started = time.monotonic()
    await rig.consumers.pop().stop(grace=10.0)
    took = time.monotonic() - started

    assert took < 3.0, f"stop waited {took:.1f}s on a held message"
    await eventually(
        lambda: message_count(rig.spec.name),
        until=lambda n: n == 1,
        what="the held message back in its queue",
    )
    assert await message_count(rig.spec.dead_letter_queue) == 0
    assert rig.held() == 0

    # The next consumer gets it with the attempt count it had: no retry was spent.
    rig.broken = False
    rig.proxy.restore()
    consumer = await rig.start_consumer()
    await eventually(
        lambda: rig.effects([event_id]),
        until=lambda effects: effects == {event_id: 1},
        what="applied by the next consumer",
    )
    assert consumer.attempts[event_id] == [None]
