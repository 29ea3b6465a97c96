"""503 when a dependency is down, with ``Retry-After`` and the error shape,
and the request id on the log lines of the way: the owner's broker (a replay
cannot be published), the owner itself (the gateway logs it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from tests.gateway.helpers import (
    a_valid_event,
    admin,
    api,
    assert_error,
    bearer,
    deliver,
    token,
    wait_in_ledger,
)
from tests.support import env
from tests.support.logs import log_lines
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually

REASON = b'{"reason": "operator check"}'


@pytest.fixture
async def webhooks_behind_proxy(clean_state: None, broker_proxy: TcpProxy) -> AsyncIterator[Stack]:
    """The stack, the webhooks service reaching the broker through a proxy."""
    running = await start_stack(webhooks={"amqp_url": via_proxy(env.AMQP_URL, broker_proxy)})
    yield running
    await running.stop()


async def test_503_with_retry_after_when_the_owners_broker_is_down(
    webhooks_behind_proxy: Stack,
    broker_proxy: TcpProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    stack = webhooks_behind_proxy
    evt = a_valid_event()
    await deliver(http, stack.gateway, evt)
    await wait_in_ledger(db, evt["id"])

    broker_proxy.refuse()
    status, answer, headers = await admin(
        http, stack.gateway, "POST", f"/events/{evt['id']}/replay", data=REASON
    )
    assert_error(status, answer, 503, "broker_unavailable")
    assert int(headers["Retry-After"]) > 0

    broker_proxy.restore()

    async def replayed() -> int:
        status, _, _ = await admin(
            http, stack.gateway, "POST", f"/events/{evt['id']}/replay", data=REASON
        )
        return status

    await eventually(replayed, until=lambda s: s == 202, timeout=30, what="replay once back")


async def test_the_gateways_log_line_for_a_down_owner_carries_the_request_id(
    clean_state: None, http: aiohttp.ClientSession
) -> None:
    # The gateway alone: every owner is unreachable.
    stack = await start_stack(with_consumers=False)
    try:
        with log_lines() as lines:
            status, answer, headers = await api(
                http,
                "GET",
                f"{stack.gateway}/v1/admin/events",
                headers={**bearer(token("admin")), "X-Request-Id": "trace-me-42"},
            )
    finally:
        await stack.stop()
    assert_error(status, answer, 503, "upstream_unavailable")
    assert headers["X-Request-Id"] == answer["error"]["request_id"] == "trace-me-42"
    assert int(headers["Retry-After"]) > 0
    [logged] = [line for line in lines if line["event"] == "upstream_unavailable"]
    assert logged["request_id"] == "trace-me-42"
    assert logged["upstream"] == "webhooks"
