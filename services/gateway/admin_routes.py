"""The ``/v1/admin`` API: operator views over events, subscriptions and dead letters.

Each route names its owner and the owner's internal path. Ids in the path are
checked here so a malformed one gets a 400 at the door instead of a 404 (or
worse) further in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web

from services.gateway.auth import Authenticator, Role, require_role
from services.gateway.forward import Upstream
from shared.events import EVENT_ID, SUBSCRIPTION_ID
from shared.http.errors import ApiError


def _path_id(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
    value = request.match_info[name]
    if not pattern.match(value):
        raise ApiError(400, "invalid_id", f"{name} is not a valid id", param=name)
    return value


def add_admin_routes(
    app: web.Application, authenticator: Authenticator, upstreams: Mapping[str, Upstream]
) -> None:
    admin = require_role(authenticator, Role.ADMIN)
    webhooks, subscriptions = upstreams["webhooks"], upstreams["subscriptions"]

    async def list_events(request: web.Request) -> web.Response:
        return await webhooks.forward(request, "/internal/events")

    async def show_event(request: web.Request) -> web.Response:
        event_id = _path_id(request, "event_id", EVENT_ID)
        return await webhooks.forward(request, f"/internal/events/{event_id}")

    async def replay_event(request: web.Request) -> web.Response:
        event_id = _path_id(request, "event_id", EVENT_ID)
        return await webhooks.forward(request, f"/internal/events/{event_id}/replay")

    async def show_subscription(request: web.Request) -> web.Response:
        sub_id = _path_id(request, "stripe_subscription_id", SUBSCRIPTION_ID)
        return await subscriptions.forward(request, f"/internal/subscriptions/{sub_id}")

    async def list_dead_letters(request: web.Request) -> web.Response:
        return await webhooks.forward(request, "/internal/dead-letters")

    async def redrive_dead_letters(request: web.Request) -> web.Response:
        return await webhooks.forward(request, "/internal/dead-letters/redrive")

    app.router.add_get("/v1/admin/events", admin(list_events))
    app.router.add_get("/v1/admin/events/{event_id}", admin(show_event))
    app.router.add_post("/v1/admin/events/{event_id}/replay", admin(replay_event))
    app.router.add_get("/v1/admin/subscriptions/{stripe_subscription_id}", admin(show_subscription))
    app.router.add_get("/v1/admin/dead-letters", admin(list_dead_letters))
    app.router.add_post("/v1/admin/dead-letters/redrive", admin(redrive_dead_letters))
