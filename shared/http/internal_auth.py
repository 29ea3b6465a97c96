"""Internal APIs accept only callers presenting this service's token.

The gateway authenticates end users and then calls a service's ``/internal``
API with ``Authorization: Bearer <token>``; the end user's id and role travel
in ``X-User-Id`` / ``X-User-Role`` for auditing. The services bind to
loopback or a private network, and the token is a second lock on that door.

Each service has a token of its own (its ``SERVICE_TOKEN``; the gateway holds
one per upstream, ``<SERVICE>_SERVICE_TOKEN``), so a token that leaks opens
one service, not all. ``SERVICE_TOKEN`` may list several, comma separated:
during a rotation the service accepts the new and the old one while its
callers switch (docs/runbook.md).
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.http.errors import json_error
from shared.http.middleware import Handler


def tokens_of(setting: str) -> list[str]:
    """The tokens a comma separated ``SERVICE_TOKEN`` holds; the first is current."""
    return [t.strip() for t in setting.split(",") if t.strip()]


def require_service_token(tokens: str) -> Middleware:
    expected = [f"Bearer {token}".encode() for token in tokens_of(tokens)]
    if not expected:
        raise ValueError("SERVICE_TOKEN must name at least one token")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/internal/"):
            presented = request.headers.get("Authorization", "").encode()
            # Every candidate compared, so the time taken says nothing about
            # which one came close.
            matches = [hmac.compare_digest(presented, candidate) for candidate in expected]
            if not any(matches):
                return json_error(401, "unauthorized", "service token required")
        return await handler(request)

    return middleware
