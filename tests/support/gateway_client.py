"""Talking to a running gateway the way Stripe and an operator do."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt

from tests.support import env
from tests.support import stripe_objects as so


async def post_event(
    http: aiohttp.ClientSession, gateway: str, evt: dict[str, Any]
) -> tuple[int, Any]:
    """POST a signed delivery of ``evt``; return the status and the JSON answer."""
    body = so.body_of(evt)
    async with http.post(
        f"{gateway}/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": so.signature(body), "Content-Type": "application/json"},
    ) as response:
        return response.status, await response.json(content_type=None)


def admin_headers(subject: str = "ops-test") -> dict[str, str]:
    token = jwt.encode(
        {"sub": subject, "role": "admin", "exp": int(time.time()) + 600},
        env.JWT_SECRET,
        algorithm="HS256",
    )
    return {"Authorization": f"Bearer {token}"}


async def admin_get(http: aiohttp.ClientSession, gateway: str, path: str, **params: str) -> Any:
    async with http.get(f"{gateway}{path}", params=params, headers=admin_headers()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def admin_post(
    http: aiohttp.ClientSession, gateway: str, path: str, payload: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"{gateway}{path}", json=payload, headers=admin_headers()) as response:
        return response.status, await response.json(content_type=None)
