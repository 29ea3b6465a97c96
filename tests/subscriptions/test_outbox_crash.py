"""A domain event committed with its state change is published even when the
process is killed (SIGKILL) between the commit and the publish."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.outbox import event_id
from tests.subscriptions.helpers import bind_events_queue
from tests.support import stripe_objects as so
from tests.support.amqp import delete_queue_if_any, take_all
from tests.support.gateway_client import post_event
from tests.support.processes import ServiceProcess
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually


@pytest.fixture
async def gateway_only(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack(with_consumers=False)
    yield running
    await running.stop()


async def _pending(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, routing_key FROM subscriptions.outbox WHERE published_at IS NULL"
    )


async def test_killed_between_commit_and_publish_the_event_goes_out_after_restart(
    gateway_only: Stack, tmp_path: Path, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    first = ServiceProcess("subscriptions", tmp_path / "first.log")
    second = ServiceProcess("subscriptions", tmp_path / "second.log")
    try:
        await first.start()
        sub_id = so.new_id("sub")
        now = int(time.time())
        ended = so.event(
            "customer.subscription.deleted",
            so.subscription(
                sub_id=sub_id, status="canceled", canceled_at=now - 5, user_id="u_kill"
            ),
            created=now - 5,
        )
        # Nothing is bound to billing.events yet: the broker cannot take the
        # event (every publish is mandatory), so the relay holds it pending
        # after the state change committed, as if it had died before publishing.
        assert (await post_event(http, gateway_only.gateway, ended))[0] == 200
        pending = await eventually(
            lambda: _pending(db), until=lambda rows: len(rows) == 1, what="committed, unpublished"
        )
        assert pending[0]["routing_key"] == "subscription.canceled"
        assert (
            await db.fetchval(
                "SELECT status FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
                sub_id,
            )
            == "canceled"
        )

        assert await first.kill() == -signal.SIGKILL
        queue = await bind_events_queue()
        await second.start()

        await eventually(lambda: _pending(db), until=lambda rows: not rows, what="relayed")
        messages = await eventually(lambda: take_all(queue), what="the event published")
        assert len(messages) == 1
        expected_id = str(event_id("subscriptions", "subscription.canceled", sub_id))
        assert messages[0].message_id == expected_id
        body = json.loads(messages[0].body)
        assert body["id"] == expected_id and body["type"] == "subscription.canceled"
        assert body["schema_version"] == 1
        assert body["data"]["member"]["user_id"] == "u_kill"
        assert body["data"]["subscription_id"] == sub_id
        await delete_queue_if_any(queue)
    finally:
        await first.stop()
        await second.stop()
