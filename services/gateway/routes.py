"""The ``/v1`` routes: every declared endpoint, guarded, then forwarded or served here.

Routes come only from the services' contracts (:data:`CONTRACTS`); each is
wrapped by :func:`guard`, which authenticates unless the endpoint is declared
public, applies the rate limit, checks the role and the path ids, and only
then lets the request through. Nothing under ``/v1`` can be added any other
way, so no route is open by accident (a test walks the router to prove it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import orjson
import pydantic
from aiohttp import web

from services.credits import contract as credits_contract
from services.gateway import contract as gateway_contract
from services.gateway.auth import Authenticator
from services.gateway.forward import CLIENT_SESSION, Upstream
from services.gateway.rate_limit import RateLimits
from services.retry import contract as retry_contract
from services.subscriptions import contract as subscriptions_contract
from services.webhooks import contract as webhooks_contract
from shared import metrics
from shared.api import openapi
from shared.api.caller import CALLER, Caller
from shared.api.endpoint import Access, Endpoint
from shared.api.pagination import encode_cursor
from shared.audit import INTERNAL_PATH as AUDIT_PATH
from shared.audit import AuditEntry, AuditQuery
from shared.http.errors import (
    ApiError,
    ErrorDetail,
    from_validation_error,
    json_response,
    refuse_nul,
)

CONTRACTS: tuple[ModuleType, ...] = (
    gateway_contract,
    webhooks_contract,
    subscriptions_contract,
    credits_contract,
    retry_contract,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Marks a handler installed by guard(): the router walk checks for it.
GUARDED = "__guarded_endpoint__"


def all_endpoints() -> list[Endpoint]:
    endpoints = [e for c in CONTRACTS for e in c.ENDPOINTS]
    seen: set[tuple[str, str]] = set()
    for e in endpoints:
        key = (e.method, e.path)
        if key in seen:
            raise RuntimeError(f"two endpoints declare {e.method} {e.path}")
        seen.add(key)
    return endpoints


def guard(
    endpoint: Endpoint, handler: Handler, authenticator: Authenticator, limits: RateLimits
) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        caller: Caller | None = None
        if authorization or endpoint.access is not Access.PUBLIC:
            try:
                caller = authenticator.authenticate(authorization)
            except ApiError:
                # Failed attempts count against the client's address: guessing
                # tokens gets slow before it gets anywhere.
                await limits.check(request, None)
                raise
        await limits.check(request, caller)
        if caller is not None and not endpoint.access.allows(caller.role):
            metrics.API_AUTH_FAILURES.labels("role").inc()
            raise ApiError(403, "forbidden", f"requires role {endpoint.access.value}")
        for name, param in endpoint.path_params.items():
            if not param.matches(request.match_info[name]):
                raise ApiError(
                    400,
                    "invalid_parameter",
                    f"{name} is not a valid id",
                    details=[ErrorDetail(field=name, reason=f"must match {param.pattern}")],
                )
        if caller is not None:
            request[CALLER] = caller
        return await handler(request)

    setattr(guarded, GUARDED, endpoint)
    return guarded


def forwarder(endpoint: Endpoint, upstream: Upstream) -> Handler:
    async def forward(request: web.Request) -> web.StreamResponse:
        path = endpoint.internal_path.format(**request.match_info)
        return await upstream.forward(request, path, request.get(CALLER))

    return forward


def local_handlers(
    endpoints: Sequence[Endpoint], upstreams: Mapping[str, Upstream], title: str
) -> dict[str, Handler]:
    document = openapi.document(endpoints, title=title, version="1")
    document_bytes = orjson.dumps(document)
    page = openapi.html_page(document)

    async def openapi_json(_: web.Request) -> web.StreamResponse:
        return web.Response(body=document_bytes, content_type="application/json")

    async def docs(_: web.Request) -> web.StreamResponse:
        return web.Response(text=page, content_type="text/html")

    async def audit(request: web.Request) -> web.StreamResponse:
        return json_response(await merged_audit(request, upstreams))

    return {
        gateway_contract.OPENAPI.operation_id: openapi_json,
        gateway_contract.DOCS.operation_id: docs,
        gateway_contract.AUDIT.operation_id: audit,
    }


async def merged_audit(request: web.Request, upstreams: Mapping[str, Upstream]) -> dict[str, Any]:
    """Every service's audit entries, newest first, one page with one cursor.

    Each service answers its own newest ``limit`` entries below the cursor;
    the merged page is the newest ``limit`` of those, and its last entry's
    ``(at, service, id)`` is the next cursor, which every service understands.
    """
    raw = dict(request.query)
    refuse_nul(raw)
    try:
        query = AuditQuery.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc) from exc
    params = {k: str(v) for k, v in query.model_dump(exclude_none=True).items()}
    session = request.app[CLIENT_SESSION]
    entries: list[AuditEntry] = []
    more = False
    for upstream in upstreams.values():
        page = await upstream.get_json(session, AUDIT_PATH, params)
        if not isinstance(page, dict):
            continue
        entries += [AuditEntry.model_validate(e) for e in page.get("data", [])]
        more = more or bool(page.get("has_more"))
    entries.sort(key=lambda e: (e.at, e.service, e.id), reverse=True)
    shown = entries[: query.limit]
    more = more or len(entries) > query.limit
    last = shown[-1] if shown else None
    return {
        "data": [e.model_dump(mode="json") for e in shown],
        "has_more": more,
        "next_cursor": encode_cursor(last.at, last.service, last.id) if more and last else None,
    }


def add_api_routes(
    app: web.Application,
    *,
    authenticator: Authenticator,
    limits: RateLimits,
    upstreams: Mapping[str, Upstream],
    title: str,
) -> list[Endpoint]:
    endpoints = all_endpoints()
    local = local_handlers(endpoints, upstreams, title)
    for endpoint in endpoints:
        if endpoint.owner == "gateway":
            handler = local[endpoint.operation_id]
        else:
            handler = forwarder(endpoint, upstreams[endpoint.owner])
        app.router.add_route(
            endpoint.method, endpoint.path, guard(endpoint, handler, authenticator, limits)
        )
    return endpoints
