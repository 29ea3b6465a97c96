"""Stripe's HTTP boundary: auth, error envelopes, idempotency, faults, expand, forms."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import stripe

from stripe_sandbox.forms import decode
from stripe_sandbox.idempotency import IdempotencyCache
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


def _in_flight(sandbox: Sandbox, key: str, within: float = 20) -> None:
    """Wait until the sandbox has received (and not yet answered) a request with ``key``."""
    deadline = time.monotonic() + within
    while not any(
        r["idempotency_key"] == key and r["status"] is None for r in sandbox.requests_log()
    ):
        assert time.monotonic() < deadline, "the first request never arrived"
        time.sleep(0.02)  # polling the sandbox's own request log


def test_same_key_while_the_first_request_executes_is_a_409(sandbox: Sandbox) -> None:
    key = f"concurrent-{time.monotonic_ns()}"
    headers = {**AUTH, "Idempotency-Key": key}
    sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "slow", "count": 1, "delay_ms": 3000, "path_prefix": "/v1/customers"},
    )
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            sandbox.raw, "POST", "/v1/customers", headers=headers, data={"email": "a@example.com"}
        )
        _in_flight(sandbox, key)
        second = sandbox.raw(
            "POST", "/v1/customers", headers=headers, data={"email": "a@example.com"}
        )
        assert second.status_code == 409
        error = second.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "idempotency_key_in_use"
        assert key in error["message"]
        done = first.result(timeout=30)
    assert done.status_code == 200
    again = sandbox.raw("POST", "/v1/customers", headers=headers, data={"email": "a@example.com"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == done.json()["id"]


def test_stripe_python_retries_a_409_until_the_first_result_is_saved(sandbox: Sandbox) -> None:
    key = f"retry-409-{time.monotonic_ns()}"
    sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "slow", "count": 1, "delay_ms": 2500, "path_prefix": "/v1/customers"},
    )
    client = sandbox.client(max_network_retries=8)
    params: Any = {"email": "twice@example.com"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            client.v1.customers.create, params=params, options={"idempotency_key": key}
        )
        _in_flight(sandbox, key)
        second = client.v1.customers.create(params=params, options={"idempotency_key": key})
        assert second.id == first.result(timeout=30).id
    statuses = [
        r["status"] for r in sandbox.requests_log("/v1/customers") if r["idempotency_key"] == key
    ]
    assert statuses[0] == 200 and 409 in statuses and statuses[-1] == 200
    assert len(client.v1.customers.list(params={"email": "twice@example.com"}).data) == 1


def test_errors_raised_while_executing_are_saved(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    customer, pm = new_customer(client)
    pi = client.v1.payment_intents.create(
        params={
            "amount": 1000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm,
            "confirm": True,
        }
    )
    key = f"refund-{time.monotonic_ns()}"
    body = {"payment_intent": pi.id, "amount": "5000"}
    headers = {**AUTH, "Idempotency-Key": key}
    first = sandbox.raw("POST", "/v1/refunds", headers=headers, data=body)
    assert first.status_code == 400 and first.json()["error"]["param"] == "amount"
    again = sandbox.raw("POST", "/v1/refunds", headers=headers, data=body)
    assert again.status_code == 400 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # The key is spent on that request: another request with it is refused.
    other = sandbox.raw(
        "POST", "/v1/refunds", headers=headers, data={"payment_intent": pi.id, "amount": "500"}
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_validation_failures_do_not_spend_the_key(sandbox: Sandbox) -> None:
    key = f"typo-{time.monotonic_ns()}"
    headers = {**AUTH, "Idempotency-Key": key}
    typo = sandbox.raw("POST", "/v1/customers", headers=headers, data={"emial": "x@example.com"})
    assert typo.status_code == 400
    assert typo.json()["error"]["code"] == "parameter_unknown"
    fixed = sandbox.raw("POST", "/v1/customers", headers=headers, data={"email": "x@example.com"})
    assert fixed.status_code == 200 and "Idempotent-Replayed" not in fixed.headers
    # An injected edge failure is not saved either.
    edge_key = f"edge-{time.monotonic_ns()}"
    sandbox.control("POST", "/_sandbox/faults", {"kind": "server_error", "count": 1})
    edge = {**AUTH, "Idempotency-Key": edge_key}
    assert sandbox.raw("POST", "/v1/customers", headers=edge, data={}).status_code == 500
    created = sandbox.raw("POST", "/v1/customers", headers=edge, data={})
    assert created.status_code == 200 and "Idempotent-Replayed" not in created.headers


def test_keys_expire_after_24_hours() -> None:
    now = [1000.0]
    cache = IdempotencyCache(clock=lambda: now[0])
    assert cache.begin("sk_test_a", "k", "POST", "/v1/customers", {}) is None
    cache.finish(
        "sk_test_a",
        "k",
        method="POST",
        path="/v1/customers",
        params={},
        status=200,
        body=b"{}",
        headers={},
    )
    now[0] += 24 * 3600 - 1
    saved = cache.begin("sk_test_a", "k", "POST", "/v1/customers", {})
    assert saved is not None and saved.status == 200
    now[0] += 2
    # Pruned: the same key now starts a new request, with other parameters too.
    assert cache.begin("sk_test_a", "k", "POST", "/v1/customers", {"email": "new"}) is None


def test_publishable_keys_reach_only_the_client_side_endpoints(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    pk = {"Authorization": "Bearer pk_test_sandbox"}
    refused = sandbox.raw("GET", "/v1/customers", headers=pk)
    assert refused.status_code == 401
    pi = client.v1.payment_intents.create(params={"amount": 2500, "currency": "usd"})
    no_secret = sandbox.raw("GET", f"/v1/payment_intents/{pi.id}", headers=pk)
    assert no_secret.status_code == 400
    assert no_secret.json()["error"]["param"] == "client_secret"
    wrong = sandbox.raw(
        "GET", f"/v1/payment_intents/{pi.id}?client_secret={pi.id}_secret_nope", headers=pk
    )
    assert wrong.status_code == 400
    ok = sandbox.raw(
        "GET", f"/v1/payment_intents/{pi.id}?client_secret={pi.client_secret}", headers=pk
    )
    assert ok.status_code == 200 and ok.json()["status"] == "requires_payment_method"
    # stripe.js puts the key in the form body.
    confirmed = sandbox.raw(
        "POST",
        f"/v1/payment_intents/{pi.id}/confirm",
        data={
            "key": "pk_test_sandbox",
            "client_secret": pi.client_secret,
            "payment_method": "pm_card_visa",
        },
    )
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded"


def test_late_answer_fault_runs_the_request_first(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    sandbox.control(
        "POST",
        "/_sandbox/faults",
        {"kind": "late_answer", "count": 1, "delay_ms": 1500, "path_prefix": "/v1/customers"},
    )
    with ThreadPoolExecutor(1) as pool:
        creating = pool.submit(
            client.v1.customers.create, params={"email": "late-answer@example.com"}
        )
        deadline = time.monotonic() + 1.2
        seen: list[Any] = []
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
            events = client.v1.events.list(params={"type": "customer.created", "limit": 100})
            seen = [e for e in events.data if e.data.object["email"] == "late-answer@example.com"]
        # The customer and its event exist while the answer is still held back.
        assert seen and not creating.done()
        assert creating.result(timeout=5).id == seen[0].data.object["id"]
