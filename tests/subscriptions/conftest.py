"""The product against the sandbox, with the catalog seeded and the settings
``make dev`` uses: localhost origins allowed, each customer on a test clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.subscriptions.helpers import bind_events_queue, seed
from tests.support.amqp import delete_queue_if_any
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import Stack, start_stack

ORIGINS = ["http://localhost", "http://127.0.0.1"]


@dataclass
class Billing:
    stack: Stack
    sandbox: SandboxProcess
    prices: dict[str, str]
    # Every domain event the service relays lands here too.
    events_queue: str

    @property
    def gateway(self) -> str:
        return self.stack.gateway


@pytest.fixture
async def billing(clean_state: None, sandbox: SandboxProcess) -> AsyncIterator[Billing]:
    queue = await bind_events_queue()
    stack = await start_stack(
        stripe_api_base=sandbox.url,
        subscriptions={
            "checkout_allowed_origins": ORIGINS,
            "test_clocks": True,
            "grace_period_days": 7,
        },
    )
    await sandbox.deliver_to(f"{stack.gateway}/webhooks/stripe")
    prices = await seed(sandbox.url)
    yield Billing(stack, sandbox, prices, queue)
    await stack.stop()
    await delete_queue_if_any(queue)
