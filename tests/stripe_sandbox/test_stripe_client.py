"""The product's Stripe client goes wherever STRIPE_API_BASE points, key or no key."""

from __future__ import annotations

import pytest
import stripe
from pydantic import SecretStr

from shared.stripe_client import (
    OFFLINE_KEY,
    STRIPE_API_VERSION,
    StripeNotConfigured,
    StripeSettings,
    stripe_client,
)
from tests.stripe_sandbox.sandbox_helpers import Sandbox


def _requests_to(sandbox: Sandbox, path: str) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = sandbox.control(
        "GET", f"/_sandbox/requests?path_prefix={path}"
    )["data"]
    return entries


def test_calls_go_to_the_api_base_with_a_key(sandbox: Sandbox) -> None:
    sandbox.control("DELETE", "/_sandbox/requests")
    client = stripe_client(
        StripeSettings(
            stripe_secret_key=SecretStr("sk_test_configured"), stripe_api_base=sandbox.base_url
        )
    )

    customer = client.v1.customers.create(params={"email": "key@example.com"})

    assert customer.id.startswith("cus_")
    assert len(_requests_to(sandbox, "/v1/customers")) == 1


def test_calls_go_to_the_api_base_without_a_key(sandbox: Sandbox) -> None:
    sandbox.control("DELETE", "/_sandbox/requests")
    client = stripe_client(StripeSettings(stripe_api_base=sandbox.base_url + "/"))

    customer = client.v1.customers.create(params={"email": "nokey@example.com"})

    assert customer.id.startswith("cus_")
    assert len(_requests_to(sandbox, "/v1/customers")) == 1
    assert OFFLINE_KEY.startswith("sk_test_")


async def test_async_calls_go_to_the_api_base(sandbox: Sandbox) -> None:
    sandbox.control("DELETE", "/_sandbox/requests")
    http = stripe.AIOHTTPClient()
    client = stripe_client(StripeSettings(stripe_api_base=sandbox.base_url), http_client=http)
    try:
        customer = await client.v1.customers.create_async(params={"email": "a@example.com"})
    finally:
        await http.close_async()

    assert customer.id.startswith("cus_")
    assert len(_requests_to(sandbox, "/v1/customers")) == 1


def test_no_key_and_no_base_is_refused() -> None:
    with pytest.raises(StripeNotConfigured):
        stripe_client(StripeSettings(stripe_secret_key=None, stripe_api_base=None))


def test_the_pinned_api_version_is_the_library_one() -> None:
    assert stripe.api_version == STRIPE_API_VERSION
