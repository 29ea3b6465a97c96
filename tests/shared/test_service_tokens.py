"""Each service's internal API opens only to its own token: the gateway holds
one per upstream, so a token that leaks opens one service, not all."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pydantic
import pytest

from services.gateway.settings import GatewaySettings
from tests.gateway.helpers import api, bearer, token
from tests.support import env
from tests.support.stack import Stack, common_settings, start_stack

TOKENS = {
    "webhooks": "webhooks-internal-token-0123456789abcdef",
    "subscriptions": "subscriptions-internal-token-0123456789ab",
    "credits": "credits-internal-token-0123456789abcdef",
    "retry": "retry-internal-token-0123456789abcdef0",
}
RETIRED_CREDITS_TOKEN = "credits-internal-token-being-retired-0123"


@pytest.fixture
async def own_tokens(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack(
        gateway={"service_token": None, **{f"{s}_service_token": t for s, t in TOKENS.items()}},
        webhooks={"service_token": TOKENS["webhooks"]},
        subscriptions={"service_token": TOKENS["subscriptions"]},
        # Mid-rotation: the new token first, the old one still accepted.
        credits={"service_token": f"{TOKENS['credits']},{RETIRED_CREDITS_TOKEN}"},
        retry={"service_token": TOKENS["retry"]},
    )
    yield running
    await running.stop()


async def _internal_audit(http: aiohttp.ClientSession, stack: Stack, service: str, tok: str) -> int:
    url = f"{stack.apps[service].url}/internal/audit"
    async with http.get(url, headers={"Authorization": f"Bearer {tok}"}) as response:
        return response.status


async def test_a_service_opens_to_its_own_token_only(
    own_tokens: Stack, http: aiohttp.ClientSession
) -> None:
    for service, own in TOKENS.items():
        assert await _internal_audit(http, own_tokens, service, own) == 200, service
        for other, theirs in TOKENS.items():
            if other != service:
                assert await _internal_audit(http, own_tokens, service, theirs) == 401, (
                    f"{other}'s token opened {service}"
                )
    assert await _internal_audit(http, own_tokens, "credits", env.SERVICE_TOKEN) == 401


async def test_during_a_rotation_the_old_token_still_opens_its_service(
    own_tokens: Stack, http: aiohttp.ClientSession
) -> None:
    assert await _internal_audit(http, own_tokens, "credits", RETIRED_CREDITS_TOKEN) == 200
    assert await _internal_audit(http, own_tokens, "webhooks", RETIRED_CREDITS_TOKEN) == 401


async def test_the_gateway_reaches_every_service_with_its_token(
    own_tokens: Stack, http: aiohttp.ClientSession
) -> None:
    # The admin audit log fans out to every service's internal API.
    status, answer, _ = await api(
        http, "GET", f"{own_tokens.gateway}/v1/admin/audit", headers=bearer(token())
    )
    assert status == 200, answer


def test_the_gateway_refuses_to_start_without_a_token_for_an_upstream() -> None:
    values = common_settings(
        stripe_webhook_secrets=env.WEBHOOK_SECRET,
        jwt_secret=env.JWT_SECRET,
        service_token=None,
        **{f"{s}_service_token": t for s, t in TOKENS.items() if s != "retry"},
    )
    with pytest.raises(pydantic.ValidationError, match="RETRY_SERVICE_TOKEN"):
        GatewaySettings(**values)
