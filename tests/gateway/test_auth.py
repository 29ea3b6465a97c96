"""JWT bearer authentication on ``/v1/admin/*``, through a running gateway.

HS256 with the gateway's secret only; ``exp``, ``sub`` and ``role`` required.
Every refusal is a 401 (who are you?) or a 403 (not allowed) with the JSON
error body, and is counted in ``gateway_api_auth_failures_total``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import aiohttp
import pydantic
import pytest

from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import StartGateway
from tests.gateway.helpers import api, assert_error, bearer, forged_token, metric, token
from tests.support import env
from tests.support.stack import Stack, common_settings

ADMIN_ROUTES = [
    ("GET", "/v1/admin/events"),
    ("GET", "/v1/admin/events/evt_test_auth"),
    ("POST", "/v1/admin/events/evt_test_auth/replay"),
    ("GET", "/v1/admin/subscriptions/sub_test_auth"),
    ("GET", "/v1/admin/dead-letters"),
    ("POST", "/v1/admin/dead-letters/redrive"),
    ("GET", "/v1/admin/dead-letters/queues"),
    ("POST", "/v1/admin/dead-letters/1/discard"),
    ("POST", "/v1/admin/reconcile/events"),
    ("GET", "/v1/admin/reconcile/jobs/3f0c9a52-8d0b-4c41-9a57-0f4c2a3c8e11"),
]


def _claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "user_test", "role": "admin", "exp": int(time.time()) + 300, **overrides}


async def auth_failures(http: aiohttp.ClientSession, stack: Stack, reason: str) -> float:
    return await metric(http, stack.gateway, "gateway_api_auth_failures_total", {"reason": reason})


async def list_events(
    http: aiohttp.ClientSession, stack: Stack, headers: dict[str, str] | None
) -> tuple[int, Any]:
    status, answer, _ = await api(http, "GET", f"{stack.gateway}/v1/admin/events", headers=headers)
    return status, answer


def lasting(**claims: Any) -> str:
    """A token built when the tests are collected: it must outlive a whole run
    of the suite, to be refused for its claims rather than for its age."""
    return token(expires_in=6 * 3600, **claims)


REFUSED_TOKENS = [
    pytest.param(
        bearer(forged_token({"alg": "none", "typ": "JWT"}, _claims(), b"")),
        "algorithm",
        id="alg-none",
    ),
    pytest.param(
        bearer(forged_token({"alg": "None", "typ": "JWT"}, _claims(), b"")),
        "algorithm",
        id="alg-None",
    ),
    pytest.param(
        bearer(token(secret="another-secret-that-is-long-enough-for-hs256")),
        "signature",
        id="wrong-secret",
    ),
    pytest.param(
        bearer(token()[:-4] + "AAAA"),
        "signature",
        id="tampered-signature",
    ),
    pytest.param(bearer(token(expires_in=-1)), "expired", id="expired"),
    pytest.param(bearer("garbage"), "malformed", id="garbage"),
    pytest.param(bearer("a.b.c"), "malformed", id="three-garbage-segments"),
    pytest.param({"Authorization": f"Basic {token()}"}, "malformed", id="basic-scheme"),
    pytest.param({"Authorization": token()}, "malformed", id="no-scheme"),
    pytest.param({"Authorization": "Bearer "}, "malformed", id="empty-bearer"),
    pytest.param({"Authorization": "Bearer"}, "malformed", id="bearer-only"),
    pytest.param({}, "missing", id="no-header"),
    pytest.param({"Authorization": ""}, "missing", id="empty-header"),
    pytest.param(bearer(token(drop=("exp",))), "claims", id="no-exp"),
    pytest.param(bearer(lasting(drop=("sub",))), "claims", id="no-sub"),
    pytest.param(bearer(lasting(drop=("role",))), "claims", id="no-role"),
    pytest.param(bearer(lasting(sub="")), "claims", id="empty-sub"),
    pytest.param(bearer(lasting(role="superuser")), "claims", id="unknown-role"),
    pytest.param(bearer(lasting(role="Admin")), "claims", id="role-wrong-case"),
    pytest.param(
        bearer(forged_token({"alg": "RS256", "typ": "JWT"}, _claims())),
        "algorithm",
        id="rs256-hmac-confusion",
    ),
    pytest.param(
        bearer(forged_token({"alg": "RS256", "typ": "JWT"}, _claims(), b"\x01" * 256)),
        "algorithm",
        id="rs256",
    ),
    pytest.param(
        bearer(forged_token({"alg": "HS512", "typ": "JWT"}, _claims(), digest=hashlib.sha512)),
        "algorithm",
        id="hs512",
    ),
]


# The counted reason -> the code a client reads: missing, malformed, expired
# and badly signed tokens each have their own.
CODES = {
    "missing": "token_missing",
    "malformed": "token_malformed",
    "algorithm": "token_malformed",
    "expired": "token_expired",
    "signature": "token_signature_invalid",
    "claims": "token_claims_invalid",
}


@pytest.mark.parametrize(("headers", "reason"), REFUSED_TOKENS)
async def test_unauthenticated_calls_get_401(
    module_stack: Stack, http: aiohttp.ClientSession, headers: dict[str, str], reason: str
) -> None:
    failures = await auth_failures(http, module_stack, reason)
    status, answer = await list_events(http, module_stack, headers)
    assert_error(status, answer, 401, CODES[reason])
    assert await auth_failures(http, module_stack, reason) == failures + 1


async def test_an_expired_token_says_so(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer = await list_events(http, module_stack, bearer(token(expires_in=-5)))
    assert_error(status, answer, 401, "token_expired", "token expired")


async def test_a_token_without_a_role_names_the_missing_claim(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer = await list_events(http, module_stack, bearer(lasting(drop=("role",))))
    assert_error(status, answer, 401, "token_claims_invalid", "role")


async def test_a_token_living_longer_than_the_maximum_is_refused(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    day = 24 * 3600
    status, answer = await list_events(http, module_stack, bearer(token(expires_in=day + 600)))
    assert_error(status, answer, 401, "token_claims_invalid", "lifetime")
    status, _ = await list_events(http, module_stack, bearer(token(expires_in=day - 600)))
    assert status == 200


async def test_issuer_and_audience_are_checked_when_configured(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await extra_gateway(
        jwt_issuer="https://auth.example",
        jwt_audience="billing",
        webhooks_url=module_stack.apps["webhooks"].url,
    )
    good = {"iss": "https://auth.example", "aud": "billing"}
    cases = [
        (good, 200, None),
        ({"iss": "https://evil.example", "aud": "billing"}, 401, "token_claims_invalid"),
        ({"iss": "https://auth.example", "aud": "other"}, 401, "token_claims_invalid"),
        ({"aud": "billing"}, 401, "token_claims_invalid"),
        ({"iss": "https://auth.example"}, 401, "token_claims_invalid"),
    ]
    for claims, expected, code in cases:
        status, answer, _ = await api(
            http, "GET", f"{gateway}/v1/admin/events", headers=bearer(token(**claims))
        )
        if code is None:
            assert status == expected, answer
        else:
            assert_error(status, answer, expected, code)


def test_a_short_jwt_secret_is_refused_at_start() -> None:
    values = common_settings(stripe_webhook_secrets=env.WEBHOOK_SECRET, jwt_secret="x" * 31)
    with pytest.raises(pydantic.ValidationError, match="at least 32 bytes"):
        GatewaySettings(**values)


@pytest.mark.parametrize("role", ["member", "staff"])
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_authenticated_non_admins_get_403_on_every_admin_route(
    module_stack: Stack, http: aiohttp.ClientSession, role: str, method: str, path: str
) -> None:
    failures = await auth_failures(http, module_stack, "role")
    status, answer, _ = await api(
        http, method, f"{module_stack.gateway}{path}", headers=bearer(token(role))
    )
    assert_error(status, answer, 403, "forbidden", "admin")
    assert await auth_failures(http, module_stack, "role") == failures + 1


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_every_admin_route_needs_a_token(
    module_stack: Stack, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    status, answer, _ = await api(http, method, f"{module_stack.gateway}{path}")
    assert_error(status, answer, 401, "token_missing")


async def test_a_valid_admin_token_is_let_through(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer = await list_events(http, module_stack, bearer(token("admin")))
    assert status == 200
    assert set(answer) == {"data", "has_more", "next_cursor"}


async def test_the_bearer_scheme_is_case_insensitive(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, _ = await list_events(http, module_stack, {"Authorization": f"bearer {token('admin')}"})
    assert status == 200


# --- rotation -------------------------------------------------------------------

NEW_JWT_SECRET = "the-new-jwt-secret-after-a-rotation-long-enough"
RETIRED_JWT_SECRET = "a-jwt-secret-retired-before-this-rotation-long"


async def test_during_a_rotation_tokens_of_the_old_and_the_new_secret_verify(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # The gateway rolled to the new secret, keeping the old one (the test
    # secret, which the issuer still signs with) as previous.
    gateway = await extra_gateway(
        jwt_secret=NEW_JWT_SECRET,
        jwt_previous_secrets=env.JWT_SECRET,
        webhooks_url=module_stack.apps["webhooks"].url,
    )
    url = f"{gateway}/v1/admin/events"
    accepted_before = await metric(http, gateway, "gateway_api_previous_secret_tokens_total")

    status, _, _ = await api(http, "GET", url, headers=bearer(token()))
    assert status == 200
    assert (
        await metric(http, gateway, "gateway_api_previous_secret_tokens_total")
        == accepted_before + 1
    )
    status, _, _ = await api(http, "GET", url, headers=bearer(token(secret=NEW_JWT_SECRET)))
    assert status == 200
    # The new secret verifies first: nothing counted as previous.
    assert (
        await metric(http, gateway, "gateway_api_previous_secret_tokens_total")
        == accepted_before + 1
    )

    # Neither an unrelated secret...
    status, answer, _ = await api(
        http, "GET", url, headers=bearer(token(secret=RETIRED_JWT_SECRET))
    )
    assert_error(status, answer, 401, "token_signature_invalid")
    # ...nor an expired token of the old secret gets in.
    status, answer, _ = await api(http, "GET", url, headers=bearer(token(expires_in=-5)))
    assert_error(status, answer, 401, "token_expired")


async def test_once_the_rotation_ends_the_old_secret_no_longer_verifies(
    module_stack: Stack, extra_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await extra_gateway(jwt_secret=NEW_JWT_SECRET)
    status, answer, _ = await api(
        http, "GET", f"{gateway}/v1/admin/events", headers=bearer(token())
    )
    assert_error(status, answer, 401, "token_signature_invalid")


def test_a_short_previous_jwt_secret_is_refused_at_start() -> None:
    values = common_settings(
        stripe_webhook_secrets=env.WEBHOOK_SECRET,
        jwt_secret=NEW_JWT_SECRET,
        jwt_previous_secrets=f"{env.JWT_SECRET},{'x' * 31}",
    )
    with pytest.raises(pydantic.ValidationError, match="JWT_PREVIOUS_SECRETS"):
        GatewaySettings(**values)
