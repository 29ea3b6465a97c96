"""What the subscriptions tests share: the seeded catalog, members' tokens,
API calls through the gateway, and the domain events the service wrote."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import jwt
import stripe

from services.subscriptions import seed_catalog
from shared import catalog
from shared.broker.topology import BILLING_EVENTS
from shared.stripe_client import StripeSettings, stripe_client
from tests.support import env
from tests.support.waiting import eventually

DAY = 86_400
HOUR = 3_600


async def seed(sandbox_url: str) -> dict[str, str]:
    """``make seed`` against the sandbox: lookup key -> price id."""
    client = stripe_client(StripeSettings(stripe_api_base=sandbox_url))
    return await asyncio.to_thread(seed_catalog.seed, client, catalog.default())


def token(
    user_id: str, *, role: str = "member", email: str | None = None, tier: str | None = None
) -> str:
    claims: dict[str, Any] = {"sub": user_id, "role": role, "exp": int(time.time()) + 3600}
    if email:
        claims["email"] = email
    if tier:
        claims["discount_tier"] = tier
    return jwt.encode(claims, env.JWT_SECRET, algorithm="HS256")


def headers(
    user_id: str | None, *, idempotency_key: str | None = None, **claims: Any
) -> dict[str, str]:
    values: dict[str, str] = {}
    if user_id is not None:
        values["Authorization"] = f"Bearer {token(user_id, **claims)}"
    if idempotency_key:
        values["Idempotency-Key"] = idempotency_key
    return values


async def api(
    http: aiohttp.ClientSession,
    gateway: str,
    method: str,
    path: str,
    user_id: str | None,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    **claims: Any,
) -> tuple[int, Any]:
    async with http.request(
        method,
        f"{gateway}{path}",
        json=body,
        params=params,
        headers=headers(user_id, idempotency_key=idempotency_key, **claims),
    ) as response:
        return response.status, await response.json(content_type=None)


async def outbox(db: asyncpg.Connection, event_type: str | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT body FROM subscriptions.outbox WHERE $1::text IS NULL OR routing_key = $1"
        " ORDER BY seq",
        event_type,
    )
    return [r["body"] if isinstance(r["body"], dict) else json.loads(r["body"]) for r in rows]


async def wait_outbox(
    db: asyncpg.Connection, event_type: str, count: int = 1, timeout: float = 20
) -> list[dict[str, Any]]:
    return await eventually(
        lambda: outbox(db, event_type),
        until=lambda found: len(found) >= count,
        timeout=timeout,
        what=f"{count} {event_type} in the outbox",
    )


async def subscription_row(db: asyncpg.Connection, sub_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1", sub_id
    )


async def bind_events_queue(name: str | None = None) -> str:
    """A queue of ours bound to every domain event on ``billing.events``."""
    queue = name or f"test.billing-events.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            BILLING_EVENTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, "#")
    return queue


async def new_member_customer(
    client: stripe.StripeClient,
    user_id: str,
    *,
    card: str | None = "pm_card_visa",
    clock: str | None = None,
) -> str:
    params: dict[str, Any] = {"email": f"{user_id}@example.com", "metadata": {"user_id": user_id}}
    if clock:
        params["test_clock"] = clock
    customer = await client.v1.customers.create_async(params)  # type: ignore[arg-type]
    if card:
        pm = await client.v1.payment_methods.attach_async(card, {"customer": customer.id})
        await client.v1.customers.update_async(
            customer.id, {"invoice_settings": {"default_payment_method": pm.id}}
        )
    return customer.id


PUBLISHABLE = {"Authorization": "Bearer pk_test_sandbox"}


async def confirm_in_browser(
    http: aiohttp.ClientSession, sandbox_url: str, client_secret: str, card: str = "pm_card_visa"
) -> tuple[int, Any]:
    """What Stripe.js does with a client secret: confirm with the publishable key."""
    intent = client_secret.split("_secret_", maxsplit=1)[0]
    kind = "setup_intents" if intent.startswith("seti_") else "payment_intents"
    async with http.post(
        f"{sandbox_url}/v1/{kind}/{intent}/confirm",
        data={"client_secret": client_secret, "payment_method": card},
        headers=PUBLISHABLE,
    ) as response:
        return response.status, await response.json()
