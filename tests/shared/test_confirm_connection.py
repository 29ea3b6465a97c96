"""The confirm connection under a broker that misbehaves: one that blocks
publishers (a resource alarm), one that goes silent, one (or a man in the
middle) that announces an absurd frame, and one that stops reading.

The broker is the real one throughout; a proxy in front of it adds what the
shared local broker cannot safely be made to do: its own connection.blocked
frames, a 4 GB frame header, silence, a socket nobody reads.
"""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
import structlog
from pamqp import commands

from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from tests.support import env
from tests.support.amqp import take_all
from tests.support.amqp_proxy import AmqpProxy, amqp_frame
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually


@pytest.fixture
async def queue() -> AsyncIterator[str]:
    name = f"test.confirm.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        yield name
        await channel.queue_delete(name)


async def _ready(publisher: Publisher) -> bool:
    return publisher.ready


async def _started(url: str, *, confirm_timeout: float = 2.0) -> Publisher:
    publisher = Publisher(url, name="test-confirm-connection", confirm_timeout=confirm_timeout)
    await publisher.start(wait=5.0)
    assert publisher.ready
    return publisher


def _lost(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["reason"]) for e in logs if e["event"] == "broker_connection_lost"]


async def test_a_blocked_broker_fails_publishes_at_once_until_it_unblocks(
    amqp_proxy: AmqpProxy, queue: str
) -> None:
    publisher = await _started(via_proxy(env.AMQP_URL, amqp_proxy))
    try:
        await eventually(lambda: _now(amqp_proxy.connected), what="publisher through the proxy")
        # What RabbitMQ sends every publishing connection when its memory or
        # disk alarm goes off.
        assert amqp_proxy.inject(amqp_frame(commands.Connection.Blocked("low on memory"))) == 1
        await eventually(lambda: _ready(publisher), until=lambda ready: not ready)

        started = time.monotonic()
        with pytest.raises(PublishFailed) as refused:
            await publisher.publish("", queue, b"{}", message_id="evt_while_blocked")
        assert time.monotonic() - started < 0.5  # a quick 503 to Stripe, not a hang
        assert refused.value.reason == "broker_unavailable"
        assert "low on memory" in str(refused.value)

        amqp_proxy.inject(amqp_frame(commands.Connection.Unblocked()))
        await eventually(lambda: _ready(publisher), what="publisher usable again")
        await publisher.publish("", queue, b"{}", message_id="evt_after_unblock")
        assert [m.message_id for m in await take_all(queue)] == ["evt_after_unblock"]
    finally:
        await publisher.close()


async def test_a_silent_broker_is_noticed_by_missed_heartbeats(
    broker_proxy: TcpProxy, queue: str
) -> None:
    # The connection stays open; nothing comes through. Without publishes in
    # flight only heartbeats can tell. One second, from the URL as aio-pika reads it.
    publisher = await _started(via_proxy(env.AMQP_URL, broker_proxy) + "?heartbeat=1")
    try:
        with structlog.testing.capture_logs() as logs:
            broker_proxy.stall()
            started = time.monotonic()
            await eventually(lambda: _ready(publisher), until=lambda ready: not ready, timeout=8)
            noticed = time.monotonic() - started
        assert noticed < 6.0, noticed  # two missed beats of 1 s, checked every half beat
        assert any("missed heartbeats" in reason for reason in _lost(logs)), logs

        broker_proxy.restore()
        assert await publisher.wait_ready(within=20.0)
        await publisher.publish("", queue, b"{}", message_id="evt_after_silence")
        assert "evt_after_silence" in [m.message_id for m in await take_all(queue)]
    finally:
        await publisher.close()


async def test_a_frame_larger_than_frame_max_drops_the_connection_at_once(
    amqp_proxy: AmqpProxy, queue: str
) -> None:
    publisher = await _started(via_proxy(env.AMQP_URL, amqp_proxy))
    try:
        await eventually(lambda: _now(amqp_proxy.connected), what="publisher through the proxy")
        with structlog.testing.capture_logs() as logs:
            # A method frame header announcing 4 GB, and nothing of it after:
            # a client that waits for the body buffers whatever comes next.
            amqp_proxy.inject(struct.pack(">BHI", 1, 0, 0xFFFF_FFF0))
            # Dropped at once (it reconnects at once too, so watch the log).
            await eventually(
                lambda: _now(_lost(logs)),
                until=lambda reasons: any("exceeds frame_max" in r for r in reasons),
                timeout=2,
                what="the connection dropped for the oversized frame",
            )

        assert await publisher.wait_ready(within=10.0)
        await publisher.publish("", queue, b"{}", message_id="evt_after_big_frame")
        assert [m.message_id for m in await take_all(queue)] == ["evt_after_big_frame"]
    finally:
        await publisher.close()


async def test_publishes_to_a_broker_that_stops_reading_fail_by_their_deadline_unbuffered(
    broker_proxy: TcpProxy, queue: str
) -> None:
    confirm_timeout = 1.0
    publisher = await _started(via_proxy(env.AMQP_URL, broker_proxy), confirm_timeout=1.0)
    body = bytes(256 * 1024)
    count = 120  # 30 MiB: more than the kernel's socket buffers take on loopback
    try:
        broker_proxy.stall()  # the proxy stops reading: TCP pushes back

        async def publish(number: int) -> tuple[BaseException | None, float]:
            started = time.monotonic()
            try:
                await publisher.publish("", queue, body, message_id=f"evt_{number}")
            except PublishFailed as exc:
                return exc, time.monotonic() - started
            return None, time.monotonic() - started

        tracemalloc.start()
        try:
            outcomes = await asyncio.gather(*(publish(n) for n in range(count)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        errors = [error for error, _ in outcomes]
        assert all(isinstance(e, PublishFailed) for e in errors), errors
        assert max(took for _, took in outcomes) < confirm_timeout + 1.0
        # Most never left the process: they waited for the socket to drain
        # and gave up at their deadline, instead of queueing in memory.
        assert any("back-pressure" in str(e) for e in errors), errors
        assert peak < 12 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a peer that reads nothing"
    finally:
        broker_proxy.restore()
        await publisher.close()


async def _now(value: object) -> object:
    """For eventually(): the value as it is at each poll."""
    return value
