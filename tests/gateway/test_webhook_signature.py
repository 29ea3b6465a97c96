"""``POST /webhooks/stripe``: the Stripe-Signature cases stripe-python's own
tests check (numbered as in shared/stripe/README.md), and the ones worth
adding, against a running gateway over HTTP.

Every refusal is a 4xx with ``{"error": {"code", "message"}}``, is counted in
``gateway_webhooks_rejected_total`` by reason, and publishes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pydantic
import pytest

from services.gateway.settings import GatewaySettings
from services.gateway.signature import SignatureRejected, verify
from tests.gateway.conftest import StartGateway
from tests.gateway.helpers import (
    WEBHOOK_PATH,
    a_valid_event,
    assert_error,
    assert_never_published,
    deliver,
    ledger_row,
    metric,
    post_webhook,
    published_total,
    wait_in_ledger,
)
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.stack import Stack

ONE_MIB = 1024 * 1024
UNABLE_TO_EXTRACT = "Unable to extract timestamp and signatures from header"
NO_V1 = "No signatures found with expected scheme v1"
NO_MATCH = "No signatures found matching the expected signature"


async def rejected_total(http: aiohttp.ClientSession, base_url: str, reason: str) -> float:
    return await metric(http, base_url, "gateway_webhooks_rejected_total", {"reason": reason})


async def assert_refused(
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    base_url: str,
    body: Any,
    signature: str | None,
    *,
    status: int = 400,
    code: str,
    reason: str,
    message: str | None = None,
    event_id: str | None = None,
    headers: dict[str, str] | None = None,
    secret: str | None = None,
) -> None:
    """The delivery is refused with ``code``, counted under ``reason``, not published."""
    published = await published_total(http, base_url)
    rejected = await rejected_total(http, base_url, reason)
    answer_status, answer = await post_webhook(http, base_url, body, signature, headers=headers)
    assert_error(answer_status, answer, status, code, message)
    assert await rejected_total(http, base_url, reason) == rejected + 1
    if event_id is not None:
        await assert_never_published(http, base_url, db, event_id, published, secret=secret)
    else:
        assert await published_total(http, base_url) == published


def signed(evt: dict[str, Any], **kwargs: Any) -> tuple[bytes, str]:
    body = so.body_of(evt)
    return body, so.signature(body, **kwargs)


# --- the library's cases ------------------------------------------------------


async def test_1_valid_header_is_accepted_and_the_event_reaches_the_ledger(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event("invoice.paid")
    body, sig = signed(evt)
    published = await published_total(http, module_stack.gateway)

    status, answer = await post_webhook(http, module_stack.gateway, body, sig)

    assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    assert await published_total(http, module_stack.gateway) == published + 1
    row = await wait_in_ledger(db, evt["id"])
    assert row["type"] == "invoice.paid"
    assert json.loads(row["payload"]) == evt


async def test_2_signed_body_that_is_not_json_is_an_invalid_payload(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    body = b"this is not json {"
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        so.signature(body),
        code="invalid_payload",
        reason="payload",
        message="not JSON",
    )


async def test_3_header_bad_header_is_a_signature_error(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        so.body_of(evt),
        "bad_header",
        code="invalid_signature",
        reason="signature",
        message=UNABLE_TO_EXTRACT,
        event_id=evt["id"],
    )


@pytest.mark.parametrize("as_type", [bytes, bytearray])
def test_4_payload_as_bytes_or_bytearray_is_accepted(as_type: type) -> None:
    body = so.body_of(a_valid_event())
    assert verify(as_type(body), so.signature(body), [env.WEBHOOK_SECRET], 300) is None


async def test_5_a_v2_thin_event_is_refused_with_a_clear_message(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    thin = {
        "id": "evt_test_65R4bqYjBH7zEtQ",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": "2026-01-01T00:00:00.000Z",
        "related_object": {"id": "mtr_test", "type": "billing.meter", "url": "/v1/billing/x"},
    }
    body = json.dumps(thin).encode()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        so.signature(body),
        code="thin_event_unsupported",
        reason="thin_event",
        message="thin events are not accepted",
        event_id=thin["id"],
    )


async def test_6_malformed_header_cannot_be_parsed(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        so.body_of(evt),
        "i'm not even a real signature header",
        code="invalid_signature",
        reason="signature",
        message=UNABLE_TO_EXTRACT,
        event_id=evt["id"],
    )


async def test_7_only_a_v0_scheme_has_no_v1_signature(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    body, sig = signed(evt)
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        sig.replace("v1=", "v0="),
        code="invalid_signature",
        reason="signature",
        message=NO_V1,
        event_id=evt["id"],
    )


async def test_8_a_bad_v1_signature_does_not_match(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        so.body_of(evt),
        f"t={int(time.time())},v1=bad_signature",
        code="invalid_signature",
        reason="signature",
        message=NO_MATCH,
        event_id=evt["id"],
    )


async def test_9_timestamp_15s_old_with_tolerance_10_is_stale(
    extra_gateway: StartGateway, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    gateway = await extra_gateway(webhook_tolerance_seconds=10)
    evt = a_valid_event()
    body, sig = signed(evt, timestamp=int(time.time()) - 15)
    await assert_refused(
        http,
        db,
        gateway,
        body,
        sig,
        code="invalid_stale",
        reason="stale",
        message="timestamp outside the tolerance zone",
        event_id=evt["id"],
    )


async def test_9_timestamp_301s_old_with_the_default_300_is_stale(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    body, sig = signed(evt, timestamp=int(time.time()) - 301)
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        sig,
        code="invalid_stale",
        reason="stale",
        message="timestamp outside the tolerance zone",
        event_id=evt["id"],
    )


async def test_10_valid_header_with_tolerance_10_is_accepted(
    extra_gateway: StartGateway, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    gateway = await extra_gateway(webhook_tolerance_seconds=10)
    evt = a_valid_event()
    await deliver(http, gateway, evt)
    await wait_in_ledger(db, evt["id"])


async def test_11_a_valid_v1_plus_an_extra_bad_v1_is_accepted(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    body, sig = signed(evt)
    for header in (f"{sig},v1=bad_signature", sig.replace(",", ",v1=bad_signature,")):
        status, answer = await post_webhook(http, module_stack.gateway, body, header)
        assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    await wait_in_ledger(db, evt["id"])


def test_12_old_timestamp_with_no_tolerance_passes_the_bare_verifier() -> None:
    body = so.body_of(a_valid_event())
    a_day_ago = so.signature(body, timestamp=int(time.time()) - 86_400)
    assert verify(body, a_day_ago, [env.WEBHOOK_SECRET], None) is None  # type: ignore[arg-type]
    # ... which is why the gateway always passes one (300 s unless configured):
    with pytest.raises(SignatureRejected) as refused:
        verify(body, a_day_ago, [env.WEBHOOK_SECRET], 300)
    assert refused.value.reason == "stale"


@pytest.mark.parametrize("tolerance", [0, -10])
def test_a_gateway_cannot_be_configured_without_a_tolerance(tolerance: int) -> None:
    # stripe-python reads 0 as "no tolerance" (any old delivery replays), and a
    # negative one would refuse every delivery: both are refused at start-up.
    with pytest.raises(pydantic.ValidationError, match="webhook_tolerance_seconds"):
        GatewaySettings(
            stripe_webhook_secrets=env.WEBHOOK_SECRET,
            jwt_secret=env.JWT_SECRET,
            service_token=env.SERVICE_TOKEN,
            webhook_tolerance_seconds=tolerance,
        )


async def test_12_the_gateway_always_applies_a_tolerance_to_old_timestamps(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    body, sig = signed(evt, timestamp=int(time.time()) - 86_400)
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        sig,
        code="invalid_stale",
        reason="stale",
        event_id=evt["id"],
    )


# --- beyond the library's cases -----------------------------------------------


async def test_a_timestamp_in_the_future_is_accepted_like_the_library_does(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # Clock skew between Stripe and us must not bounce deliveries; only a
    # holder of the secret can produce the signature anyway.
    evt = a_valid_event()
    body, sig = signed(evt, timestamp=int(time.time()) + 3_600)
    status, answer = await post_webhook(http, module_stack.gateway, body, sig)
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    await wait_in_ledger(db, evt["id"])


async def test_duplicate_t_entries_the_first_one_is_the_signed_timestamp(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # stripe-python takes the first ``t=`` and ignores later ones, so a
    # second timestamp can neither refresh nor replace the signed one.
    now = int(time.time())
    evt = a_valid_event()
    body, sig = signed(evt, timestamp=now)
    v1 = sig.split(",")[1]

    status, answer = await post_webhook(
        http, module_stack.gateway, body, f"t={now},t={now - 1000},{v1}"
    )
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    await wait_in_ledger(db, evt["id"])

    other = a_valid_event()
    other_body, other_sig = signed(other, timestamp=now)
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        other_body,
        f"t={now - 1000},{other_sig}",
        code="invalid_signature",
        reason="signature",
        message=NO_MATCH,
        event_id=other["id"],
    )


async def test_a_body_that_is_not_utf8_is_an_invalid_payload(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    body = so.body_of(evt).replace(b'"object": "event"', b'"object": "event", "x": "\xff\xfe"')
    # Signed over the raw bytes, as HMAC allows: the signature is right, the text is not.
    timestamp = int(time.time())
    digest = hmac.new(env.WEBHOOK_SECRET.encode(), b"%d.%s" % (timestamp, body), hashlib.sha256)
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        f"t={timestamp},v1={digest.hexdigest()}",
        code="invalid_payload",
        reason="payload",
        message="UTF-8",
        event_id=evt["id"],
    )


async def test_an_empty_signed_body_is_an_invalid_payload(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        b"",
        so.signature(b""),
        code="invalid_payload",
        reason="payload",
    )


async def test_an_empty_unsigned_body_is_refused(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        b"",
        None,
        code="invalid_signature",
        reason="signature",
        message="missing Stripe-Signature header",
    )


async def test_a_missing_signature_header_is_refused(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        so.body_of(evt),
        None,
        code="invalid_signature",
        reason="signature",
        message="missing Stripe-Signature header",
        event_id=evt["id"],
    )


def _oversized_event() -> tuple[dict[str, Any], bytes, str]:
    evt = a_valid_event()
    evt["data"]["object"]["description"] = "x" * ONE_MIB
    body = so.body_of(evt)
    assert len(body) > ONE_MIB
    return evt, body, so.signature(body)


async def test_a_body_over_1_mib_with_content_length_is_413(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt, body, sig = _oversized_event()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        sig,
        status=413,
        code="payload_too_large",
        reason="too_large",
        event_id=evt["id"],
    )


async def test_a_body_over_1_mib_sent_chunked_is_413(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt, body, sig = _oversized_event()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    published = await published_total(http, module_stack.gateway)
    rejected = await rejected_total(http, module_stack.gateway, "too_large")
    async with http.post(
        f"{module_stack.gateway}{WEBHOOK_PATH}",
        data=chunks(),
        headers={"Stripe-Signature": sig, "Content-Type": "application/json"},
    ) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        status, answer = response.status, await response.json(content_type=None)
    assert_error(status, answer, 413, "payload_too_large")
    assert await rejected_total(http, module_stack.gateway, "too_large") == rejected + 1
    await assert_never_published(http, module_stack.gateway, db, evt["id"], published)


async def test_a_body_of_exactly_1_mib_is_not_too_large(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    evt["data"]["object"]["description"] = ""
    padding = ONE_MIB - len(so.body_of(evt))
    evt["data"]["object"]["description"] = "x" * padding
    body = so.body_of(evt)
    assert len(body) == ONE_MIB
    status, answer = await post_webhook(http, module_stack.gateway, body, so.signature(body))
    assert (status, answer) == (200, {"received": True, "id": evt["id"]})
    await wait_in_ledger(db, evt["id"])


# --- secret rotation ------------------------------------------------------------


async def test_during_a_rotation_either_secret_verifies_and_a_third_does_not(
    extra_gateway: StartGateway, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    gateway = await extra_gateway(stripe_webhook_secrets="whsec_old,whsec_new")
    by_old, by_new, both = a_valid_event(), a_valid_event(), a_valid_event()
    await deliver(http, gateway, by_old, secret="whsec_old")
    await deliver(http, gateway, by_new, secret="whsec_new")
    # What Stripe sends while both secrets are live: one v1 per secret.
    body, sig_old = signed(both, secret="whsec_old")
    sig_new = so.signature(body, secret="whsec_new", timestamp=int(sig_old[2:].split(",")[0]))
    status, answer = await post_webhook(http, gateway, body, f"{sig_old},{sig_new.split(',')[1]}")
    assert (status, answer) == (200, {"received": True, "id": both["id"]})
    for evt in (by_old, by_new, both):
        await wait_in_ledger(db, evt["id"])

    stranger = a_valid_event()
    body, sig = signed(stranger, secret="whsec_someone_else")
    await assert_refused(
        http,
        db,
        gateway,
        body,
        sig,
        code="invalid_signature",
        reason="signature",
        message=NO_MATCH,
        event_id=stranger["id"],
        secret="whsec_new",
    )


async def test_during_a_rotation_an_old_delivery_signed_by_either_secret_is_stale(
    extra_gateway: StartGateway, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    gateway = await extra_gateway(stripe_webhook_secrets="whsec_old,whsec_new")
    for secret in ("whsec_old", "whsec_new"):
        evt = a_valid_event()
        body, sig = signed(evt, secret=secret, timestamp=int(time.time()) - 400)
        await assert_refused(
            http,
            db,
            gateway,
            body,
            sig,
            code="invalid_stale",
            reason="stale",
            event_id=evt["id"],
            secret="whsec_new",
        )


# --- signed, but not a Stripe event ------------------------------------------------


def _not_events() -> list[Any]:
    base = a_valid_event()
    without_id = {k: v for k, v in base.items() if k != "id"}
    without_type = {k: v for k, v in base.items() if k != "type"}
    return [
        pytest.param([base], id="array"),
        pytest.param("evt_a_string", id="string"),
        pytest.param({}, id="empty-object"),
        pytest.param(without_id, id="no-id"),
        pytest.param(without_type, id="no-type"),
        pytest.param({**base, "object": "invoice"}, id="object-not-event"),
        pytest.param({k: v for k, v in base.items() if k != "object"}, id="no-object"),
        pytest.param({**base, "id": "in_1234"}, id="id-not-evt"),
        pytest.param({**base, "id": 1234}, id="id-not-string"),
        pytest.param({**base, "type": "invoice paid"}, id="type-with-space"),
        pytest.param({**base, "type": ""}, id="type-empty"),
        pytest.param({**base, "type": "Invoice.Paid"}, id="type-uppercase"),
        pytest.param({**base, "type": "a." * 150 + "b"}, id="type-too-long"),
    ]


@pytest.mark.parametrize("document", _not_events())
async def test_signed_json_that_is_not_a_stripe_event_is_an_invalid_payload(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection, document: Any
) -> None:
    body = json.dumps(document).encode()
    await assert_refused(
        http,
        db,
        module_stack.gateway,
        body,
        so.signature(body),
        code="invalid_payload",
        reason="payload",
    )
    event_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(event_id, str):
        assert await ledger_row(db, event_id) is None


# --- metrics ---------------------------------------------------------------------


async def test_metrics_count_rejections_by_reason(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = module_stack.gateway
    before = {
        reason: await rejected_total(http, gateway, reason)
        for reason in ("signature", "stale", "payload")
    }
    received = await metric(http, gateway, "gateway_webhooks_received_total")
    evt = a_valid_event()
    body = so.body_of(evt)
    await post_webhook(http, gateway, body, "t=1,v1=bad_signature")
    await post_webhook(http, gateway, body, None)
    await post_webhook(http, gateway, body, so.signature(body, timestamp=int(time.time()) - 999))
    await post_webhook(http, gateway, b"[]", so.signature(b"[]"))

    assert await rejected_total(http, gateway, "signature") == before["signature"] + 2
    assert await rejected_total(http, gateway, "stale") == before["stale"] + 1
    assert await rejected_total(http, gateway, "payload") == before["payload"] + 1
    assert await metric(http, gateway, "gateway_webhooks_received_total") == received + 4
