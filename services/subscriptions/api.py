"""The subscriptions service's internal API."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from shared.http.errors import ApiError, json_response
from shared.runtime import POOL


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def subscription_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["stripe_subscription_id"],
        "customer": row["stripe_customer_id"],
        "status": row["status"],
        "price_id": row["price_id"],
        "current_period_start": _iso(row["current_period_start"]),
        "current_period_end": _iso(row["current_period_end"]),
        "cancel_at_period_end": row["cancel_at_period_end"],
        "canceled_at": _iso(row["canceled_at"]),
        "last_event": {
            "id": row["last_event_id"],
            "type": row["last_event_type"],
            "created": _iso(row["last_event_created"]),
        },
        "updated_at": _iso(row["updated_at"]),
    }


async def show_subscription(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1",
        request.match_info["subscription_id"],
    )
    if row is None:
        raise ApiError(404, "not_found", "no such subscription")
    return json_response(subscription_view(row))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/internal/subscriptions/{subscription_id}", show_subscription)
