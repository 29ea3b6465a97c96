"""Raw AMQP access for tests: publish a message as-is, read a queue's messages."""

from __future__ import annotations

from typing import Any

import aio_pika

from tests.support import env


async def publish_raw(
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    message_id: str,
    headers: dict[str, Any] | None = None,
) -> None:
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
            mandatory=True,
        )


async def take_all(queue: str, *, limit: int = 100) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Consume (ack) every message currently in ``queue``; [] when it does not exist."""
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel()
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return taken
        while len(taken) < limit:
            message = await amqp_queue.get(no_ack=True, fail=False)
            if message is None:
                break
            taken.append(message)
    return taken


async def message_count(queue: str) -> int:
    """Ready messages in ``queue`` (0 when it does not exist)."""
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    async with connection:
        channel = await connection.channel()
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        return amqp_queue.declaration_result.message_count or 0


async def delete_queue_if_any(queue: str) -> None:
    connection = await aio_pika.connect(env.AMQP_URL, timeout=30)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


async def consumer_count(queue: str) -> int:
    """Consumers on ``queue`` (0 when it does not exist)."""
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        return amqp_queue.declaration_result.consumer_count or 0
