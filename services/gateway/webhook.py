"""``POST /webhooks/stripe``: verify, check it is an event, publish, then 200.

The order is the point: Stripe gets a 2xx only after RabbitMQ confirmed the
event, so an event is never acknowledged and then lost. Anything we cannot
accept gets a 4xx (Stripe keeps retrying a 4xx too, and the dashboard shows
it); a broker problem gets a 503, so Stripe retries later. No database here:
the edge stays up and fast whatever the services behind it are doing.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.settings import GatewaySettings
from services.gateway.signature import SignatureRejected, verify
from shared import metrics
from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from shared.broker.topology import STRIPE_EVENTS
from shared.events import EVENT_ID, EVENT_TYPE, EVENT_TYPE_MAX_LENGTH
from shared.http.errors import json_error, json_response
from shared.logging import get_logger

log = get_logger(__name__)


class _EventHead(msgspec.Struct):
    """What the gateway routes by. msgspec checks the whole body is valid JSON
    but builds only these three fields, skipping the rest (the event's data,
    most of the bytes): a fraction of the cost of building the full object,
    and no garbage per webhook for the collector to chase."""

    id: Any = None
    type: Any = None
    object: Any = None


_decode_head = msgspec.json.Decoder(_EventHead).decode


def _reject(reason: str, status: int, code: str, message: str) -> web.Response:
    metrics.WEBHOOKS_REJECTED.labels(reason).inc()
    return json_error(status, code, message)


class WebhookEndpoint:
    def __init__(self, settings: GatewaySettings, publisher: Publisher) -> None:
        self._secrets = settings.webhook_secrets()
        self._tolerance = settings.webhook_tolerance_seconds
        self._max_bytes = settings.max_webhook_bytes
        self._publisher = publisher

    def _too_large(self) -> web.Response:
        limit = f"{self._max_bytes} bytes"
        return _reject("too_large", 413, "payload_too_large", f"body over the {limit} limit")

    async def handle(self, request: web.Request) -> web.Response:
        metrics.WEBHOOKS_RECEIVED.inc()
        if request.content_length is not None and request.content_length > self._max_bytes:
            return self._too_large()
        try:
            payload = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()

        try:
            verify(payload, request.headers.get("Stripe-Signature"), self._secrets, self._tolerance)
        except SignatureRejected as exc:
            return _reject(exc.reason, 400, f"invalid_{exc.reason}", exc.message)

        try:
            head = _decode_head(payload)
        except msgspec.DecodeError:
            return _reject("payload", 400, "invalid_payload", "body is not JSON")
        except msgspec.ValidationError:
            return _reject("payload", 400, "invalid_payload", "body is not a JSON object")
        if head.object == "v2.core.event":
            return _reject(
                "thin_event",
                400,
                "thin_event_unsupported",
                "v2 thin events are not accepted here; send snapshot (v1) events",
            )
        event_id, event_type = head.id, head.type
        if (
            head.object != "event"
            or not isinstance(event_id, str)
            or not EVENT_ID.fullmatch(event_id)
            or not isinstance(event_type, str)
            or len(event_type) > EVENT_TYPE_MAX_LENGTH
            or not EVENT_TYPE.fullmatch(event_type)
        ):
            return _reject(
                "payload", 400, "invalid_payload", "body is not a Stripe event (object, id, type)"
            )

        started = time.perf_counter()
        try:
            await self._publisher.publish(STRIPE_EVENTS, event_type, payload, message_id=event_id)
        except PublishFailed as exc:
            reason = "unroutable" if exc.reason == "unroutable" else "broker_unavailable"
            log.warning("webhook_not_published", event_id=event_id, reason=exc.reason)
            metrics.WEBHOOKS_REJECTED.labels(reason).inc()
            return json_error(
                503,
                "broker_unavailable",
                "event not accepted, retry later",
                headers={"Retry-After": "5"},
            )
        metrics.WEBHOOK_PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.WEBHOOKS_PUBLISHED.inc()
        return json_response({"received": True, "id": event_id})
