"""One event, one subscription, and input checks of the admin API: what an
operator gets for a known id, an unknown one and a malformed one."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from tests.gateway.helpers import (
    a_valid_event,
    admin,
    assert_error,
    deliver,
    delivered_subscription_event,
    wait_in_ledger,
)
from tests.support.stack import Stack
from tests.support.times import iso

REASON = b'{"reason": "operator check"}'


async def test_show_event_returns_the_payload_as_stripe_sent_it(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event("invoice.paid")
    await deliver(http, module_stack.gateway, evt)
    await wait_in_ledger(db, evt["id"])

    status, answer, _ = await admin(http, module_stack.gateway, "GET", f"/events/{evt['id']}")

    assert status == 200
    assert answer["id"] == evt["id"]
    assert answer["type"] == "invoice.paid"
    assert answer["api_version"] == evt["api_version"]
    assert answer["livemode"] == evt["livemode"]
    assert answer["created"] == iso(evt["created"])
    assert answer["payload"] == evt
    assert (answer["duplicates"], answer["replay_count"], answer["last_replayed_at"]) == (
        0,
        0,
        None,
    )


async def test_show_unknown_event_is_404(module_stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/events/evt_test_never_delivered"
    )
    assert_error(status, answer, 404, "not_found")


MALFORMED_EVENT_IDS = ["not_an_event", "evt_", "evt_with-dash", "EVT_upper", "evt_a%20b", "x" * 300]


@pytest.mark.parametrize("event_id", MALFORMED_EVENT_IDS)
async def test_show_malformed_event_id_is_400(
    module_stack: Stack, http: aiohttp.ClientSession, event_id: str
) -> None:
    status, answer, _ = await admin(http, module_stack.gateway, "GET", f"/events/{event_id}")
    assert_error(status, answer, 400, "invalid_parameter", "event_id")
    assert [d["field"] for d in answer["error"]["details"]] == ["event_id"]


async def test_replay_of_an_unknown_event_is_404(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "POST", "/events/evt_test_unknown/replay", data=REASON
    )
    assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize("event_id", ["in_123", "evt_a-b"])
async def test_replay_of_a_malformed_id_is_400(
    module_stack: Stack, http: aiohttp.ClientSession, event_id: str
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "POST", f"/events/{event_id}/replay", data=REASON
    )
    assert_error(status, answer, 400, "invalid_parameter", "event_id")


async def test_show_subscription_returns_the_row(
    module_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt, row = await delivered_subscription_event(http, module_stack.gateway, db)
    sub_id = row["stripe_subscription_id"]

    status, answer, _ = await admin(http, module_stack.gateway, "GET", f"/subscriptions/{sub_id}")

    assert status == 200
    assert answer == {
        "id": sub_id,
        "customer": "cus_test_member",
        "status": "active",
        "price_id": "price_hot_desk",
        "current_period_start": iso(1_790_000_000),
        "current_period_end": iso(1_792_592_000),
        "cancel_at_period_end": False,
        "canceled_at": None,
        "last_event": {
            "id": evt["id"],
            "type": "customer.subscription.created",
            "created": iso(evt["created"]),
        },
        "updated_at": iso(row["updated_at"]),
    }


async def test_show_unknown_subscription_is_404(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/subscriptions/sub_test_unknown"
    )
    assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize("sub_id", ["subscription_1", "sub_", "sub_bad-dash", "evt_123"])
async def test_show_malformed_subscription_id_is_400(
    module_stack: Stack, http: aiohttp.ClientSession, sub_id: str
) -> None:
    status, answer, _ = await admin(http, module_stack.gateway, "GET", f"/subscriptions/{sub_id}")
    assert_error(status, answer, 400, "invalid_parameter")


# Listing and redriving dead letters are covered elsewhere; these are the
# refusals at the door.


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b'{"queue": "no.such.queue", "reason": "stuck"}', 422, "validation_failed", "queue"),
        (b'{"queue": "webhooks.ledger"}', 422, "validation_failed", "reason"),
        (b'{"reason": "stuck"}', 422, "validation_failed", "all"),
        (b'{"ids": [], "reason": "stuck"}', 422, "validation_failed", "ids"),
        (b'{"queue": 42, "reason": "stuck"}', 422, "validation_failed", "queue"),
        (b"not json", 400, "invalid_json", None),
        (b'["webhooks.ledger"]', 400, "invalid_json", None),
        (
            b'{"queue": "webhooks.ledger", "message_ids": "evt_1", "reason": "stuck"}',
            422,
            "validation_failed",
            "message_ids",
        ),
        (
            b'{"queue": "webhooks.ledger", "message_ids": [1], "reason": "stuck"}',
            422,
            "validation_failed",
            "message_ids.0",
        ),
        (
            b'{"queue": "webhooks.ledger", "reason": "stuck", "force": true}',
            422,
            "validation_failed",
            "force",
        ),
    ],
)
async def test_redrive_with_bad_input_names_the_problem(
    module_stack: Stack,
    http: aiohttp.ClientSession,
    *,
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    answered, answer, _ = await admin(
        http,
        module_stack.gateway,
        "POST",
        "/dead-letters/redrive",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert_error(answered, answer, status, code)
    if field is not None:
        assert field in [d["field"] for d in answer["error"]["details"]], answer


async def test_dead_letters_of_an_unknown_queue_is_422(
    module_stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await admin(
        http, module_stack.gateway, "GET", "/dead-letters", params={"queue": "no.such.queue"}
    )
    assert_error(status, answer, 422, "validation_failed", "queue")
