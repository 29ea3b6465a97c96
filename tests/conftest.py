"""Fixtures shared by the product's tests (the sandbox's tests have their own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import stripe

from shared.stripe_client import StripeSettings
from shared.stripe_client import stripe_client as make_stripe_client
from tests.support import env
from tests.support.amqp_proxy import AmqpProxy, amqp_proxy_for
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, reset_state, start_stack
from tests.support.tcp_proxy import TcpProxy, proxy_for


@pytest.fixture
async def clean_state() -> None:
    await reset_state()


@pytest.fixture
async def stack(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack()
    yield running
    await running.stop()


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxProcess]:
    """The Stripe sandbox as its own process, delivering nowhere yet."""
    process = SandboxProcess(tmp_path / "sandbox.log")
    await process.start()
    yield process
    await process.stop()


@pytest.fixture
async def stripe_stack(clean_state: None, sandbox: SandboxProcess) -> AsyncIterator[Stack]:
    """The whole product against the sandbox: every service calls it, and it
    delivers signed webhooks to the gateway, as Stripe would."""
    running = await start_stack(stripe_api_base=sandbox.url)
    await sandbox.deliver_to(f"{running.gateway}/webhooks/stripe")
    yield running
    await running.stop()


@pytest.fixture
async def stripe_client(sandbox: SandboxProcess) -> AsyncIterator[stripe.StripeClient]:
    """stripe-python pointed at the sandbox: what a test does "in Stripe"."""
    http_client = stripe.AIOHTTPClient()
    yield make_stripe_client(StripeSettings(stripe_api_base=sandbox.url), http_client=http_client)
    await http_client.close_async()  # type: ignore[no-untyped-call]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def db() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.DATABASE_URL)
    yield conn
    await conn.close()


@pytest.fixture
async def broker_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test broker, for whoever should lose it."""
    async with proxy_for(env.AMQP_URL) as proxy:
        yield proxy


@pytest.fixture
async def amqp_proxy() -> AsyncIterator[AmqpProxy]:
    """A proxy in front of the test broker that can slip frames of its own in."""
    async with amqp_proxy_for(env.AMQP_URL) as proxy:
        yield proxy


@pytest.fixture
async def database_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test database, for whoever should lose it."""
    async with proxy_for(env.DATABASE_URL) as proxy:
        yield proxy
