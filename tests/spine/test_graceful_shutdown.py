"""SIGTERM, as an orchestrator sends it, to services running as real OS
processes: they stop taking work at once, answer or finish what is in flight
(or hand it back), flush the outbox, and exit within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest

from shared import queues
from shared.broker.topology import BILLING_EVENTS, QUORUM, STRIPE_EVENTS
from shared.shutdown import TAIL_SECONDS
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count, take_all
from tests.support.gateway_client import post_event
from tests.support.processes import ServiceProcess
from tests.support.stack import Stack, delete_queues, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually

# Short drains keep the tests quick; the grace is what an orchestrator would give.
DRAIN = 3.0
GRACE = DRAIN + TAIL_SECONDS


@pytest.fixture
async def gateway_only(clean_state: None) -> AsyncIterator[Stack]:
    running = await start_stack(with_consumers=False)
    yield running
    await running.stop()


@pytest.fixture
async def processes() -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        await process.stop()


@pytest.fixture
async def sink() -> AsyncIterator[str]:
    """A queue of the test's own, bound to both exchanges: publishes are routable
    and what was published can be read back."""
    name = f"test.shutdown.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True, arguments=QUORUM)
        await queue.bind(STRIPE_EVENTS, "#")
        await queue.bind(BILLING_EVENTS, "test.shutdown.#")
    yield name
    await delete_queues([name])


def _process(
    processes: list[ServiceProcess], tmp_path: Path, service: str, **environment: str
) -> ServiceProcess:
    environment.setdefault("SHUTDOWN_DRAIN_SECONDS", str(DRAIN))
    process = ServiceProcess(service, tmp_path / f"{service}-{len(processes)}.log", **environment)
    processes.append(process)
    return process


async def _sigterm_and_wait_closed(process: ServiceProcess) -> float:
    """SIGTERM; returns when the process stops accepting connections."""
    sent = time.monotonic()
    process.terminate()
    await eventually(process.serving, until=lambda up: not up, timeout=10, what="listener closed")
    return sent


async def _exited_within_grace(process: ServiceProcess, sent: float, grace: float = GRACE) -> None:
    code = await process.wait(within=grace + 5)
    took = time.monotonic() - sent
    assert code == 0, process.logs()
    assert took < grace, f"exited after {took:.1f}s, grace {grace}s"


async def _status(db: asyncpg.Connection, sub_id: str) -> Any:
    return await db.fetchrow(
        "SELECT status, last_event_id FROM subscriptions.subscriptions"
        " WHERE stripe_subscription_id = $1",
        sub_id,
    )


async def _inbox(db: asyncpg.Connection, event_id: str) -> list[int]:
    rows = await db.fetch(
        "SELECT duplicate_count FROM subscriptions.inbox WHERE queue = $1 AND event_id = $2",
        queues.SUBSCRIPTIONS_STRIPE,
        event_id,
    )
    return [r["duplicate_count"] for r in rows]


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


class _SlowRequest:
    """An internal API request whose body arrives in two halves: its handler
    is in flight from the first half until the second."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None

    async def begin(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        path = f"/internal/admin/subscriptions/{so.new_id('sub')}"
        head = (
            f"GET {path} HTTP/1.1\r\nHost: service\r\n"
            f"Authorization: Bearer {env.SERVICE_TOKEN}\r\n"
            "X-User-Id: ops\r\nX-User-Role: admin\r\nContent-Length: 2\r\n\r\n "
        )
        self._writer.write(head.encode())
        await self._writer.drain()
        await asyncio.sleep(0.3)  # the handler is now waiting for the rest

    async def finish(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b" ")
        await self._writer.drain()
        status_line = await asyncio.wait_for(self._reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert "content-length" in headers, (status_line, headers)
        body = await self._reader.readexactly(int(headers["content-length"]))
        self._writer.close()
        return int(status_line.split()[1]), headers, orjson.loads(body)


async def test_sigterm_takes_no_new_message_while_in_flight_requests_drain(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    first = _process(processes, tmp_path, "subscriptions", SHUTDOWN_DRAIN_SECONDS="10")
    await first.start()
    request = _SlowRequest(first.port)
    await request.begin()

    sent = await _sigterm_and_wait_closed(first)
    await asyncio.sleep(0.5)
    sub = so.subscription(status="active")
    created = so.event("customer.subscription.created", sub)
    assert (await post_event(http, gateway_only.gateway, created))[0] == 200

    # The request keeps the process draining; the new message waits in the
    # queue for another replica instead of starting in one that is leaving.
    await asyncio.sleep(1.5)
    assert first.returncode is None
    assert await message_count(queues.SUBSCRIPTIONS_STRIPE) == 1

    # The in-flight request gets its answer, not a reset, and its client is
    # told to take its next request elsewhere.
    status, headers, body = await request.finish()
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert headers["connection"] == "close"
    await _exited_within_grace(first, sent, grace=10 + TAIL_SECONDS)

    second = _process(processes, tmp_path, "subscriptions")
    await second.start()
    row = await eventually(lambda: _status(db, sub["id"]), what="applied by the next replica")
    assert row["last_event_id"] == created["id"]
    assert await _inbox(db, created["id"]) == [0]


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
        await transaction.rollback()
        await locker.close()


async def _upserts_waiting_on_a_lock(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
        " AND query LIKE '%FROM subscriptions%WHERE stripe_subscription_id = $1 FOR UPDATE%'"
    )


async def test_a_message_still_running_when_the_drain_ends_is_rolled_back_and_returned(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
) -> None:
    first = _process(processes, tmp_path, "subscriptions")
    await first.start()
    sub_id, now = await _created(http, gateway_only, db)
    updated = so.event(
        "customer.subscription.updated",
        so.subscription(sub_id=sub_id, status="past_due"),
        created=now - 30,
    )

    async with _row_locked(sub_id):
        assert (await post_event(http, gateway_only.gateway, updated))[0] == 200
        await eventually(
            lambda: _upserts_waiting_on_a_lock(db), until=lambda n: n == 1, what="upsert blocked"
        )
        sent = await _sigterm_and_wait_closed(first)
        # Still blocked when the drain ends: cancelled, rolled back, handed back.
        await _exited_within_grace(first, sent)
        assert await _inbox(db, updated["id"]) == []
        assert (await _status(db, sub_id))["status"] != "past_due"
        assert await message_count(queues.SUBSCRIPTIONS_STRIPE) == 1

    second = _process(processes, tmp_path, "subscriptions")
    await second.start()
    row = await eventually(
        lambda: _status(db, sub_id),
        until=lambda r: r["status"] == "past_due",
        what="the returned message applied by the next replica",
    )
    assert row["last_event_id"] == updated["id"]
    assert await _inbox(db, updated["id"]) == [0]
    assert await message_count(f"{queues.SUBSCRIPTIONS_STRIPE}.dlq") == 0


async def test_an_outbox_row_committed_just_before_sigterm_is_published_before_exit(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    db: asyncpg.Connection,
    sink: str,
) -> None:
    process = _process(processes, tmp_path, "subscriptions")
    await process.start()
    event_id = uuid.uuid4()
    # Committed without the NOTIFY that would wake the relay at once: only its
    # poll, or the last drain at shutdown, can find it.
    await db.execute(
        "INSERT INTO subscriptions.outbox (id, exchange, routing_key, body)"
        " VALUES ($1, $2, 'test.shutdown.probe', $3::jsonb)",
        event_id,
        BILLING_EVENTS,
        orjson.dumps({"id": str(event_id), "type": "test.shutdown.probe"}).decode(),
    )
    sent = time.monotonic()
    process.terminate()
    await _exited_within_grace(process, sent)

    published = await db.fetchval(
        "SELECT published_at FROM subscriptions.outbox WHERE id = $1", event_id
    )
    assert published is not None
    messages = await take_all(sink)
    assert [m.message_id for m in messages] == [str(event_id)]


@pytest.fixture
async def proxied_gateway(
    processes: list[ServiceProcess], tmp_path: Path, broker_proxy: TcpProxy
) -> AsyncIterator[tuple[ServiceProcess, TcpProxy]]:
    """The gateway as a process, reaching the broker through ``broker_proxy``."""
    gateway = _process(
        processes,
        tmp_path,
        "gateway",
        AMQP_URL=via_proxy(env.AMQP_URL, broker_proxy),
        STRIPE_WEBHOOK_SECRETS=env.WEBHOOK_SECRET,
        JWT_SECRET=env.JWT_SECRET,
        PUBLISH_CONFIRM_TIMEOUT="3",
        UPSTREAM_TIMEOUT="3",
        SHUTDOWN_DRAIN_SECONDS="6",
    )
    await gateway.start()
    yield gateway, broker_proxy
    broker_proxy.restore()


@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "never_confirmed"])
async def test_the_gateway_answers_a_webhook_waiting_for_its_confirm_before_exiting(
    confirmed: bool,
    proxied_gateway: tuple[ServiceProcess, TcpProxy],
    http: aiohttp.ClientSession,
    sink: str,
) -> None:
    gateway, broker = proxied_gateway
    evt = so.event("customer.subscription.created", so.subscription())

    broker.stall()  # the publish goes out, its confirm does not come back
    delivery = asyncio.create_task(post_event(http, gateway.url, evt))
    await asyncio.sleep(0.5)
    sent = await _sigterm_and_wait_closed(gateway)
    assert not delivery.done()
    if confirmed:
        broker.restore()

    status, body = await delivery
    if confirmed:
        assert (status, body) == (200, {"received": True, "id": evt["id"]})
        assert [m.message_id for m in await take_all(sink)] == [evt["id"]]
    else:
        # Stripe is told to come back later; nothing was acknowledged.
        assert status == 503
        assert body["error"]["code"] == "broker_unavailable"
    await _exited_within_grace(gateway, sent, grace=6 + TAIL_SECONDS)


async def test_a_broker_that_stopped_answering_does_not_hold_the_exit_past_the_grace(
    gateway_only: Stack,
    processes: list[ServiceProcess],
    tmp_path: Path,
    broker_proxy: TcpProxy,
) -> None:
    process = _process(
        processes, tmp_path, "subscriptions", AMQP_URL=via_proxy(env.AMQP_URL, broker_proxy)
    )
    await process.start()
    broker_proxy.stall()

    sent = time.monotonic()
    process.terminate()
    await _exited_within_grace(process, sent)
    broker_proxy.restore()
