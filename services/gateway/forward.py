"""Forwarding an authenticated client call to the service that owns it.

The gateway holds no business state: it checks who is calling and what the
path looks like, then relays to the owning service's ``/internal`` API with
the service token, the caller's identity, the request id and any
``Idempotency-Key``. The owner's answer (status and JSON body) goes back as
it is; no answer becomes a 502, a slow one a 504.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from services.gateway.auth import principal_of
from shared import metrics
from shared.http.errors import ApiError
from shared.logging import current_context

# One pooled HTTP client per gateway process, opened and closed with the app.
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
_FORWARDED_HEADERS = ("Idempotency-Key", "Content-Type")
# Headers of the owner's answer the client needs to see.
_RELAYED_HEADERS = ("Idempotent-Replayed", "Retry-After")


class Upstream:
    def __init__(self, name: str, base_url: str, service_token: str) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._auth = f"Bearer {service_token}"

    async def forward(self, request: web.Request, path: str) -> web.Response:
        principal = principal_of(request)
        headers = {
            "Authorization": self._auth,
            "X-User-Id": principal.user_id,
            "X-User-Role": principal.role.value,
        }
        request_id = current_context().get("request_id")
        if isinstance(request_id, str):
            headers["X-Request-Id"] = request_id
        for name in _FORWARDED_HEADERS:
            if name in request.headers:
                headers[name] = request.headers[name]
        body = await request.read() if request.can_read_body else None
        started = time.perf_counter()
        try:
            async with request.app[CLIENT_SESSION].request(
                request.method,
                f"{self._base_url}{path}",
                params=request.query,
                data=body,
                headers=headers,
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                content_type = upstream.content_type
                relayed = {h: v for h in _RELAYED_HEADERS if (v := upstream.headers.get(h))}
        except TimeoutError as exc:
            metrics.UPSTREAM_FAILURES.labels(self.name).inc()
            raise ApiError(504, "upstream_timeout", f"{self.name} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            metrics.UPSTREAM_FAILURES.labels(self.name).inc()
            raise ApiError(502, "upstream_unavailable", f"{self.name} is unavailable") from exc
        finally:
            metrics.UPSTREAM_REQUEST_SECONDS.labels(self.name).observe(
                time.perf_counter() - started
            )
        return web.Response(body=payload, status=status, content_type=content_type, headers=relayed)
