"""The Idempotency-Key settings as a service reads them: a key is forgotten
after ``IDEMPOTENCY_KEY_TTL_SECONDS`` (through the gateway: the same key then
serves another request), and the service's housekeeping purges it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from tests.gateway.helpers import a_valid_event, admin, assert_error, deliver, wait_in_ledger
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually

TTL_SECONDS = 2


@pytest.fixture
async def short_keys(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack(
        webhooks={"idempotency_key_ttl_seconds": TTL_SECONDS, "housekeeping_interval_seconds": 0.3}
    )
    yield running
    await running.stop()


async def test_a_key_expires_after_the_configured_ttl_and_is_purged(
    short_keys: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    evt = a_valid_event()
    await deliver(http, short_keys.gateway, evt)
    await wait_in_ledger(db, evt["id"])
    path, key = f"/events/{evt['id']}/replay", {"Idempotency-Key": "ttl-key-1"}

    status, _, _ = await admin(
        http, short_keys.gateway, "POST", path, data=b'{"reason": "first"}', headers=key
    )
    assert status == 202
    status, answer, _ = await admin(
        http, short_keys.gateway, "POST", path, data=b'{"reason": "second"}', headers=key
    )
    assert_error(status, answer, 422, "idempotency_key_reused")

    async def stored() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM webhooks.idempotency_keys WHERE key = 'ttl-key-1'"
            )
        )

    assert await stored() == 1
    # The service's housekeeping forgets it once the TTL has passed.
    await eventually(stored, until=lambda n: n == 0, timeout=TTL_SECONDS + 5, what="purged")
    status, answer, headers = await admin(
        http, short_keys.gateway, "POST", path, data=b'{"reason": "second"}', headers=key
    )
    assert status == 202, answer
    assert "Idempotent-Replayed" not in headers
