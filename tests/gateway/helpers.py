"""Helpers for tests that talk to a running gateway over HTTP.

Deliveries are signed like Stripe signs them; answers are read as the JSON a
client would see; "nothing was published" is checked the way an operator
would: the gateway's published counter did not move, and the ledger never
got the event even after a later, valid delivery made it through.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import asyncpg
import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.support import env
from tests.support import stripe_objects as so
from tests.support.waiting import eventually

WEBHOOK_PATH = "/webhooks/stripe"


# --- webhook deliveries -------------------------------------------------------


async def post_webhook(
    http: aiohttp.ClientSession,
    base_url: str,
    body: Any,
    signature: str | None,
    *,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """POST ``body`` to the gateway's webhook door; return (status, JSON answer)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if signature is not None:
        sent["Stripe-Signature"] = signature
    async with http.post(f"{base_url}{WEBHOOK_PATH}", data=body, headers=sent) as response:
        return response.status, await response.json(content_type=None)


async def deliver(
    http: aiohttp.ClientSession, base_url: str, evt: dict[str, Any], *, secret: str | None = None
) -> None:
    """Deliver ``evt`` signed with ``secret`` (default: the test secret); expect a 200."""
    body = so.body_of(evt)
    sig = so.signature(body, secret=secret or env.WEBHOOK_SECRET)
    status, answer = await post_webhook(http, base_url, body, sig)
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})


def a_valid_event(event_type: str = "invoice.paid") -> dict[str, Any]:
    """A Stripe event from the fixtures whose object is irrelevant to the test."""
    return so.event(event_type, so.fixture("invoice"))


def assert_error(
    status: int, answer: Any, expected_status: int, code: str, message: str | None = None
) -> None:
    """The documented error shape: ``{"error": {"code", "message", "details", "request_id"}}``."""
    assert status == expected_status, answer
    assert isinstance(answer, dict)
    assert set(answer) == {"error"}, answer
    error = answer["error"]
    assert error["code"] == code, answer
    assert isinstance(error["message"], str)
    assert error["message"], answer
    assert isinstance(error["details"], list), answer
    assert all(set(d) == {"field", "reason"} for d in error["details"]), answer
    assert isinstance(error["request_id"], str) and error["request_id"], answer
    if message is not None:
        assert message in error["message"], answer


# --- ledger -------------------------------------------------------------------


async def ledger_row(db: asyncpg.Connection, event_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM webhooks.events WHERE id = $1", event_id)


async def wait_in_ledger(db: asyncpg.Connection, event_id: str) -> asyncpg.Record:
    return await eventually(lambda: ledger_row(db, event_id), what=f"{event_id} in the ledger")


async def inbox_duplicates(db: asyncpg.Connection, schema: str, queue: str, event_id: str) -> Any:
    return await db.fetchval(
        f"SELECT duplicate_count FROM {schema}.inbox WHERE queue = $1 AND event_id = $2",  # noqa: S608
        queue,
        event_id,
    )


# --- metrics ------------------------------------------------------------------


async def metric(
    http: aiohttp.ClientSession, base_url: str, name: str, labels: Mapping[str, str] | None = None
) -> float:
    """A sample of ``/metrics`` as Prometheus would scrape it; 0 if not exposed yet."""
    async with http.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    wanted = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return 0.0


async def published_total(http: aiohttp.ClientSession, base_url: str) -> float:
    return await metric(http, base_url, "gateway_webhooks_published_total")


async def assert_never_published(
    http: aiohttp.ClientSession,
    base_url: str,
    db: asyncpg.Connection,
    event_id: str,
    published_before: float,
    *,
    secret: str | None = None,
) -> None:
    """Nothing went to the broker, and the ledger has no row for ``event_id``.

    A valid delivery sent afterwards must reach the ledger first, so the
    absence of ``event_id`` is not just "not yet".
    """
    assert await published_total(http, base_url) == published_before
    sentinel = a_valid_event()
    await deliver(http, base_url, sentinel, secret=secret)
    await wait_in_ledger(db, sentinel["id"])
    assert await ledger_row(db, event_id) is None


# --- client API auth ----------------------------------------------------------


def token(
    role: str = "admin",
    *,
    sub: str = "user_test_operator",
    expires_in: int = 300,
    secret: str = env.JWT_SECRET,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """An HS256 JWT as the product's identity provider would issue it."""
    payload: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time()) + expires_in}
    payload.update(claims)
    for name in drop:
        payload.pop(name, None)
    return jwt.encode(payload, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(
    header: dict[str, Any],
    claims: dict[str, Any],
    signature: bytes | None = None,
    *,
    digest: Any = None,
) -> str:
    """A JWT built by hand, for what PyJWT would refuse to produce here.

    Either a literal ``signature``, or an HMAC with the test secret using
    ``digest`` (``hashlib.sha256`` by default): the signature an
    algorithm-confusion attack would send.
    """
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if signature is None:
        signature = hmac.new(
            env.JWT_SECRET.encode(), signing_input.encode(), digest or hashlib.sha256
        ).digest()
    return f"{signing_input}.{_b64(signature)}"


def bearer(jwt_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_token}"}


async def api(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """Call the client API; return (status, JSON answer, response headers)."""
    async with http.request(method, url, headers=headers, params=params, data=data) as response:
        return response.status, await response.json(content_type=None), response.headers


async def admin(
    http: aiohttp.ClientSession,
    gateway: str,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """Call ``/v1/admin{path}`` on ``gateway`` with a valid admin token."""
    return await api(
        http,
        method,
        f"{gateway}/v1/admin{path}",
        headers={**bearer(token("admin")), **(headers or {})},
        params=params,
        data=data,
    )


async def delivered_subscription_event(
    http: aiohttp.ClientSession, gateway: str, db: asyncpg.Connection
) -> tuple[dict[str, Any], asyncpg.Record]:
    """A subscription event the ledger and the subscriptions service have both
    applied; returns the event and the subscription row it produced."""
    sub = so.subscription(status="active")
    evt = so.event("customer.subscription.created", sub)
    await deliver(http, gateway, evt)
    await wait_in_ledger(db, evt["id"])
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT * FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub["id"],
        ),
        what="subscription row",
    )
    return evt, row
