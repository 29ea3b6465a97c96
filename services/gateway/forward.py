"""Forwarding an authenticated client call to the service that owns it.

The gateway holds no business state: it checks who is calling and what the
path looks like, then relays to the owning service's ``/internal`` API with
the service token, the caller's identity (the owner checks ownership itself),
the request id and any ``Idempotency-Key``. The owner's JSON answer goes back
as it is. No answer, a slow answer, something that is not the owner's JSON,
or the owner refusing the gateway's own credentials (a 401: the client's
token was already checked here) becomes a 503 with ``Retry-After``: the
client may retry, and a retry with the same ``Idempotency-Key`` is safe.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from shared import metrics
from shared.api.caller import Caller
from shared.http.errors import ApiError, ErrorDetail
from shared.logging import current_context, get_logger

log = get_logger(__name__)

# One pooled HTTP client per gateway process, opened and closed with the app.
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
_FORWARDED_HEADERS = ("Idempotency-Key", "Content-Type")
# Headers of the owner's answer the client needs to see.
_RELAYED_HEADERS = ("Idempotent-Replayed", "Retry-After")
_RETRY_AFTER = {"Retry-After": "2"}


class Upstream:
    def __init__(self, name: str, base_url: str, service_token: str) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._auth = f"Bearer {service_token}"

    def headers(self, caller: Caller | None) -> dict[str, str]:
        headers = {"Authorization": self._auth}
        if caller is not None:
            headers.update(caller.headers())
        request_id = current_context().get("request_id")
        if isinstance(request_id, str):
            headers["X-Request-Id"] = request_id
        return headers

    async def get_json(
        self, session: aiohttp.ClientSession, path: str, params: dict[str, str]
    ) -> object:
        """A GET of the owner's internal API for the gateway's own use (fan-out)."""
        try:
            async with session.get(
                f"{self._base_url}{path}", params=params, headers=self.headers(None)
            ) as response:
                if (
                    400 <= response.status < 500
                    and response.status != 401  # the gateway's token, not the client's
                    and response.content_type == "application/json"
                ):
                    # The owner refused what the client asked (a cursor it did
                    # not issue...): the client's error, passed on as it is.
                    raise _refusal(response.status, await response.json())
                if response.status != 200:
                    raise self._unavailable(f"answered {response.status}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(repr(exc)) from exc

    async def forward(self, request: web.Request, path: str, caller: Caller | None) -> web.Response:
        headers = self.headers(caller)
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
            raise self._unavailable("timeout", code="upstream_timeout") from exc
        except aiohttp.ClientError as exc:
            raise self._unavailable(repr(exc)) from exc
        finally:
            metrics.UPSTREAM_REQUEST_SECONDS.labels(self.name).observe(
                time.perf_counter() - started
            )
        if status != 204 and content_type != "application/json":
            raise self._unavailable(f"answered {status} {content_type}")
        if status == 401:
            # The client's token was checked here; an owner's 401 refuses the
            # gateway (its service token, mid-rotation or misconfigured). Passed
            # on, a client would take its own valid token for the culprit.
            raise self._unavailable("refused the gateway's service token")
        return web.Response(
            body=payload if status != 204 else None,
            status=status,
            content_type=content_type if status != 204 else None,
            headers=relayed,
        )

    def _unavailable(self, why: str, code: str = "upstream_unavailable") -> ApiError:
        log.warning("upstream_unavailable", upstream=self.name, why=why)
        metrics.UPSTREAM_FAILURES.labels(self.name).inc()
        return ApiError(503, code, f"{self.name} is unavailable, retry later", headers=_RETRY_AFTER)


def _refusal(status: int, payload: object) -> ApiError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return ApiError(status, "rejected", "the request was refused")
    details = [
        ErrorDetail(field=str(d.get("field", "")), reason=str(d.get("reason", "")))
        for d in error.get("details") or []
        if isinstance(d, dict)
    ]
    return ApiError(
        status,
        str(error.get("code") or "rejected"),
        str(error.get("message") or "the request was refused"),
        details=details,
    )
