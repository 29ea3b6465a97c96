"""Inspect and redrive dead-letter queues.

RabbitMQ is the store of dead letters: ``Q.dlq`` holds each message with the
headers the consumer added (``x-last-error``, ``x-attempt``, ...). Inspecting
takes messages with ``basic.get`` on a private channel and closes the channel
without acking, so they all go back; redriving acks a message from the DLQ
only after its copy into ``Q`` was confirmed, so a crash in between leaves a
duplicate (which the consumer's inbox absorbs), never a loss.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared import metrics
from shared.broker.publisher import Publisher
from shared.broker.topology import dead_letter_queue


@dataclass(frozen=True)
class DeadLetter:
    message_id: str | None
    event_type: str | None
    attempts: int
    last_error: str | None
    failed_at: str | None
    original_routing_key: str | None
    body: Any

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        try:
            body: Any = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            body = message.body.decode("utf-8", errors="replace")
        event_type = body.get("type") if isinstance(body, dict) else None
        attempt = headers.get("x-attempt", 0)
        return cls(
            message_id=message.message_id,
            event_type=event_type if isinstance(event_type, str) else None,
            attempts=attempt if isinstance(attempt, int) else 0,
            last_error=_text(headers.get("x-last-error")) or _broker_reason(headers),
            failed_at=_text(headers.get("x-failed-at")),
            original_routing_key=_text(headers.get("x-original-routing-key")),
            body=body,
        )


@dataclass(frozen=True)
class DeadLetterQueue:
    queue: str
    count: int
    messages: list[DeadLetter]
    declared: bool = True


def _broker_reason(headers: Mapping[str, Any]) -> str | None:
    """Why RabbitMQ itself dead-lettered a message (no consumer wrote a reason):
    typically ``delivery_limit``, a message whose handling kept killing the
    consumer before it could record anything."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    reason = _text(deaths[0].get("reason"))
    queue = _text(deaths[0].get("queue"))
    return f"dead-lettered by the broker ({reason}) from {queue}" if reason else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


async def inspect(
    connection: AbstractRobustConnection, queue: str, *, limit: int = 50
) -> DeadLetterQueue:
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            dlq = await channel.declare_queue(dead_letter_queue(queue), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return DeadLetterQueue(queue=queue, count=0, messages=[], declared=False)
        # The declare's count of a quorum queue lags: messages another channel
        # just returned (an inspect a moment ago) may be missing from it, while
        # basic.get already sees them. So read until the queue is empty.
        count = dlq.declaration_result.message_count or 0
        messages: list[DeadLetter] = []
        while len(messages) < limit:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                break
            messages.append(DeadLetter.from_message(message))
        return DeadLetterQueue(queue=queue, count=max(count, len(messages)), messages=messages)
    finally:
        # Closing without ack returns every message we looked at.
        if not channel.is_closed:
            await channel.close()


async def redrive(
    connection: AbstractRobustConnection,
    publisher: Publisher,
    queue: str,
    *,
    message_ids: set[str] | None = None,
    limit: int = 1_000,
) -> int:
    """Move dead letters of ``queue`` back into it; all, or those with ``message_ids``."""
    channel = await connection.channel(publisher_confirms=False)
    moved = 0
    try:
        try:
            dlq = await channel.declare_queue(dead_letter_queue(queue), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        # Not bounded by the declare's message count: it lags (see inspect).
        # Skipped messages stay unacked on this channel, so get never returns
        # them twice and the loop ends when the queue has nothing ready; a
        # message this call moved that failed again straight back into the DLQ
        # carries this call's token and is left there, not moved in a loop.
        token = uuid.uuid4().hex
        while moved < limit:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                break
            if message_ids is not None and message.message_id not in message_ids:
                continue  # returned to the DLQ when the channel closes
            if _text((message.headers or {}).get("x-redrive-id")) == token:
                continue  # likewise
            headers = dict(message.headers or {})
            headers["x-attempt"] = 0
            headers["x-redrive-id"] = token
            headers["x-redriven-at"] = datetime.now(UTC).isoformat()
            await publisher.publish(
                "", queue, message.body, message_id=message.message_id or "", headers=headers
            )
            await message.ack()
            moved += 1
            metrics.DEAD_LETTERS_REDRIVEN.labels(queue).inc()
    finally:
        if not channel.is_closed:
            await channel.close()
    return moved
