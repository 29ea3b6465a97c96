"""Stripe's HTTP boundary: auth, error envelopes, idempotency, faults, expand, forms."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from stripe_sandbox.forms import decode
from tests.stripe_sandbox.sandbox_helpers import API_KEY, Sandbox, new_customer

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_form_decoding() -> None:
    assert decode("items[0][price]=p1&items[1][price]=p2&items[1][quantity]=2") == {
        "items": [{"price": "p1"}, {"price": "p2", "quantity": "2"}]
    }
    assert decode("expand[]=a&expand[]=b.c&metadata[k]=v&email=") == {
        "expand": ["a", "b.c"],
        "metadata": {"k": "v"},
        "email": "",
    }
    assert decode("created[gte]=5&lookup_keys[0]=x") == {
        "created": {"gte": "5"},
        "lookup_keys": ["x"],
    }


def test_missing_and_invalid_api_key(sandbox: Sandbox) -> None:
    response = sandbox.raw("GET", "/v1/customers")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    bad = sandbox.raw("GET", "/v1/customers", headers={"Authorization": "Bearer sk_live_x"})
    assert bad.status_code == 401
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("rk_nope", base_addresses={"api": sandbox.base_url}).v1.customers.list()


def test_error_shapes(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_missing")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing" and missing.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create(params={"emial": "typo@example.com"})  # type: ignore[typeddict-unknown-key]
    assert unknown.value.param == "emial"
    with pytest.raises(stripe.InvalidRequestError) as bad_int:
        client.v1.payment_intents.create(params={"amount": "abc", "currency": "usd"})  # type: ignore[typeddict-item]
    assert bad_int.value.param == "amount"
    with pytest.raises(stripe.CardError) as card:
        client.v1.payment_intents.create(
            params={
                "amount": 2500,
                "currency": "usd",
                "confirm": True,
                "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
            }
        )
    assert card.value.http_status == 402
    assert card.value.code == "card_declined"
    assert card.value.error is not None
    assert card.value.error.decline_code == "insufficient_funds"
    body = sandbox.raw("GET", "/v1/nope", headers=AUTH)
    assert body.status_code == 404 and "Unrecognized request URL" in body.json()["error"]["message"]


def test_idempotency(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    key = f"idem-{time.monotonic_ns()}"
    first = client.v1.customers.create(
        params={"email": "i@example.com"}, options={"idempotency_key": key}
    )
    second = client.v1.customers.create(
        params={"email": "i@example.com"}, options={"idempotency_key": key}
    )
    assert first.id == second.id
    assert second.last_response is not None
    assert second.last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(
            params={"email": "other@example.com"}, options={"idempotency_key": key}
        )
    # Keys are scoped per API key.
    other = stripe.StripeClient("sk_test_other", base_addresses={"api": sandbox.base_url})
    third = other.v1.customers.create(
        params={"email": "other@example.com"}, options={"idempotency_key": key}
    )
    assert third.id != first.id
    # A declined charge is replayed, status and all, instead of charging again.
    pi_key = f"pi-{time.monotonic_ns()}"
    params: Any = {
        "amount": 2500,
        "currency": "usd",
        "confirm": True,
        "payment_method": "pm_card_chargeDeclined",
    }
    for _ in range(2):
        with pytest.raises(stripe.CardError):
            client.v1.payment_intents.create(params=params, options={"idempotency_key": pi_key})
    posts = [
        r
        for r in sandbox.requests_log("/v1/payment_intents", "POST")
        if r["idempotency_key"] == pi_key
    ]
    assert [r["replayed"] for r in posts] == [False, True]
    assert [r["status"] for r in posts] == [402, 402]


@pytest.mark.parametrize("kind", ["rate_limit", "server_error"])
def test_faults_survived_by_retries(sandbox: Sandbox, kind: str) -> None:
    client = sandbox.client(max_network_retries=2)
    sandbox.control(
        "POST", "/_sandbox/faults", {"kind": kind, "count": 1, "path_prefix": "/v1/customers"}
    )
    customer = client.v1.customers.create(params={"email": "retry@example.com"})
    log = [r for r in sandbox.requests_log("/v1/customers", "POST")][-2:]
    assert log[0]["fault"] == kind and log[0]["status"] in (429, 500)
    assert log[1]["status"] == 200
    assert log[0]["idempotency_key"] == log[1]["idempotency_key"]
    assert client.v1.customers.retrieve(customer.id).email == "retry@example.com"
    emails = client.v1.customers.list(params={"email": "retry@example.com", "limit": 100})
    assert len({c.id for c in emails.data}) == len(emails.data)


def test_fault_without_retries_surfaces(sandbox: Sandbox) -> None:
    client = sandbox.client(max_network_retries=0)
    sandbox.control("POST", "/_sandbox/faults", {"kind": "rate_limit", "count": 1})
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.list()
    raw_fault = sandbox.control("POST", "/_sandbox/faults", {"kind": "server_error", "count": 1})
    assert raw_fault["faults"]
    response = sandbox.raw("GET", "/v1/customers", headers=AUTH)
    assert response.status_code == 500
    assert response.headers["Stripe-Should-Retry"] == "true"
    assert response.json()["error"]["type"] == "api_error"


def test_slow_fault(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    sandbox.control("POST", "/_sandbox/faults", {"kind": "slow", "count": 1, "delay_ms": 300})
    started = time.monotonic()
    client.v1.customers.list(params={"limit": 1})
    assert time.monotonic() - started >= 0.3


def test_expand_and_list_url(client: stripe.StripeClient, catalog: dict[str, Any]) -> None:
    customer, pm = new_customer(client)
    fetched = client.v1.customers.retrieve(
        customer.id, params={"expand": ["invoice_settings.default_payment_method"]}
    )
    assert fetched.invoice_settings.default_payment_method.id == pm  # type: ignore[union-attr]
    client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["hot_desk"].id}]}
    )
    subs = client.v1.subscriptions.list(
        params={"customer": customer.id, "expand": ["data.customer"]}
    )
    assert subs.data[0].customer.id == customer.id  # type: ignore[union-attr]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.retrieve(customer.id, params={"expand": ["nonsense"]})
