"""Fixtures for the gateway tests.

Tests that only send requests which change nothing but the ledger (each with
its own event ids) share one stack per module instead of restarting it per
test; they must not use the function-scoped ``stack`` fixture in the same
module, whose reset would pull the schemas from under the shared one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.stack import Stack, reset_state, start_stack


@pytest.fixture(scope="module")
async def module_stack() -> AsyncIterator[Stack]:
    await reset_state()
    running = await start_stack()
    yield running
    await running.stop()


StartGateway = Callable[..., Awaitable[str]]


@pytest.fixture
async def extra_gateway(module_stack: Stack) -> AsyncIterator[StartGateway]:
    """Start another gateway with other settings; its events reach the module
    stack's consumers through the same broker. Returns the gateway's URL."""
    started: list[Stack] = []

    async def start(**settings: Any) -> str:
        gateway_only = await start_stack(with_consumers=False, gateway=settings)
        started.append(gateway_only)
        return gateway_only.gateway

    yield start
    for gateway_only in started:
        await gateway_only.stop()
