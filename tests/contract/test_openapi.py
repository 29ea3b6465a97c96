"""The OpenAPI document at ``/v1/openapi.json`` describes every routed ``/v1``
operation: the gateway's router is walked and each route must be in the
document with its success and every error it can answer (in the one error
shape, ``Retry-After`` on 429 and 503), and nothing else is documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.gateway.routes import GUARDED
from shared.api import openapi
from shared.api.endpoint import Access, Endpoint
from tests.support.stack import Stack, start_stack

ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
async def gateway_only() -> AsyncIterator[Stack]:
    running = await start_stack(with_consumers=False)
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def document(gateway_only: Stack) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway_only.gateway}/v1/openapi.json") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        served: dict[str, Any] = await response.json()
    return served


def _routed(stack: Stack) -> list[Endpoint]:
    found = []
    for route in stack.app("gateway").router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith("/v1") or route.method == "HEAD":
            continue
        endpoint = getattr(route.handler, GUARDED, None)
        assert endpoint is not None, f"{route.method} {resource.canonical} is not guarded"
        found.append(endpoint)
    return found


async def test_every_routed_operation_is_documented_with_all_its_answers(
    gateway_only: Stack, document: dict[str, Any]
) -> None:
    assert document["openapi"] == "3.1.0"
    routed = _routed(gateway_only)
    assert len(routed) >= 8
    for endpoint in routed:
        where = f"{endpoint.method} {endpoint.path}"
        operation = document["paths"].get(endpoint.path, {}).get(endpoint.method.lower())
        assert operation is not None, f"{where} is routed but not in the document"
        assert operation["operationId"] == endpoint.operation_id
        responses = operation["responses"]
        assert str(endpoint.status) in responses, where
        expected = set(openapi.error_statuses(endpoint))
        if endpoint.access is not Access.PUBLIC:
            assert {401, 429} <= expected
            assert operation["security"] == [{"bearer": []}], where
        if endpoint.access in (Access.STAFF, Access.ADMIN):
            assert 403 in expected
        if endpoint.path_params:
            assert {400, 404} <= expected
        if endpoint.body is not None:
            assert {400, 413, 422} <= expected
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith(endpoint.body.__name__)
        for status in expected:
            answer = responses.get(str(status))
            assert answer is not None, f"{where} does not document its {status}"
            assert answer["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
            if status in (429, 503):
                assert "Retry-After" in answer["headers"], f"{where} {status}"
        for name in endpoint.path_params:
            assert any(p["name"] == name and p["in"] == "path" for p in operation["parameters"])


async def test_nothing_is_documented_that_is_not_routed(
    gateway_only: Stack, document: dict[str, Any]
) -> None:
    routed = {(e.method.lower(), e.path) for e in _routed(gateway_only)}
    documented = {(m, p) for p, methods in document["paths"].items() for m in methods}
    assert documented == routed


async def test_the_error_shape_is_a_documented_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    error = schemas["ErrorBody"]
    assert set(error["required"]) >= {"code", "message"}
    assert error["properties"]["code"]["pattern"] == "^[a-z][a-z0-9_]*$"
    assert schemas["ErrorResponse"]["required"] == ["error"]


async def test_times_in_queries_document_what_they_accept(document: dict[str, Any]) -> None:
    # ISO 8601 with an offset, or unix seconds: the document must say both,
    # or a client sending seconds is told it broke the contract.
    parameters = document["paths"]["/v1/admin/events"]["get"]["parameters"]
    created = next(p for p in parameters if p["name"] == "created_gte")
    kinds = created["schema"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in kinds
    assert {"type": "number"} in kinds or any(
        {"type": "number"} in k.get("anyOf", []) for k in kinds
    )


async def test_the_docs_page_lists_every_operation(
    gateway_only: Stack, document: dict[str, Any]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway_only.gateway}/v1/docs") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    for path, methods in document["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in page
