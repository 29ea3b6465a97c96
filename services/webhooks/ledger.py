"""The ledger consumer: every Stripe event, stored once.

Bound to ``#`` on ``stripe.events``. The consumer base has already recorded
the event id in ``inbox`` (duplicates never reach this function and are
counted there), so this only writes the event row.
"""

from __future__ import annotations

from typing import Any

from shared import metrics, queues
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.db import DbConnection
from shared.events import StripeEvent


def ledger_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.WEBHOOKS_LEDGER,
        bindings=(Binding(STRIPE_EVENTS, "#"),),
        retry_delays_ms=tuple(retry_delays_ms),
    )


async def store_event(body: dict[str, Any], conn: DbConnection) -> None:
    event = StripeEvent.model_validate(body)
    await conn.execute(
        "INSERT INTO events (id, type, api_version, livemode, created_at, payload)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        event.id,
        event.type,
        event.api_version,
        event.livemode,
        from_unix(event.created),
        body,
    )
    metrics.LEDGER_EVENTS_STORED.labels(event.type).inc()
