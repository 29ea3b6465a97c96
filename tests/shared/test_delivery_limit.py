"""A message that keeps coming back unacknowledged (its handling crashes the
consumer every time) is dead-lettered by RabbitMQ itself after the delivery
limit of its queue's policy, and the dead-letter view says so. The limit is a
policy, so changing it needs no new queue and fails no declare."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from shared.broker import dead_letters, policies
from shared.broker.topology import (
    DELIVERY_LIMIT,
    STRIPE_EVENTS,
    Binding,
    ConsumerQueue,
    declare_consumer_queue,
)
from tests.support import env
from tests.support.amqp import message_count, take_all
from tests.support.policies import management, queue_policies
from tests.support.stack import delete_queues, queue_family
from tests.support.waiting import eventually


@pytest.fixture
async def connection() -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(env.AMQP_URL)
    yield connection
    await connection.close()


@pytest.fixture
async def spec() -> AsyncIterator[ConsumerQueue]:
    queue = ConsumerQueue(
        name=f"test.poison.{uuid.uuid4().hex[:8]}",
        bindings=(Binding(STRIPE_EVENTS, "test.poison"),),
        retry_delays_ms=tuple(env.FAST_RETRY_DELAYS_MS),
    )
    yield queue
    await delete_queues(queue_family(queue.name, queue.retry_delays_ms))


async def _return_until_dead_lettered(queue: AbstractQueue, at_most: int) -> int:
    """Return the message unacked (what a consumer dying mid-message does)
    until the queue stops giving it back; how many returns that took."""
    returns = 0
    while (message := await _next(queue)) is not None:
        assert returns < at_most, f"still delivered after {returns} returns"
        await message.nack(requeue=True)
        returns += 1
    return returns


async def _next(queue: AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage | None:
    # A returned message is back in the queue a moment later; an empty answer
    # is final only once it stays empty.
    for _ in range(20):
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    return None


async def _dead_lettered(spec: ConsumerQueue) -> None:
    await eventually(
        lambda: message_count(spec.dead_letter_queue),
        until=lambda n: n == 1,
        what="the message in the DLQ",
    )
    [message] = await take_all(spec.dead_letter_queue)
    letter = dead_letters.DeadLetter.from_message(message)
    assert letter.message_id == "m1"
    assert letter.last_error is not None
    assert "delivery_limit" in letter.last_error


async def _publish(channel: aio_pika.abc.AbstractChannel, spec: ConsumerQueue) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(b'{"id": "evt_poison", "type": "test.poison"}', message_id="m1"),
        routing_key=spec.name,
    )


async def test_poison_message_lands_in_the_dlq_with_the_broker_reason(
    connection: AbstractRobustConnection, spec: ConsumerQueue
) -> None:
    async with queue_policies(spec):
        channel = await connection.channel()
        queue = await declare_consumer_queue(channel, spec)
        await _publish(channel, spec)

        returns = await _return_until_dead_lettered(queue, at_most=DELIVERY_LIMIT + 5)

        assert returns == DELIVERY_LIMIT + 1
        await _dead_lettered(spec)
        await channel.close()


async def test_a_changed_delivery_limit_needs_no_new_queue(
    connection: AbstractRobustConnection, spec: ConsumerQueue
) -> None:
    async with queue_policies(spec) as wanted:
        channel = await connection.channel()
        await declare_consumer_queue(channel, spec)
        await channel.close()

        # A later release lowers the limit: its policy changes, the queue stays.
        main = next(p for p in wanted if p.queue == spec.name)
        lowered = replace(main, definition={**main.definition, "delivery-limit": 2})
        assert await policies.apply(management(), [lowered]) == [spec.name]

        channel = await connection.channel()
        queue = await declare_consumer_queue(channel, spec)  # no PRECONDITION_FAILED
        await _publish(channel, spec)
        returns = await _return_until_dead_lettered(queue, at_most=DELIVERY_LIMIT)

        # Three returns with a limit of 2 (RabbitMQ may take a moment to apply
        # the change to a quorum queue); far fewer than the old limit's 21.
        assert returns < DELIVERY_LIMIT
        await _dead_lettered(spec)
        await channel.close()
