"""``service_ready`` follows the readiness checks on every scrape, so the
ServiceNotReady alert sees a pod that is up but takes no traffic."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support import env
from tests.support.stack import Stack, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually


@pytest.fixture
async def gateway(broker_proxy: TcpProxy) -> AsyncIterator[Stack]:
    running = await start_stack(
        with_consumers=False, gateway={"amqp_url": via_proxy(env.AMQP_URL, broker_proxy)}
    )
    yield running
    await running.stop()


async def _broker_ready_metric(http: aiohttp.ClientSession, stack: Stack) -> float | None:
    async with http.get(f"{stack.gateway}/metrics") as response:
        text = await response.text()
    match = re.search(r'^service_ready\{check="broker"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def test_a_scrape_reports_each_readiness_check(
    gateway: Stack, broker_proxy: TcpProxy, http: aiohttp.ClientSession
) -> None:
    await eventually(
        lambda: _broker_ready_metric(http, gateway), until=lambda v: v == 1.0, what="ready"
    )
    broker_proxy.refuse()
    await eventually(
        lambda: _broker_ready_metric(http, gateway),
        until=lambda v: v == 0.0,
        what="service_ready{check=broker} 0 with the broker gone",
    )
    broker_proxy.restore()
    await eventually(
        lambda: _broker_ready_metric(http, gateway),
        until=lambda v: v == 1.0,
        timeout=15,
        what="service_ready{check=broker} 1 again",
    )
