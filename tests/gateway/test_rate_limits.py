"""Rate limits on the client API (``services/gateway/rate_limit.py``): per user
for a valid token, a higher limit for staff, per client IP without one (failed
logins included); a 429 in the error shape with ``Retry-After``, after which
the next window passes; Stripe's webhooks are never limited."""

from __future__ import annotations

import asyncio

import aiohttp
import pydantic
import pytest

from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import StartGateway
from tests.gateway.helpers import a_valid_event, api, assert_error, bearer, deliver, metric, token
from tests.support import env
from tests.support.stack import Stack, common_settings

LIMITS = {
    "rate_limit_member": "3/2 seconds",
    "rate_limit_staff": "6/2 seconds",
    "rate_limit_anonymous": "2/2 seconds",
}
OPENAPI = "/v1/openapi.json"


async def _gateway(module_stack: Stack, extra_gateway: StartGateway) -> str:
    return await extra_gateway(webhooks_url=module_stack.apps["webhooks"].url, **LIMITS)


async def _statuses(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None, n: int
) -> list[int]:
    statuses = []
    for _ in range(n):
        async with http.get(url, headers=headers) as response:
            statuses.append(response.status)
    return statuses


async def test_a_burst_over_the_limit_gets_429_with_retry_after_and_the_next_window_passes(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(module_stack, extra_gateway)
    member = bearer(token("member", sub="user_burst"))
    limited_before = await metric(
        http, gateway, "gateway_api_rate_limited_total", {"scope": "member"}
    )

    assert await _statuses(http, f"{gateway}{OPENAPI}", member, 3) == [200, 200, 200]
    status, answer, headers = await api(http, "GET", f"{gateway}{OPENAPI}", headers=member)
    assert_error(status, answer, 429, "rate_limited")
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 2
    assert (
        await metric(http, gateway, "gateway_api_rate_limited_total", {"scope": "member"})
        == limited_before + 1
    )

    await asyncio.sleep(retry_after + 0.1)
    assert await _statuses(http, f"{gateway}{OPENAPI}", member, 1) == [200]


async def test_each_user_has_a_budget_of_their_own_and_staff_a_higher_one(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(module_stack, extra_gateway)
    url = f"{gateway}{OPENAPI}"
    first = bearer(token("member", sub="user_one"))
    second = bearer(token("member", sub="user_two"))
    staff = bearer(token("staff", sub="user_staff"))
    assert await _statuses(http, url, first, 4) == [200, 200, 200, 429]
    assert await _statuses(http, url, second, 3) == [200, 200, 200]
    assert await _statuses(http, url, staff, 7) == [200] * 6 + [429]


async def test_without_a_token_calls_count_per_ip_failed_logins_included(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(module_stack, extra_gateway)
    # A failed login spends the address's budget: guessing tokens gets slow.
    bad = bearer(token("admin", secret="a-guessed-secret-that-is-long-enough-to-use"))
    status, answer, _ = await api(http, "GET", f"{gateway}/v1/admin/events", headers=bad)
    assert_error(status, answer, 401, "token_signature_invalid")
    assert await _statuses(http, f"{gateway}{OPENAPI}", None, 2) == [200, 429]
    status, answer, headers = await api(http, "GET", f"{gateway}/v1/admin/events", headers=bad)
    assert_error(status, answer, 429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    # A valid token is counted for its user, not the address.
    member = bearer(token("member", sub="user_same_ip"))
    assert await _statuses(http, f"{gateway}{OPENAPI}", member, 1) == [200]


async def test_stripes_webhooks_are_never_limited(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(module_stack, extra_gateway)
    assert (await _statuses(http, f"{gateway}{OPENAPI}", None, 3))[-1] == 429
    for _ in range(5):
        await deliver(http, gateway, a_valid_event())


async def test_behind_a_trusted_proxy_clients_are_told_apart_by_x_forwarded_for(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await extra_gateway(
        webhooks_url=module_stack.apps["webhooks"].url,
        trusted_proxies="127.0.0.0/8, 10.0.0.0/8",
        **LIMITS,
    )
    url = f"{gateway}{OPENAPI}"
    first = {"X-Forwarded-For": "203.0.113.5"}
    # A second balancer hop (10.x, trusted) in front of the same client.
    same = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5, 10.1.2.3"}
    other = {"X-Forwarded-For": "203.0.113.6"}
    assert await _statuses(http, url, first, 2) == [200, 200]
    assert await _statuses(http, url, same, 1) == [429]
    assert await _statuses(http, url, other, 2) == [200, 200]


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(module_stack, extra_gateway)
    url = f"{gateway}{OPENAPI}"
    # A client cannot pick a fresh bucket by claiming another address.
    statuses = [
        (await _statuses(http, url, {"X-Forwarded-For": f"203.0.113.{n}"}, 1))[0] for n in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    base = common_settings(stripe_webhook_secrets=env.WEBHOOK_SECRET, jwt_secret=env.JWT_SECRET)
    assert GatewaySettings(
        **base, trusted_proxies="10.0.0.0/8, 192.0.2.7"
    ).trusted_proxy_list() == [
        "10.0.0.0/8",
        "192.0.2.7",
    ]
    with pytest.raises(pydantic.ValidationError, match="trusted_proxies"):
        GatewaySettings(**base, trusted_proxies="load-balancer.internal")
