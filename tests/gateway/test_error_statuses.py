"""Every error status of the API, produced by a real request through the
gateway, in the one error shape: ``{"error": {"code", "message", "details",
"request_id"}}`` (the README's table lists them).

401 (each token code) and 403 are in test_auth.py and test_routes_guarded.py,
429 in test_rate_limits.py, 500 in test_internal_error.py, 503 for an owner that is down in
test_admin_api.py, 402 (a declined card, with Stripe's decline code) in
tests/shared/test_idempotency_keys.py until a member route charges a card.
"""

from __future__ import annotations

import base64
from datetime import timedelta

import aiohttp
import orjson

from services.gateway.settings import UPSTREAMS
from services.webhooks.contract import ReplayRequest
from shared.db import create_pool
from shared.http import idempotency
from tests.gateway.conftest import StartGateway
from tests.gateway.helpers import admin, api, assert_error, bearer, token
from tests.support import env
from tests.support.stack import Stack

REASON = b'{"reason": "operator check"}'


async def test_400_malformed_json_body(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "POST", "/events/evt_test_json/replay", data=b'{"reason": '
    )
    assert_error(status, answer, 400, "invalid_json")


async def test_400_a_body_that_is_not_an_object(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "POST", "/events/evt_test_json/replay", data=b'["reason"]'
    )
    assert_error(status, answer, 400, "invalid_json")


async def test_400_malformed_idempotency_key_header(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http,
        module_stack.gateway,
        "POST",
        "/events/evt_test_header/replay",
        data=REASON,
        headers={"Idempotency-Key": "has spaces in it"},
    )
    assert_error(status, answer, 400, "invalid_idempotency_key")
    assert answer["error"]["details"][0]["field"] == "Idempotency-Key"


async def test_400_malformed_path_id(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await admin(http, module_stack.gateway, "GET", "/events/not-an-event-id")
    assert_error(status, answer, 400, "invalid_parameter")
    assert answer["error"]["details"][0]["field"] == "event_id"


async def test_404_no_such_record(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await admin(http, module_stack.gateway, "GET", "/events/evt_test_absent")
    assert_error(status, answer, 404, "not_found")


async def test_404_and_405_for_routes_are_json_too(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await api(http, "GET", f"{module_stack.gateway}/v1/no/such/route")
    assert_error(status, answer, 404, "not_found")
    status, answer, headers = await api(http, "DELETE", f"{module_stack.gateway}/v1/admin/events")
    assert_error(status, answer, 405, "method_not_allowed")
    assert "GET" in headers["Allow"]


async def test_409_a_request_with_this_idempotency_key_is_still_running(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # The same request, already claimed by a replica that is still running it.
    key, path = "still-running-1", "/internal/admin/events/evt_test_running/replay"
    body = ReplayRequest.model_validate(orjson.loads(REASON)).model_dump(mode="json")
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    pool = await create_pool(env.DATABASE_URL, "webhooks", min_size=1, max_size=1)
    try:
        held = await idempotency.claim(
            pool,
            scope="user_test_operator",
            key=key,
            request_fingerprint=idempotency.fingerprint("POST", path, canonical),
            ttl=timedelta(hours=24),
            lease=timedelta(minutes=5),
        )
        assert isinstance(held, idempotency.Claim)
        status, answer, _ = await admin(
            http,
            module_stack.gateway,
            "POST",
            "/events/evt_test_running/replay",
            data=REASON,
            headers={"Idempotency-Key": key},
        )
        assert_error(status, answer, 409, "idempotency_in_progress")
    finally:
        await pool.close()


async def test_413_body_too_large(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    huge = b'{"reason": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    status, answer, _ = await admin(
        http, module_stack.gateway, "POST", "/events/evt_test_huge/replay", data=huge
    )
    assert_error(status, answer, 413, "payload_too_large")


async def test_422_validation_names_each_field(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http,
        module_stack.gateway,
        "POST",
        "/events/evt_test_v/replay",
        data=b'{"reason": "x", "y": 1}',
    )
    assert_error(status, answer, 422, "validation_failed")
    fields = {d["field"] for d in answer["error"]["details"]}
    assert fields == {"reason", "y"}


async def test_422_a_query_parameter_out_of_range(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/events", params={"limit": "0"}
    )
    assert_error(status, answer, 422, "validation_failed")
    assert answer["error"]["details"][0]["field"] == "limit"


async def test_422_a_cursor_an_owner_refuses_is_the_clients_error_not_a_503(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # The merged audit log asks every owner; an owner's refusal is passed on.
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/audit", params={"cursor": "0" * 100}
    )
    assert_error(status, answer, 422, "validation_failed")
    assert answer["error"]["details"][0]["field"] == "cursor"


async def test_422_a_cursor_whose_id_is_beyond_bigint_is_refused_not_a_503(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # A well-formed cursor whose id no bigint column can hold: each owner's
    # query would fail on the parameter, and the gateway would see a 500.
    cursor = base64.urlsafe_b64encode(
        orjson.dumps(["2026-01-01T00:00:00+00:00", "credits", 2**64 - 1])
    ).decode()
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/audit", params={"cursor": cursor.rstrip("=")}
    )
    assert_error(status, answer, 422, "validation_failed")
    assert answer["error"]["details"][0]["field"] == "cursor"


async def test_422_a_query_parameter_holding_a_nul(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Postgres text cannot hold a NUL: passed on, every owner's query fails.
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/audit", params={"target": "evt_\x00x"}
    )
    assert_error(status, answer, 422, "validation_failed")
    assert [d["field"] for d in answer["error"]["details"]] == ["target"]


async def test_422_not_500_for_a_body_nested_deeper_than_pythons_recursion_limit(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # JSON nests up to 1024 levels before the parser refuses it; every check
    # of the body must walk that far without a RecursionError.
    deep = b"[" * 1000 + b"]" * 1000
    status, answer, _ = await admin(
        http,
        module_stack.gateway,
        "POST",
        "/events/evt_test_deep/replay",
        data=b'{"reason": "operator check", "nested": ' + deep + b"}",
    )
    assert_error(status, answer, 422, "validation_failed")


async def test_503_when_an_owner_refuses_the_gateways_service_token(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # A token rotated on one side only (docs/runbook.md, "Service tokens"): the
    # gateway cannot reach the owner, which is no fault of the client's token.
    gateway = await extra_gateway(
        **{f"{name}_url": module_stack.apps[name].url for name in UPSTREAMS},
        credits_service_token="not-the-token-credits-accepts-0123456789",
    )
    status, answer, headers = await api(
        http,
        "GET",
        f"{gateway}/v1/credits/me",
        headers=bearer(token("member", sub="user_token_rotation")),
    )
    assert_error(status, answer, 503, "upstream_unavailable")
    assert int(headers["Retry-After"]) > 0
    # The merged audit log asks every owner the same way.
    status, answer, headers = await api(
        http,
        "GET",
        f"{gateway}/v1/admin/audit",
        headers=bearer(token("admin", sub="user_token_rotation_admin")),
    )
    assert_error(status, answer, 503, "upstream_unavailable")


async def test_a_400_any_forwarded_operation_can_answer_is_in_the_document(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # A GET without path ids still answers 400 to a body (unexpected_body) or
    # a malformed Idempotency-Key: a client built from the document must know.
    status, answer, _ = await api(
        http,
        "GET",
        f"{module_stack.gateway}/v1/credits/me",
        headers=bearer(token("member", sub="user_get_with_body")),
        data=b"{}",
    )
    assert_error(status, answer, 400, "unexpected_body")
    status, answer, _ = await api(
        http,
        "GET",
        f"{module_stack.gateway}/v1/credits/me",
        headers={
            **bearer(token("member", sub="user_get_with_body")),
            "Idempotency-Key": "has spaces",
        },
    )
    assert_error(status, answer, 400, "invalid_idempotency_key")
    async with http.get(f"{module_stack.gateway}/v1/openapi.json") as response:
        document = await response.json()
    assert "400" in document["paths"]["/v1/credits/me"]["get"]["responses"]
