"""What a dead-lettered message says about itself.

``Q.dlq`` holds each message with the headers the consumer added
(``x-last-error``, ``x-attempt``, ...) or, when RabbitMQ itself dead-lettered
it (the delivery limit), its ``x-death``. The dead-letter queues are only a
hand-over point: the webhooks service takes every message out of them into
its Postgres store (``services/webhooks/dead_letter_recorder.py``), where an
operator lists, redrives and discards them. Peeking at a queue instead would
hide the messages being looked at from everyone else and count as deliveries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage


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


def letter_key(message: AbstractIncomingMessage) -> str:
    """What identifies a dead letter within its queue: the message id (the
    event id), or a digest of the body for a message sent without one."""
    if message.message_id:
        return message.message_id
    return "sha256:" + hashlib.sha256(message.body).hexdigest()


def death_mark(headers: Mapping[str, Any]) -> str:
    """Which dead-lettering of a message this copy records.

    Every failure the consumer dead-letters stamps ``x-failed-at``; a redrive
    stamps ``x-redrive-id``; the broker's own dead-lettering counts in
    ``x-death``. The same copy delivered twice (recorded, then its ack lost)
    has the same mark; the same message failing again after a redrive has a
    new one.
    """
    parts = [
        _text(headers.get("x-failed-at")) or "",
        _text(headers.get("x-redrive-id")) or "",
        str(headers.get("x-attempt", "")),
    ]
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, Mapping):
                parts.append(f"{_text(death.get('queue'))}:{death.get('count')}")
    return "|".join(parts)


def json_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """AMQP headers as JSON (bytes as text, times as ISO 8601), for storing."""
    return {str(k): _json_value(v) for k, v in headers.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value
