"""The confirming publisher says "published" only when the broker has the
message, and fails fast and clearly otherwise."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import pytest
import structlog

from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from tests.support import env
from tests.support.amqp import take_all
from tests.support.amqp_proxy import AmqpProxy
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually


@pytest.fixture
async def publisher() -> AsyncIterator[Publisher]:
    running = Publisher(env.AMQP_URL, name="test-publisher", confirm_timeout=2.0)
    await running.start(wait=5.0)
    assert running.ready
    yield running
    await running.close()


@pytest.fixture
async def lonely_exchange() -> AsyncIterator[str]:
    """A topic exchange no queue is bound to."""
    name = f"test.unbound.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=False)
        yield name
        await channel.exchange_delete(name)


async def test_publish_to_an_exchange_without_queues_is_unroutable(
    publisher: Publisher, lonely_exchange: str
) -> None:
    with pytest.raises(PublishFailed) as failed:
        await publisher.publish(lonely_exchange, "a.b", b"{}", message_id="evt_unroutable")
    assert failed.value.reason == "unroutable"

    # The channel stays usable: the next publish to the same exchange fails
    # the same way (not with a closed channel).
    with pytest.raises(PublishFailed) as again:
        await publisher.publish(lonely_exchange, "a.b", b"{}", message_id="evt_unroutable_2")
    assert again.value.reason == "unroutable"


async def test_publish_to_a_missing_queue_is_unroutable(publisher: Publisher) -> None:
    with pytest.raises(PublishFailed) as failed:
        await publisher.publish(
            "", f"test.no-such-queue.{uuid.uuid4().hex}", b"{}", message_id="evt_nowhere"
        )
    assert failed.value.reason == "unroutable"


async def test_confirmed_publish_is_in_the_queue(publisher: Publisher) -> None:
    queue = f"test.publisher.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            await publisher.publish(
                "", queue, b'{"id": "evt_1"}', message_id="evt_1", headers={"x-test": "yes"}
            )
            [message] = await take_all(queue)
            assert message.body == b'{"id": "evt_1"}'
            assert message.message_id == "evt_1"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.headers["x-test"] in ("yes", b"yes")
        finally:
            await channel.queue_delete(queue)


async def test_not_connected_fails_at_once_with_broker_unavailable() -> None:
    never_started = Publisher(env.AMQP_URL, name="test-never-started", confirm_timeout=2.0)

    started = time.monotonic()
    with pytest.raises(PublishFailed) as failed:
        await never_started.publish("stripe.events", "a.b", b"{}", message_id="evt_x")
    assert failed.value.reason == "broker_unavailable"
    assert time.monotonic() - started < 0.1


async def test_broker_unreachable_fails_at_once_then_recovers(broker_proxy: TcpProxy) -> None:
    broker_proxy.refuse()
    publisher = Publisher(
        via_proxy(env.AMQP_URL, broker_proxy), name="test-unreachable", confirm_timeout=2.0
    )
    try:
        await publisher.start(wait=0.5)
        assert not publisher.ready

        started = time.monotonic()
        with pytest.raises(PublishFailed) as failed:
            await publisher.publish("stripe.events", "a.b", b"{}", message_id="evt_y")
        assert failed.value.reason == "broker_unavailable"
        assert time.monotonic() - started < 0.1

        broker_proxy.restore()
        assert await publisher.wait_ready(within=10.0)
        queue = f"test.publisher.{uuid.uuid4().hex[:10]}"
        connection = await aio_pika.connect(env.AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, arguments={"x-queue-type": "quorum"}, durable=True)
            try:
                await publisher.publish("", queue, b"{}", message_id="evt_z")
                await eventually(lambda: take_all(queue), until=lambda m: len(m) == 1)
            finally:
                await channel.queue_delete(queue)
    finally:
        await publisher.close()


@pytest.fixture
async def scratch_queue() -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, str]]:
    name = f"test.publisher.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        yield channel, name
        await channel.queue_delete(name)


async def test_a_body_larger_than_a_frame_arrives_whole(
    publisher: Publisher, scratch_queue: tuple[aio_pika.abc.AbstractChannel, str]
) -> None:
    channel, queue = scratch_queue
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    # The gateway takes bodies up to 1 MiB; frames are 128 KiB: eight body frames.
    body = bytes(range(256)) * 4096
    small = b'{"id": "evt_after"}'

    await publisher.publish("", queue, body, message_id="evt_big")
    await publisher.publish("", queue, small, message_id="evt_after")

    big_message, small_message = await take_all(queue)
    assert big_message.body == body
    assert small_message.body == small


async def test_a_message_the_broker_refuses_is_nacked(
    publisher: Publisher, scratch_queue: tuple[aio_pika.abc.AbstractChannel, str]
) -> None:
    channel, queue = scratch_queue
    # A full queue that rejects new publishes: the broker answers basic.nack.
    # (A classic queue: its length limit is exact, a quorum queue's is not.)
    await channel.declare_queue(
        queue, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await publisher.publish("", queue, b'{"id": "evt_1"}', message_id="evt_1")

    with pytest.raises(PublishFailed) as refused:
        await publisher.publish("", queue, b'{"id": "evt_2"}', message_id="evt_2")

    assert refused.value.reason == "nacked"
    assert [m.message_id for m in await take_all(queue)] == ["evt_1"]


async def _failures_logged(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "broker_connect_failed"]


async def test_reconnect_loop_survives_a_peer_that_is_not_a_broker(
    amqp_proxy: AmqpProxy, scratch_queue: tuple[aio_pika.abc.AbstractChannel, str]
) -> None:
    # A wrong port or a load balancer answering HTTP: not a network error, a
    # protocol one. The loop must log it with its reason and keep trying.
    amqp_proxy.answer_with(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    publisher = Publisher(
        via_proxy(env.AMQP_URL, amqp_proxy), name="test-not-a-broker", confirm_timeout=2.0
    )
    try:
        with structlog.testing.capture_logs() as logs:
            await publisher.start()
            failures = await eventually(
                lambda: _failures_logged(logs),
                until=lambda f: len(f) >= 3,
                what="three failed attempts logged",
            )
            assert not publisher.ready
            assert all("not an AMQP peer" in f["error"] for f in failures), failures
            assert {f["log_level"] for f in failures} == {"error"}

            amqp_proxy.restore()
            assert await publisher.wait_ready(within=10.0)
        channel, queue = scratch_queue
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await publisher.publish("", queue, b"{}", message_id="evt_after_garbage")
        assert [m.message_id for m in await take_all(queue)] == ["evt_after_garbage"]
    finally:
        await publisher.close()


@pytest.mark.parametrize(
    ("credentials", "vhost", "reason"),
    [
        ("guest:guest", "billing_no_such_vhost", "530 NOT_ALLOWED"),
        ("guest:not-the-password", None, "403 ACCESS_REFUSED"),
    ],
)
async def test_reconnect_loop_logs_the_brokers_refusal_and_keeps_trying(
    credentials: str, vhost: str | None, reason: str
) -> None:
    parts = urlsplit(env.AMQP_URL)
    url = urlunsplit(
        parts._replace(
            netloc=f"{credentials}@{parts.netloc.rpartition('@')[2]}",
            path=f"/{vhost}" if vhost else parts.path,
        )
    )
    publisher = Publisher(url, name="test-refused", confirm_timeout=2.0)
    try:
        with structlog.testing.capture_logs() as logs:
            await publisher.start()
            failures = await eventually(
                lambda: _failures_logged(logs),
                until=lambda f: len(f) >= 3,
                what="three refused attempts logged",
            )
        assert not publisher.ready
        assert all(reason in f["error"] for f in failures), failures
        assert all("BrokerRefused" in f["error"] for f in failures), failures
        assert {f["log_level"] for f in failures} == {"error"}
        assert "not-the-password" not in str(failures)
    finally:
        await publisher.close()


async def _broker_connections_named(name: str) -> int:
    """Connections the broker holds with this client-given name (management API)."""
    vhost = quote(urlsplit(env.AMQP_URL).path.lstrip("/") or "/", safe="")
    auth = {"Authorization": aiohttp.BasicAuth("guest", "guest").encode()}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.get(f"http://127.0.0.1:15672/api/vhosts/{vhost}/connections") as response,
    ):
        listed = await response.json()
    return sum(1 for c in listed if c.get("client_properties", {}).get("connection_name") == name)


async def test_a_closed_publisher_leaves_no_connection_on_the_broker() -> None:
    # close() cancels the publisher's task while it awaits the connection's
    # `closed` future; that once made the open socket look closed, and every
    # service stop left one connection behind until the broker ran out of
    # sockets and hung every new handshake.
    name = f"test-close-{uuid.uuid4().hex[:8]}"
    running = Publisher(env.AMQP_URL, name=name, confirm_timeout=2.0)
    await running.start(wait=5.0)
    assert running.ready
    await eventually(
        lambda: _broker_connections_named(f"{name}:publisher"),
        until=lambda n: n == 1,
        timeout=30,
        interval=0.5,
        what="the publisher's connection listed by the broker",
    )
    await running.close()
    await eventually(
        lambda: _broker_connections_named(f"{name}:publisher"),
        until=lambda n: n == 0,
        timeout=30,
        interval=0.5,
        what="no connection left once the publisher is closed",
    )
