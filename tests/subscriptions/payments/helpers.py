"""Calling the payments API through the gateway as a member or staff, and
reading what the payments service wrote to its outbox."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg
import jwt
import orjson

from tests.support import env
from tests.support.waiting import eventually

MEMBER = "member_ada"
OTHER = "member_bob"
STAFF = "staff_sam"


def token(user: str, role: str = "member", email: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": user, "role": role, "exp": int(time.time()) + 600}
    if email:
        claims["email"] = email
    return jwt.encode(claims, env.JWT_SECRET, algorithm="HS256")


class Api:
    def __init__(self, http: aiohttp.ClientSession, gateway: str) -> None:
        self.http = http
        self.gateway = gateway

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: str = MEMBER,
        role: str = "member",
        json: Any = None,
        key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token(user, role)}"}
        if key:
            headers["Idempotency-Key"] = key
        async with self.http.request(
            method, f"{self.gateway}{path}", json=json, headers=headers, params=params
        ) as response:
            return response.status, await response.json(content_type=None)

    async def pay(
        self, items: list[dict[str, Any]], *, user: str = MEMBER, key: str | None = None
    ) -> tuple[int, Any]:
        return await self.call("POST", "/v1/payments", user=user, json={"items": items}, key=key)

    async def payment(self, payment_id: str, *, user: str = MEMBER) -> Any:
        status, body = await self.call("GET", f"/v1/payments/{payment_id}", user=user)
        assert status == 200, body
        return body

    async def until_status(self, payment_id: str, *wanted: str, timeout: float = 20.0) -> Any:
        async def probe() -> Any:
            return await self.payment(payment_id)

        return await eventually(
            probe,
            until=lambda p: p["status"] in wanted,
            timeout=timeout,
            what=f"payment {payment_id} in {wanted}",
        )

    async def refund(
        self, payment_id: str, amount: int | None, *, role: str = "staff", key: str | None = None
    ) -> tuple[int, Any]:
        body: dict[str, Any] = {"reason": "room was double-booked"}
        if amount is not None:
            body["amount"] = amount
        return await self.call(
            "POST",
            f"/v1/payments/{payment_id}/refunds",
            user=STAFF if role != "member" else MEMBER,
            role=role,
            json=body,
            key=key,
        )


def item(product: str, quantity: int, ref: str, **extra: Any) -> dict[str, Any]:
    return {"product": product, "quantity": quantity, "booking_ref": ref, **extra}


async def domain_events(db: asyncpg.Connection, event_type: str) -> list[dict[str, Any]]:
    """The payment events the service wrote to its outbox, oldest first."""
    rows = await db.fetch(
        "SELECT body FROM subscriptions.outbox WHERE routing_key = $1 ORDER BY seq", event_type
    )
    return [orjson.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows]


async def until_events(
    db: asyncpg.Connection, event_type: str, count: int = 1, timeout: float = 20.0
) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]]:
        return await domain_events(db, event_type)

    return await eventually(
        probe, until=lambda found: len(found) >= count, timeout=timeout, what=event_type
    )


async def until_applied(
    db: asyncpg.Connection, stripe_event_type: str, count: int = 1, timeout: float = 20.0
) -> None:
    """Until the payments consumer has applied ``count`` Stripe events of the type."""

    async def probe() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM subscriptions.inbox"
                " WHERE queue = 'subscriptions.payments' AND event_type = $1",
                stripe_event_type,
            )
        )

    await eventually(
        probe, until=lambda n: n >= count, timeout=timeout, what=f"{stripe_event_type} applied"
    )
