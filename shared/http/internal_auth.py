"""Internal APIs accept only callers presenting the service token.

The gateway authenticates end users and then calls a service's ``/internal``
API with ``Authorization: Bearer <SERVICE_TOKEN>``; the end user's id and role
travel in ``X-User-Id`` / ``X-User-Role`` for auditing. The services bind to
loopback or a private network, and the token is a second lock on that door.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.http.errors import json_error
from shared.http.middleware import Handler


def require_service_token(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/internal/"):
            presented = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(presented, expected):
                return json_error(401, "unauthorized", "service token required")
        return await handler(request)

    return middleware
