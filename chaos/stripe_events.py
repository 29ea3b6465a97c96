"""Stripe event payloads and their signature, as Stripe sends them.

Objects start from Stripe's own examples (``stripe_sandbox.fixtures``), so
their shape is the current API's; the envelope is the ``event`` example. The
signature is stripe-python's, made with the endpoint secret the gateway is
given, at the moment of each delivery attempt (as Stripe signs each attempt).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import stripe

from chaos.domain import StripeEvent
from stripe_sandbox.fixtures import template


def stripe_object(resource: str, **values: Any) -> dict[str, Any]:
    obj = template(resource)
    obj.update(values)
    return obj


def body_of(event: StripeEvent) -> bytes:
    envelope = template("event")
    envelope.update(
        id=event.id,
        object="event",
        type=event.type,
        created=event.created,
        api_version=stripe.api_version,
        livemode=False,
        pending_webhooks=1,
        request={"id": None, "idempotency_key": None},
        data={"object": event.build()},
    )
    return orjson.dumps(envelope)


def signature_header(body: bytes, secret: str) -> str:
    """``Stripe-Signature`` for ``body`` now: ``t=<unix>,v1=<HMAC-SHA256>``, made by
    the same library the gateway verifies with."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time())
    )
    return header
