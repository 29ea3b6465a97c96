"""The ledger consumer: every Stripe event, stored once.

Bound to ``#`` on ``stripe.events``. The consumer base has already recorded
the event id in ``inbox`` (duplicates never reach this function and are
counted there), so this only writes the event row, verbatim. An event with a
NUL in its text (customer-supplied metadata, say) is stored too: ``payload``
(jsonb, which cannot hold a NUL) with U+FFFD in its place, and
``payload_text`` with the event as sent, which is what is shown and replayed.
"""

from __future__ import annotations

import orjson

from shared import metrics, queues
from shared.broker.handlers import ANY_TYPE, Context, Handlers
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.counting import count
from shared.db import jsonb_safe
from shared.events import StripeEvent

handlers = Handlers()


def ledger_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.WEBHOOKS_LEDGER,
        bindings=(Binding(STRIPE_EVENTS, "#"),),
        retry_delays_ms=tuple(retry_delays_ms),
    )


@handlers.on(ANY_TYPE, model=StripeEvent)
async def store_event(event: StripeEvent, ctx: Context) -> None:
    payload = dict(ctx.body)
    as_sent = None if jsonb_safe(payload) == payload else orjson.dumps(payload).decode()
    await ctx.conn.execute(
        "INSERT INTO events (id, type, api_version, livemode, created_at, payload, payload_text)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        event.id,
        event.type,
        event.api_version,
        event.livemode,
        from_unix(event.created),
        payload,
        as_sent,
    )
    count(metrics.LEDGER_EVENTS_STORED.labels(event.type))
