"""The mail sender on the real database and a real SMTP server (aiosmtpd): a
replica whose batch outlasts its lease (a slow, tarpitting mail server) leaves
the rest of the batch to the replica that took it over, so none goes twice."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.retry.app import MIGRATIONS, SCHEMA
from services.retry.notifications.sender import Sender
from services.retry.settings import RetrySettings
from shared.clock import SettableClock
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from tests.retry.helpers import free_smtp_port
from tests.support import env

NOW = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)


class _HeldFirst:
    """Takes every message; holds the first in DATA until ``release`` is set."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = (envelope.original_content or b"").decode()
        event_id = next(
            line.split(":", 1)[1].strip()
            for line in content.splitlines()
            if line.startswith("X-Billing-Event-Id:")
        )
        if not self.holding.is_set():
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        self.received.append(event_id)
        return "250 Message accepted for delivery"


@pytest.fixture
async def pool(clean_state: None) -> AsyncIterator[asyncpg.Pool[Any]]:
    await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)
    created = await create_pool(env.DATABASE_URL, SCHEMA, min_size=1, max_size=4)
    yield created
    await created.close()


async def test_a_batch_that_outlasts_its_lease_sends_no_email_twice(
    pool: asyncpg.Pool[Any],
) -> None:
    ids = [f"evt_mail_{n}" for n in range(3)]
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO mail (event_id, event_type, recipient, subject, body_text, body_html,"
            " next_try_at, created_at) VALUES ($1, 'payment.refunded', 'ada@example.com',"
            " 'Refund issued', 'text', '<p>html</p>', $2, $2)",
            [(event_id, NOW - timedelta(seconds=3 - n)) for n, event_id in enumerate(ids)],
        )
    handler = _HeldFirst()
    port = free_smtp_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = RetrySettings(
            service_token=env.SERVICE_TOKEN, smtp_port=port, smtp_timeout_seconds=20.0
        )
        clock = SettableClock(NOW)
        first, second = Sender(pool, clock, settings), Sender(pool, clock, settings)

        # The first replica claims the three and is held on the first one's DATA
        # (a tarpitting server) until its lease is long over.
        sending = asyncio.create_task(first.send_due())
        await asyncio.get_running_loop().run_in_executor(None, handler.holding.wait, 10)
        clock.advance(timedelta(minutes=5))
        # The other replica takes the batch over and sends it.
        assert await second.send_due() == 3
        handler.release.set()
        await sending
    finally:
        controller.stop()

    sent = Counter(handler.received)
    # The one at the server when the lease ran out may go twice (nothing can
    # take it back); those the first replica had not started go once.
    assert sent[ids[1]] == 1 and sent[ids[2]] == 1, sent
    async with pool.acquire() as conn:
        states = await conn.fetch("SELECT state FROM mail")
    assert {r["state"] for r in states} == {"sent"}
