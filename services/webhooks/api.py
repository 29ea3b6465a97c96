"""The webhooks service's internal API (reached through the gateway's /v1/admin)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from services.webhooks import queries
from services.webhooks.settings import WebhooksSettings
from shared import metrics, queues
from shared.broker import dead_letters
from shared.broker.errors import PublishFailed
from shared.broker.topology import STRIPE_EVENTS
from shared.events import EVENT_TYPE
from shared.http.errors import ApiError, json_response
from shared.http.idempotency import run_idempotent
from shared.runtime import AMQP, POOL, PUBLISHER

_MAX_LIMIT = 200


def _timestamp(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if raw.isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise ApiError(400, "invalid_parameter", f"{name} needs a timezone", param=name)
        # In UTC, so a time at the edge of the calendar fails here, not in the query.
        return value.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        # OSError: unix seconds beyond the platform's time_t.
        raise ApiError(
            400, "invalid_parameter", f"{name} must be unix seconds or ISO 8601", param=name
        ) from exc


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise ApiError(400, "invalid_parameter", f"limit must be 1-{_MAX_LIMIT}", param="limit")
    return int(raw)


async def list_events(request: web.Request) -> web.Response:
    cursor = None
    if "cursor" in request.query:
        try:
            cursor = queries.decode_cursor(request.query["cursor"])
        except (ValueError, TypeError, OverflowError) as exc:
            raise ApiError(400, "invalid_parameter", "cursor is not valid", param="cursor") from exc
    event_type = request.query.get("type") or None
    if event_type is not None and not EVENT_TYPE.match(event_type):
        raise ApiError(400, "invalid_parameter", "type is not an event type", param="type")
    flt = queries.EventFilter(
        type=event_type,
        created_gte=_timestamp(request, "created_gte"),
        created_lt=_timestamp(request, "created_lt"),
        cursor=cursor,
        limit=_limit(request),
    )
    data, next_cursor = await queries.list_events(request.app[POOL], queues.WEBHOOKS_LEDGER, flt)
    return json_response(
        {"data": data, "has_more": next_cursor is not None, "next_cursor": next_cursor}
    )


async def show_event(request: web.Request) -> web.Response:
    event = await queries.get_event(
        request.app[POOL], queues.WEBHOOKS_LEDGER, request.match_info["event_id"]
    )
    if event is None:
        raise ApiError(404, "not_found", "no such event")
    return json_response(event)


async def replay_event(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    pool = request.app[POOL]

    async def replay() -> tuple[int, Any]:
        event = await queries.get_event(pool, queues.WEBHOOKS_LEDGER, event_id)
        if event is None:
            raise ApiError(404, "not_found", "no such event")
        # Same id, so every consumer that already applied it skips it; the
        # ones that never did (dead-lettered, bound later) apply it now.
        try:
            await request.app[PUBLISHER].publish(
                STRIPE_EVENTS,
                event["type"],
                orjson.dumps(event["payload"]),
                message_id=event_id,
                headers={"x-replayed": True},
            )
        except PublishFailed as exc:
            raise ApiError(503, "broker_unavailable", "could not publish, retry later") from exc
        await queries.mark_replayed(pool, event_id)
        metrics.LEDGER_EVENTS_REPLAYED.inc()
        return 202, {"id": event_id, "replayed": True}

    return await run_idempotent(pool, request, b"", replay)


def _known_queue(settings: WebhooksSettings, queue: Any) -> str:
    known = settings.dead_letter_queue_names()
    if not isinstance(queue, str) or queue not in known:
        raise ApiError(400, "invalid_parameter", f"queue must be one of {known}", param="queue")
    return queue


async def list_dead_letters(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limit = settings.dead_letter_peek_limit
    if "limit" in request.query:
        limit = _limit(request)
    names = settings.dead_letter_queue_names()
    if "queue" in request.query:
        names = [_known_queue(settings, request.query["queue"])]
    views = [await dead_letters.inspect(request.app[AMQP], q, limit=limit) for q in names]
    return json_response(
        {
            "queues": [
                {
                    "queue": v.queue,
                    "dead_letter_queue": f"{v.queue}.dlq",
                    "declared": v.declared,
                    "count": v.count,
                    "messages": [m.__dict__ for m in v.messages],
                }
                for v in views
            ]
        }
    )


async def redrive_dead_letters(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await request.read()
    try:
        params = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", "body is not JSON") from exc
    if not isinstance(params, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    queue = _known_queue(settings, params.get("queue"))
    ids = params.get("message_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ApiError(
            400, "invalid_parameter", "message_ids must be a list of strings", param="message_ids"
        )

    async def redrive() -> tuple[int, Any]:
        try:
            moved = await dead_letters.redrive(
                request.app[AMQP],
                request.app[PUBLISHER],
                queue,
                message_ids=set(ids) if ids is not None else None,
            )
        except PublishFailed as exc:
            raise ApiError(503, "broker_unavailable", "could not publish, retry later") from exc
        return 200, {"queue": queue, "redriven": moved}

    return await run_idempotent(request.app[POOL], request, body, redrive)


SETTINGS = web.AppKey("settings", WebhooksSettings)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/internal/events", list_events)
    app.router.add_get("/internal/events/{event_id}", show_event)
    app.router.add_post("/internal/events/{event_id}/replay", replay_event)
    app.router.add_get("/internal/dead-letters", list_dead_letters)
    app.router.add_post("/internal/dead-letters/redrive", redrive_dead_letters)
