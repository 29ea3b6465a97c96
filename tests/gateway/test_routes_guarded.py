"""Auth by default: the gateway's router is walked, and every ``/v1`` route is
guarded, needs a token unless its declaration says public, and refuses the
wrong role; ids in paths and webhooks are checked with a full match.

Routes added by any service's contract are walked too, so a new route that is
open by accident fails here.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.gateway.app import create_app
from services.gateway.routes import GUARDED, all_endpoints
from services.gateway.settings import GatewaySettings
from shared.api.caller import Role
from shared.api.endpoint import Access, Endpoint
from tests.gateway.helpers import (
    a_valid_event,
    api,
    assert_error,
    bearer,
    post_webhook,
    token,
)
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.stack import Stack, common_settings

# What the gateway serves outside /v1, none of it a client API.
NOT_API = {
    ("POST", "/webhooks/stripe"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("HEAD", "/metrics"),
    ("HEAD", "/healthz"),
    ("HEAD", "/readyz"),
}


def _gateway_app() -> web.Application:
    values = common_settings(stripe_webhook_secrets=env.WEBHOOK_SECRET, jwt_secret=env.JWT_SECRET)
    return create_app(GatewaySettings(**values))


def _routes(app: web.Application) -> list[tuple[str, str, Any]]:
    found = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        found.append((route.method, resource.canonical, route.handler))
    return found


def _filled(path: str) -> str:
    """A concrete path: every {param} replaced by a value (auth comes first)."""
    return path.replace("{", "").replace("}", "_x")


ENDPOINTS = all_endpoints()
PROTECTED = [e for e in ENDPOINTS if e.access is not Access.PUBLIC]


def _id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path}"


def test_every_v1_route_is_a_guarded_declared_endpoint() -> None:
    app = _gateway_app()
    declared = {(e.method, e.path): e for e in ENDPOINTS}
    routed = set()
    for method, path, handler in _routes(app):
        if not path.startswith("/v1"):
            assert (method, path) in NOT_API, f"{method} {path} is outside /v1 and unknown"
            continue
        if method == "HEAD":
            continue
        guarded = getattr(handler, GUARDED, None)
        assert guarded is not None, f"{method} {path} is routed without guard()"
        assert guarded is declared[(method, path)], f"{method} {path} guards another endpoint"
        routed.add((method, path))
    assert routed == set(declared), "every declared endpoint is routed, nothing else"


def test_only_declared_public_endpoints_are_public() -> None:
    public = {(e.method, e.path) for e in ENDPOINTS if e.access is Access.PUBLIC}
    # Only the API's own description, and the plans and products members buy
    # from, are readable without a token.
    assert public == {
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/docs"),
        ("GET", "/v1/products"),
        ("GET", "/v1/plans"),
    }


@pytest.mark.parametrize("endpoint", PROTECTED, ids=_id)
async def test_every_protected_route_answers_401_without_a_token(
    module_stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    status, answer, headers = await api(
        http, endpoint.method, f"{module_stack.gateway}{_filled(endpoint.path)}"
    )
    assert_error(status, answer, 401, "token_missing")
    assert headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.access is Access.PUBLIC], ids=_id)
async def test_public_routes_answer_without_a_token(
    module_stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    async with http.request(
        endpoint.method, f"{module_stack.gateway}{_filled(endpoint.path)}"
    ) as response:
        assert response.status == endpoint.status
        assert response.content_type == endpoint.media_type


@pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if e.access in (Access.STAFF, Access.ADMIN)], ids=_id
)
async def test_every_staff_route_refuses_a_member_and_admin_routes_refuse_staff(
    module_stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    refused = [r for r in Role if not endpoint.access.allows(r)]
    assert Role.MEMBER in refused
    for role in refused:
        status, answer, _ = await api(
            http,
            endpoint.method,
            f"{module_stack.gateway}{_filled(endpoint.path)}",
            headers=bearer(token(role.value)),
        )
        assert_error(status, answer, 403, "forbidden")


@pytest.mark.parametrize(
    "endpoint",
    [e for e in ENDPOINTS if e.owner != "gateway" and e.access is not Access.PUBLIC],
    ids=_id,
)
async def test_the_owning_service_checks_the_caller_itself(
    module_stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    # Behind the gateway's back (the service token alone): no caller is a 401,
    # and a role the endpoint does not allow is a 403, from the service itself.
    service = module_stack.apps[endpoint.owner].url
    url = f"{service}{_filled(endpoint.internal_path)}"
    auth = {"Authorization": f"Bearer {env.SERVICE_TOKEN}"}
    status, answer, _ = await api(http, endpoint.method, url, headers=auth)
    assert_error(status, answer, 401, "missing_caller")
    if endpoint.access is not Access.MEMBER:
        member = {**auth, "X-User-Id": "user_member", "X-User-Role": "member"}
        status, answer, _ = await api(http, endpoint.method, url, headers=member)
        assert_error(status, answer, 403, "forbidden")


@pytest.mark.parametrize("suffix", ["%0A", "%0D%0A", "%20", "%00"])
async def test_an_id_with_a_trailing_newline_or_space_is_refused(
    module_stack: Stack, http: aiohttp.ClientSession, suffix: str
) -> None:
    status, answer, _ = await api(
        http,
        "GET",
        f"{module_stack.gateway}/v1/admin/events/evt_trailing{suffix}",
        headers=bearer(token("admin")),
    )
    assert_error(status, answer, 400, "invalid_parameter")
    assert answer["error"]["details"][0]["field"] == "event_id"


async def test_the_owning_service_checks_path_ids_with_a_full_match_too(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    headers = {
        "Authorization": f"Bearer {env.SERVICE_TOKEN}",
        "X-User-Id": "user_ops",
        "X-User-Role": "admin",
    }
    url = f"{module_stack.apps['webhooks'].url}/internal/admin/events/evt_trailing%0A"
    status, answer, _ = await api(http, "GET", url, headers=headers)
    assert_error(status, answer, 400, "invalid_parameter")


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "evt_newline\n"), ("type", "invoice.paid\n"), ("id", "evt_ok\nevt_more")],
)
async def test_a_webhook_whose_id_or_type_has_a_newline_is_refused(
    module_stack: Stack, http: aiohttp.ClientSession, field: str, value: str
) -> None:
    evt = a_valid_event()
    evt[field] = value
    body = so.body_of(evt)
    status, answer = await post_webhook(
        http, module_stack.gateway, body, so.signature(body, secret=env.WEBHOOK_SECRET)
    )
    assert_error(status, answer, 400, "invalid_payload")


def _valid_id(endpoint: Endpoint, name: str) -> str:
    """An id of the right form that no record has: from the declaration's
    example's prefix, or the pattern's (``sub_[A-Za-z0-9_]{1,250}``)."""
    param = endpoint.path_params[name]
    prefixes = [param.example.split("_")[0]] if param.example and "_" in param.example else []
    match = re.match(r"\(?([a-z]+)_", param.pattern)
    prefixes += [match.group(1)] if match else []
    for candidate in [f"{p}_nobody0404" for p in prefixes] + ["nobody0404", "0"]:
        if param.matches(candidate):
            return candidate
    raise AssertionError(f"{_id(endpoint)}: give {name} an example in its PathParam")


MEMBER_LOOKUPS = [
    e for e in ENDPOINTS if e.access is Access.MEMBER and e.path_params and e.body is None
]


@pytest.mark.parametrize("endpoint", MEMBER_LOOKUPS, ids=_id)
async def test_a_member_asking_for_a_record_that_is_not_theirs_gets_404_never_403(
    module_stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint
) -> None:
    # No existence oracle: a record that does not exist and another member's
    # look the same (each route's own tests create the other member's record).
    path = endpoint.path
    for name in endpoint.path_params:
        path = path.replace(f"{{{name}}}", _valid_id(endpoint, name))
    status, answer, _ = await api(
        http,
        endpoint.method,
        f"{module_stack.gateway}{path}",
        headers=bearer(token("member", sub="user_someone_else")),
    )
    assert_error(status, answer, 404, "not_found")
