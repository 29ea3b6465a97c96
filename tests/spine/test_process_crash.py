"""The subscriptions service as a real process, killed while a message is half
handled: the message is not lost and its effect happens exactly once."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared import queues
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count
from tests.support.gateway_client import post_event
from tests.support.processes import ServiceProcess
from tests.support.stack import Stack, start_stack
from tests.support.waiting import eventually


@pytest.fixture
async def gateway_only(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack(with_consumers=False)
    yield running
    await running.stop()


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        await process.stop()


def _subscriptions(processes: list[ServiceProcess], tmp_path: Path) -> ServiceProcess:
    process = ServiceProcess("subscriptions", tmp_path / f"subscriptions-{len(processes)}.log")
    processes.append(process)
    return process


async def _status(db: asyncpg.Connection, sub_id: str) -> Any:
    return await db.fetchrow(
        "SELECT status, last_event_id FROM subscriptions.subscriptions"
        " WHERE stripe_subscription_id = $1",
        sub_id,
    )


async def _upserts_waiting_on_a_lock(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
        " AND query LIKE '%FROM subscriptions%WHERE stripe_subscription_id = $1 FOR UPDATE%'"
    )


async def _inbox(db: asyncpg.Connection, event_id: str) -> list[Any]:
    return await db.fetch(
        "SELECT duplicate_count FROM subscriptions.inbox WHERE queue = $1 AND event_id = $2",
        queues.SUBSCRIPTIONS_STRIPE,
        event_id,
    )


@contextlib.asynccontextmanager
async def _row_locked(sub_id: str) -> AsyncIterator[None]:
    """Hold the subscription row FOR UPDATE: the consumer's upsert waits behind it."""
    locker = await asyncpg.connect(env.DATABASE_URL)
    transaction = locker.transaction()
    await transaction.start()
    try:
        await locker.execute(
            "SELECT 1 FROM subscriptions.subscriptions"
            " WHERE stripe_subscription_id = $1 FOR UPDATE",
            sub_id,
        )
        yield
    finally:
        # Rolling back releases the lock; nothing was written here.
        await transaction.rollback()
        await locker.close()


async def _created(
    http: aiohttp.ClientSession, gateway: Stack, db: asyncpg.Connection
) -> tuple[str, int]:
    now = int(time.time())
    sub_id = so.new_id("sub")
    evt = so.event(
        "customer.subscription.created", so.subscription(sub_id=sub_id), created=now - 60
    )
    assert (await post_event(http, gateway.gateway, evt))[0] == 200
    await eventually(lambda: _status(db, sub_id), timeout=10, what="subscription created")
    return sub_id, now


async def _running_with_an_update(
    processes: list[ServiceProcess],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    gateway: Stack,
    db: asyncpg.Connection,
) -> tuple[ServiceProcess, str, int, dict[str, Any]]:
    """A running subscriptions process, a subscription it created, and an update to send."""
    process = _subscriptions(processes, tmp_path)
    await process.start()
    sub_id, now = await _created(http, gateway, db)
    updated = so.event(
        "customer.subscription.updated",
        so.subscription(sub_id=sub_id, status="past_due"),
        created=now - 30,
    )
    return process, sub_id, now, updated


async def _deliver_and_block(
    http: aiohttp.ClientSession, gateway: Stack, db: asyncpg.Connection, evt: dict[str, Any]
) -> None:
    """Deliver ``evt`` while its row is locked: the consumer takes the message
    and waits inside its transaction, unacked."""
    assert (await post_event(http, gateway.gateway, evt))[0] == 200
    await eventually(
        lambda: _upserts_waiting_on_a_lock(db), until=lambda n: n == 1, what="upsert blocked"
    )


async def test_killed_mid_transaction_the_message_is_redelivered_and_applied_once(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    first, sub_id, _, updated = await _running_with_an_update(
        processes, tmp_path, http, gateway_only, db
    )

    async with _row_locked(sub_id):
        await _deliver_and_block(http, gateway_only, db, updated)
        assert await first.kill() == -signal.SIGKILL

    second = _subscriptions(processes, tmp_path)
    await second.start()

    row = await eventually(
        lambda: _status(db, sub_id),
        until=lambda r: r["status"] == "past_due",
        timeout=15,
        what="the update applied after the restart",
    )
    assert row["last_event_id"] == updated["id"]
    # Exactly once: one inbox row and no duplicate (the killed attempt never committed).
    assert [r["duplicate_count"] for r in await _inbox(db, updated["id"])] == [0]
    assert await message_count(queues.SUBSCRIPTIONS_STRIPE) == 0
    assert await message_count(f"{queues.SUBSCRIPTIONS_STRIPE}.dlq") == 0


async def test_sigterm_finishes_the_in_flight_message_and_loses_nothing(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    first, sub_id, now, updated = await _running_with_an_update(
        processes, tmp_path, http, gateway_only, db
    )

    deleted = so.event(
        "customer.subscription.deleted",
        so.subscription(sub_id=sub_id, status="canceled", canceled_at=now - 10),
        created=now - 10,
    )

    async with _row_locked(sub_id):
        await _deliver_and_block(http, gateway_only, db, updated)
        first.terminate()
        # Shutting down: it stops serving, but waits for the message in hand.
        await eventually(
            first.serving, until=lambda serving: not serving, timeout=10, what="HTTP closed"
        )
        assert first.returncode is None
        # An event arriving now must wait in the broker for the next replica.
        assert (await post_event(http, gateway_only.gateway, deleted))[0] == 200

    assert await first.wait(within=12) == 0, first.logs()
    # The in-flight update was finished (committed and acked) before the exit.
    row = await _status(db, sub_id)
    assert row["last_event_id"] in (updated["id"], deleted["id"])
    assert [r["duplicate_count"] for r in await _inbox(db, updated["id"])] == [0]

    second = _subscriptions(processes, tmp_path)
    await second.start()
    row = await eventually(
        lambda: _status(db, sub_id),
        until=lambda r: r["status"] == "canceled",
        timeout=15,
        what="the event sent during the shutdown applied",
    )
    assert row["last_event_id"] == deleted["id"]
    # Nothing lost, nothing applied twice.
    assert [r["duplicate_count"] for r in await _inbox(db, updated["id"])] == [0]
    assert [r["duplicate_count"] for r in await _inbox(db, deleted["id"])] == [0]
    assert await message_count(queues.SUBSCRIPTIONS_STRIPE) == 0
