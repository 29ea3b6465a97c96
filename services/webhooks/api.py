"""The webhooks service's API (``services/webhooks/contract.py``), served on ``/internal``."""

from __future__ import annotations

import orjson
from aiohttp import web

from services.webhooks import contract, queries
from services.webhooks.settings import WebhooksSettings
from shared import audit, metrics, queues
from shared.api.pagination import Page
from shared.api.service import Call, Empty, ServiceRoutes
from shared.broker import dead_letters
from shared.broker.errors import PublishFailed
from shared.broker.topology import STRIPE_EVENTS
from shared.db import DbConnection
from shared.http.errors import invalid_field, not_found, unavailable
from shared.runtime import AMQP, PUBLISHER

SETTINGS = web.AppKey("settings", WebhooksSettings)

routes = ServiceRoutes("webhooks", contract.ENDPOINTS)


@routes.implement(contract.LIST_EVENTS)
async def list_events(
    call: Call[Empty, contract.EventsQuery],
) -> Page[contract.EventSummary]:
    return await queries.list_events(call.pool, queues.WEBHOOKS_LEDGER, call.query)


@routes.implement(contract.SHOW_EVENT)
async def show_event(call: Call[Empty, Empty]) -> contract.EventDetail:
    event = await queries.get_event(call.pool, queues.WEBHOOKS_LEDGER, call.path["event_id"])
    if event is None:
        raise not_found("event")
    return event


@routes.implement(contract.REPLAY_EVENT)
async def replay_event(call: Call[contract.ReplayRequest, Empty]) -> contract.ReplayResult:
    event_id = call.path["event_id"]
    event = await queries.get_event(call.pool, queues.WEBHOOKS_LEDGER, event_id)
    if event is None:
        raise not_found("event")
    # Same id, so every consumer that already applied it skips it; the ones
    # that never did (dead-lettered, bound later) apply it now.
    try:
        await call.request.app[PUBLISHER].publish(
            STRIPE_EVENTS,
            event.type,
            orjson.dumps(event.payload),
            message_id=event_id,
            headers={"x-replayed": True},
        )
    except PublishFailed as exc:
        raise unavailable("broker") from exc
    metrics.LEDGER_EVENTS_REPLAYED.inc()

    async def effect(conn: DbConnection) -> contract.ReplayResult:
        await queries.mark_replayed(conn, event_id)
        await audit.record(
            conn,
            caller=call.caller,
            action="event.replay",
            target_type="event",
            target_id=event_id,
            reason=call.body.reason,
            request_id=call.request_id,
        )
        return contract.ReplayResult(id=event_id, replayed=True)

    return await call.commit(effect)


def _known_queue(settings: WebhooksSettings, queue: str, field: str = "queue") -> str:
    known = settings.dead_letter_queue_names()
    if queue not in known:
        raise invalid_field(field, f"must be one of {known}")
    return queue


@routes.implement(contract.LIST_DEAD_LETTERS)
async def list_dead_letters(call: Call[Empty, contract.DeadLettersQuery]) -> contract.DeadLetters:
    settings = call.request.app[SETTINGS]
    limit = call.query.limit or settings.dead_letter_peek_limit
    names = settings.dead_letter_queue_names()
    if call.query.queue is not None:
        names = [_known_queue(settings, call.query.queue)]
    connection = call.request.app[AMQP]
    views = [await dead_letters.inspect(connection, q, limit=limit) for q in names]
    return contract.DeadLetters(
        queues=[
            contract.DeadLetterQueueView(
                queue=v.queue,
                dead_letter_queue=f"{v.queue}.dlq",
                declared=v.declared,
                count=v.count,
                messages=[contract.DeadLetterView(**m.__dict__) for m in v.messages],
            )
            for v in views
        ]
    )


@routes.implement(contract.REDRIVE_DEAD_LETTERS)
async def redrive_dead_letters(
    call: Call[contract.RedriveRequest, Empty],
) -> contract.RedriveResult:
    queue = _known_queue(call.request.app[SETTINGS], call.body.queue)
    ids = call.body.message_ids
    try:
        moved = await dead_letters.redrive(
            call.request.app[AMQP],
            call.request.app[PUBLISHER],
            queue,
            message_ids=set(ids) if ids is not None else None,
        )
    except PublishFailed as exc:
        raise unavailable("broker") from exc

    async def effect(conn: DbConnection) -> contract.RedriveResult:
        await audit.record(
            conn,
            caller=call.caller,
            action="dead_letters.redrive",
            target_type="queue",
            target_id=queue,
            reason=call.body.reason,
            request_id=call.request_id,
            details={"message_ids": ids, "redriven": moved},
        )
        return contract.RedriveResult(queue=queue, redriven=moved)

    return await call.commit(effect)
