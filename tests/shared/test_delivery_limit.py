"""A message that keeps coming back unacknowledged (its handling crashes the
consumer every time) is dead-lettered by RabbitMQ itself after the delivery
limit, and the dead-letter view says so."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared.broker import dead_letters
from shared.broker.topology import (
    DELIVERY_LIMIT,
    STRIPE_EVENTS,
    Binding,
    ConsumerQueue,
    declare_consumer_queue,
)
from tests.support import env
from tests.support.stack import delete_queues, queue_family
from tests.support.waiting import eventually


@pytest.fixture
async def connection() -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(env.AMQP_URL)
    yield connection
    await connection.close()


async def test_poison_message_lands_in_the_dlq_with_the_broker_reason(
    connection: AbstractRobustConnection,
) -> None:
    spec = ConsumerQueue(
        name=f"test.poison.{uuid.uuid4().hex[:8]}",
        bindings=(Binding(STRIPE_EVENTS, "test.poison"),),
        retry_delays_ms=tuple(env.FAST_RETRY_DELAYS_MS),
    )
    channel = await connection.channel()
    try:
        queue = await declare_consumer_queue(channel, spec)
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"id": "evt_poison", "type": "test.poison"}', message_id="m1"),
            routing_key=spec.name,
        )
        # Each return without ack is what a consumer dying mid-message does.
        for _ in range(DELIVERY_LIMIT + 1):
            message = await eventually(
                lambda: queue.get(no_ack=False, fail=False), what="the poison message"
            )
            await message.nack(requeue=True)

        view = await eventually(
            lambda: dead_letters.inspect(connection, spec.name),
            until=lambda v: v.count == 1,
            what="the message in the DLQ",
        )
        assert view.messages[0].message_id == "m1"
        assert view.messages[0].last_error is not None
        assert "delivery_limit" in view.messages[0].last_error
        assert await queue.get(no_ack=False, fail=False) is None
    finally:
        await channel.close()
        await delete_queues(queue_family(spec.name, spec.retry_delays_ms))
