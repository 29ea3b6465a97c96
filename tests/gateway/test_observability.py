"""Per-route metrics and request ids, through the gateway and the service it
forwards to.

Requests are counted by route template (``/v1/admin/events/{event_id}``),
method and status, timed per route, and tracked in flight, on the gateway and
on each service's internal API; each service exports its database pool's size
and use. A client's sane ``X-Request-Id`` is kept, any other replaced; the id
goes to the owning service and comes back on every answer.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shared.audit import INTERNAL_PATH as AUDIT_PATH
from tests.gateway.helpers import a_valid_event, admin, api, bearer, metric, token
from tests.support import stripe_objects as so
from tests.support.stack import Stack

GATEWAY_ROUTE = "/v1/admin/events/{event_id}"
SERVICE_ROUTE = "/internal/admin/events/{event_id}"


async def _labels(http: aiohttp.ClientSession, url: str, name: str) -> list[dict[str, str]]:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_requests_are_counted_by_route_template_on_the_gateway_and_the_service(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway, service = module_stack.gateway, module_stack.apps["webhooks"].url
    counted = {"route": GATEWAY_ROUTE, "method": "GET", "status": "404"}
    served = {"route": SERVICE_ROUTE, "method": "GET", "status": "404"}
    timed = {"route": GATEWAY_ROUTE, "method": "GET"}
    before = (
        await metric(http, gateway, "http_requests_total", counted),
        await metric(http, service, "http_requests_total", served),
        await metric(http, gateway, "http_request_duration_seconds_count", timed),
    )
    for event_id in ("evt_metric_one", "evt_metric_two", "evt_metric_three"):
        status, _, _ = await admin(http, gateway, "GET", f"/events/{event_id}")
        assert status == 404
    after = (
        await metric(http, gateway, "http_requests_total", counted),
        await metric(http, service, "http_requests_total", served),
        await metric(http, gateway, "http_request_duration_seconds_count", timed),
    )
    assert after == tuple(b + 3 for b in before)
    # No raw path ever becomes a label value.
    for url in (gateway, service):
        routes = {labels["route"] for labels in await _labels(http, url, "http_requests_total")}
        assert not any("evt_metric" in route for route in routes), routes
    in_flight = await _labels(http, gateway, "http_requests_in_flight")
    assert {"route": GATEWAY_ROUTE} in in_flight
    assert await metric(http, gateway, "http_requests_in_flight", {"route": GATEWAY_ROUTE}) == 0


async def test_paths_no_route_matches_share_one_label(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = module_stack.gateway
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    before = await metric(http, gateway, "http_requests_total", labels)
    for n in range(3):
        status, _, _ = await api(http, "GET", f"{gateway}/v1/probing/{n}")
        assert status == 404
    assert await metric(http, gateway, "http_requests_total", labels) == before + 3


async def test_each_service_exports_its_database_pool(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    for name in ("webhooks", "subscriptions", "credits", "retry"):
        url = module_stack.apps[name].url
        gauge = "db_pool_connections"
        assert await metric(http, url, gauge, {"schema": name, "state": "max"}) == 10
        assert await metric(http, url, gauge, {"schema": name, "state": "open"}) >= 1
        in_use = await metric(http, url, gauge, {"schema": name, "state": "in_use"})
        assert 0 <= in_use <= 10


async def test_a_clients_request_id_is_kept_forwarded_and_returned(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # The 404 is written by the webhooks service: the id in its body is the one
    # the gateway forwarded.
    status, answer, headers = await admin(
        http,
        module_stack.gateway,
        "GET",
        "/events/evt_test_request_id",
        headers={"X-Request-Id": "client-abc.123:4"},
    )
    assert status == 404
    assert headers["X-Request-Id"] == "client-abc.123:4"
    assert answer["error"]["request_id"] == "client-abc.123:4"


async def test_an_insane_request_id_is_replaced_by_one_of_ours(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    for offered in ("x" * 129, "has spaces", "semi;colon", "<script>"):
        status, answer, headers = await admin(
            http,
            module_stack.gateway,
            "GET",
            "/events/evt_test_request_id",
            headers={"X-Request-Id": offered},
        )
        assert status == 404
        made = headers["X-Request-Id"]
        assert made != offered and 0 < len(made) <= 128
        assert answer["error"]["request_id"] == made


async def test_every_answer_carries_a_request_id(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = module_stack.gateway
    answers = [
        await api(http, "GET", f"{gateway}/v1/openapi.json"),
        await api(http, "GET", f"{gateway}/v1/admin/events"),
        await api(http, "GET", f"{gateway}/v1/admin/events", headers=bearer(token("admin"))),
        await api(http, "GET", f"{gateway}/v1/nowhere"),
    ]
    body = so.body_of(a_valid_event())
    async with http.post(
        f"{gateway}/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": so.signature(body), "Content-Type": "application/json"},
    ) as response:
        answers.append((response.status, None, response.headers))
    ids = [headers["X-Request-Id"] for _, _, headers in answers]
    assert [status for status, _, _ in answers] == [200, 401, 200, 404, 200]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_every_services_internal_api_is_counted_by_route(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # The merged audit log asks each of the four services' internal API once.
    # Here the services share one process, so one registry: the route's count
    # grows by four (in production each service exports its own).
    labels = {"route": AUDIT_PATH, "method": "GET", "status": "200"}
    url = module_stack.apps["credits"].url
    before = await metric(http, url, "http_requests_total", labels)
    status, _, _ = await admin(http, module_stack.gateway, "GET", "/audit")
    assert status == 200
    assert await metric(http, url, "http_requests_total", labels) == before + 4
