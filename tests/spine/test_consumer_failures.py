"""The consumer base's ack rule under failing handlers: bounded retries with
growing delays, then the dead-letter queue an operator can see and redrive;
invalid messages dead-lettered at once; effects applied exactly once.

These tests run a handler of their own on the real ``Consumer`` base, on a
queue of their own bound to ``stripe.events`` with a routing key nobody else
uses, and keep the handler's effect in a scratch schema.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pydantic import BaseModel, ConfigDict

from shared import queues
from shared.broker.consumer import Consumer
from shared.broker.errors import InvalidMessage, RetryLater
from shared.broker.handlers import ANY_TYPE, Context, Handlers
from shared.broker.publisher import Publisher
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.db import DbConnection, create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count, publish_raw, take_all
from tests.support.gateway_client import admin_get, admin_post, post_event
from tests.support.policies import queue_policies
from tests.support.stack import Stack, delete_queues, queue_family, start_stack
from tests.support.waiting import eventually

DELAYS = tuple(env.FAST_RETRY_DELAYS_MS)

# A test handler: the decoded body and the consumer's transaction.
Handler = Callable[[dict[str, Any], DbConnection], Awaitable[None]]


class AnyMessage(BaseModel):
    model_config = ConfigDict(extra="allow")


def registry(handler: Handler) -> Handlers:
    handlers = Handlers()

    @handlers.on(ANY_TYPE, model=AnyMessage)
    async def run(_: AnyMessage, ctx: Context) -> None:
        await handler(dict(ctx.body), ctx.conn)

    return handlers


# What the test handlers do: no unique key, so a leaked write shows as a row.
_EFFECTS_DDL = "CREATE TABLE effects (event_id text NOT NULL, note text NOT NULL);\n"


class ObservedConsumer(Consumer):
    """The real consumer; it only notes when each delivery arrived, with its x-attempt."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deliveries: dict[str, list[tuple[float, int | None]]] = defaultdict(list)

    async def process(self, message: AbstractIncomingMessage) -> None:
        attempt = (message.headers or {}).get("x-attempt")
        self.deliveries[message.message_id or ""].append(
            (time.monotonic(), attempt if isinstance(attempt, int) else None)
        )
        await super().process(message)


@dataclass
class Bench:
    schema: str
    routing_key: str
    spec: ConsumerQueue
    pool: asyncpg.Pool
    publisher: Publisher
    connection: AbstractRobustConnection
    consumers: list[Consumer] = field(default_factory=list)

    async def start(self, handler: Handler) -> ObservedConsumer:
        consumer = ObservedConsumer(
            queue=self.spec,
            pool=self.pool,
            publisher=self.publisher,
            handlers=registry(handler),
            source="test",
            prefetch=8,
        )
        await consumer.start(self.connection)
        self.consumers.append(consumer)
        return consumer

    def event(self) -> dict[str, Any]:
        return {
            "id": so.new_id("evt"),
            "object": "event",
            "type": self.routing_key,
            "created": int(time.time()),
            "data": {"object": {"id": so.new_id("thing")}},
        }

    async def send(self, body: dict[str, Any] | bytes, message_id: str | None = None) -> str:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        mid = message_id or (body["id"] if isinstance(body, dict) else so.new_id("evt"))
        await publish_raw(STRIPE_EVENTS, self.routing_key, raw, message_id=mid)
        return mid

    async def effects(self, event_id: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT note FROM effects WHERE event_id = $1 ORDER BY note", event_id
        )
        return [r["note"] for r in rows]

    async def inbox_rows(self, event_id: str) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", event_id)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    suffix = uuid.uuid4().hex[:10]
    schema = f"spine_consumer_{suffix}"
    routing_key = f"test.consumer_failures_{suffix}.event"
    spec = ConsumerQueue(
        name=f"test.consumer-failures.{suffix}",
        bindings=(Binding(STRIPE_EVENTS, routing_key),),
        retry_delays_ms=DELAYS,
    )
    # The schema a service would have: the shared tables (inbox) plus its own.
    (tmp_path / "0001_effects.sql").write_text(_EFFECTS_DDL)
    admin = await asyncpg.connect(env.DATABASE_URL)
    await migrate(admin, schema, tmp_path, shared=SHARED_MIGRATIONS)
    pool = await create_pool(env.DATABASE_URL, schema, min_size=1, max_size=4)
    publisher = Publisher(env.AMQP_URL, name="test-consumer-failures", confirm_timeout=2.0)
    await publisher.start(wait=5.0)
    connection = await aio_pika.connect_robust(env.AMQP_URL)
    running = Bench(schema, routing_key, spec, pool, publisher, connection)
    try:
        async with queue_policies(spec):
            yield running
    finally:
        for consumer in running.consumers:
            await consumer.stop(grace=2.0)
        await connection.close()
        await publisher.close()
        await pool.close()
        await delete_queues(queue_family(spec.name, DELAYS))
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def _header(message: AbstractIncomingMessage, name: str) -> Any:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value


async def _dead_letters(bench: Bench, expected: int = 1) -> list[AbstractIncomingMessage]:
    await eventually(
        lambda: message_count(bench.spec.dead_letter_queue),
        until=lambda n: n >= expected,
        timeout=10,
        what=f"{expected} message(s) in {bench.spec.dead_letter_queue}",
    )
    return await take_all(bench.spec.dead_letter_queue)


async def test_always_failing_handler_backs_off_then_dead_letters_then_redrives(
    clean_state: None, bench: Bench, http: aiohttp.ClientSession
) -> None:
    broken = {"yes": True}

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        await conn.execute(
            "INSERT INTO effects (event_id, note) VALUES ($1, 'applied')", body["id"]
        )
        if broken["yes"]:
            raise RuntimeError("ledger upstream exploded")

    consumer = await bench.start(handler)
    stack = await start_stack(webhooks={"dead_letter_queues": bench.spec.name})
    try:
        evt = bench.event()
        await bench.send(evt)

        # The operator sees it in the admin API once the retries are spent.
        view = await eventually(
            lambda: admin_get(http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name),
            until=lambda v: len(v["data"]) == 1,
            timeout=10,
            what="dead letter visible through the admin API",
        )
        attempts = consumer.deliveries[evt["id"]]
        assert len(attempts) == 1 + len(DELAYS)
        assert [a for _, a in attempts] == [None, 1, 2, 3]
        gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(attempts)]
        for gap, delay_ms in zip(gaps, DELAYS, strict=True):
            assert gap >= delay_ms / 1000 * 0.9, gaps
        assert gaps == sorted(gaps), f"delays do not grow: {gaps}"
        # Each failed attempt rolled its write back with it.
        assert await bench.effects(evt["id"]) == []
        assert await bench.inbox_rows(evt["id"]) == 0

        [letter] = view["data"]
        assert letter["queue"] == bench.spec.name
        assert letter["state"] == "dead"
        assert letter["message_id"] == evt["id"]
        assert letter["event_type"] == bench.routing_key
        assert letter["attempts"] == len(DELAYS)
        assert letter["last_error"] == "RuntimeError: ledger upstream exploded"
        assert letter["original_routing_key"] == bench.routing_key
        assert letter["body"] == evt
        # The store took it out of the dead-letter queue; looking does not consume.
        assert await message_count(bench.spec.dead_letter_queue) == 0
        again = await admin_get(
            http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name
        )
        assert again["data"] == view["data"]

        broken["yes"] = False
        status, answer = await admin_post(
            http,
            stack.gateway,
            "/v1/admin/dead-letters/redrive",
            {"queue": bench.spec.name, "reason": "handler fixed"},
        )
        assert (status, answer) == (200, {"redriven": 1, "ids": [letter["id"]], "complete": True})

        await eventually(
            lambda: bench.effects(evt["id"]), until=lambda e: e == ["applied"], what="applied"
        )
        waiting = await admin_get(
            http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name
        )
        assert waiting["data"] == []
        redriven = await admin_get(
            http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name, state="redriven"
        )
        assert [(d["id"], d["redrive_count"]) for d in redriven["data"]] == [(letter["id"], 1)]
        assert len(consumer.deliveries[evt["id"]]) == 1 + len(DELAYS) + 1
        assert consumer.deliveries[evt["id"]][-1][1] == 0  # redriven with a fresh attempt count
        assert await bench.inbox_rows(evt["id"]) == 1
    finally:
        await stack.stop()


async def test_invalid_message_goes_straight_to_the_dead_letter_queue(bench: Bench) -> None:
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])
        raise InvalidMessage("amount must be an integer")

    consumer = await bench.start(handler)
    evt = bench.event()
    await bench.send(evt)

    [letter] = await _dead_letters(bench)
    assert letter.message_id == evt["id"]
    assert _header(letter, "x-attempt") == 0
    assert _header(letter, "x-last-error") == "InvalidMessage: amount must be an integer"
    assert _header(letter, "x-origin-queue") == bench.spec.name
    assert orjson.loads(letter.body) == evt
    assert calls == [evt["id"]]
    assert len(consumer.deliveries[evt["id"]]) == 1
    assert await bench.inbox_rows(evt["id"]) == 0


async def test_retry_later_is_retried_until_it_succeeds_once(bench: Bench) -> None:
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])
        if len(calls) < 3:
            raise RetryLater("customer not seen yet")
        await conn.execute(
            "INSERT INTO effects (event_id, note) VALUES ($1, 'applied')", body["id"]
        )

    consumer = await bench.start(handler)
    evt = bench.event()
    await bench.send(evt)

    await eventually(
        lambda: bench.effects(evt["id"]), until=lambda e: e == ["applied"], what="applied"
    )
    assert [a for _, a in consumer.deliveries[evt["id"]]] == [None, 1, 2]
    assert await bench.inbox_rows(evt["id"]) == 1
    assert await message_count(bench.spec.dead_letter_queue) == 0
    # Delivered again (a broker redelivery, a replay): the effect stays single.
    await bench.send(evt)
    await eventually(
        lambda: bench.pool.fetchval(
            "SELECT duplicate_count FROM inbox WHERE event_id = $1", evt["id"]
        ),
        until=lambda n: n == 1,
        what="duplicate counted",
    )
    assert await bench.effects(evt["id"]) == ["applied"]
    assert len(calls) == 3


async def test_data_postgres_cannot_take_is_the_handlers_failure_not_the_infrastructures(
    bench: Bench,
) -> None:
    """asyncpg refuses, client-side, an argument it cannot encode with a
    ``DataError`` that is also an ``InterfaceError``, the class of a lost
    connection: it fails the same on every try, so it takes the ordinary
    retry tiers to the dead-letter queue, not the infrastructure's 20."""
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])
        await conn.execute(
            "INSERT INTO effects (event_id, note) VALUES ($1, 'applied')", body["id"]
        )
        await conn.fetchval("SELECT $1::int4", 2**40)  # out of range for int4

    consumer = await bench.start(handler)
    evt = bench.event()
    await bench.send(evt)

    [letter] = await _dead_letters(bench)
    assert letter.message_id == evt["id"]
    assert _header(letter, "x-attempt") == len(DELAYS)
    assert _header(letter, "x-last-error").startswith("DataError:")
    assert [a for _, a in consumer.deliveries[evt["id"]]] == [None, *range(1, len(DELAYS) + 1)]
    assert await bench.effects(evt["id"]) == []


async def test_a_lost_database_connection_is_retried_past_the_ordinary_tiers(
    bench: Bench,
) -> None:
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])
        if len(calls) <= len(DELAYS) + 1:
            lost = await asyncpg.connect(env.DATABASE_URL)
            await lost.close()
            await lost.fetchval("SELECT 1")  # InterfaceError: connection is closed
        await conn.execute(
            "INSERT INTO effects (event_id, note) VALUES ($1, 'applied')", body["id"]
        )

    await bench.start(handler)
    evt = bench.event()
    await bench.send(evt)

    await eventually(
        lambda: bench.effects(evt["id"]),
        until=lambda e: e == ["applied"],
        timeout=10,
        what="applied after the outage",
    )
    assert len(calls) == len(DELAYS) + 2
    assert await message_count(bench.spec.dead_letter_queue) == 0


async def test_non_json_body_is_dead_lettered(bench: Bench) -> None:
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])

    await bench.start(handler)
    mid = await bench.send(b"<html>502 Bad Gateway</html>")

    [letter] = await _dead_letters(bench)
    assert letter.message_id == mid
    assert letter.body == b"<html>502 Bad Gateway</html>"
    assert _header(letter, "x-attempt") == 0
    assert _header(letter, "x-last-error").startswith("InvalidMessage: body is not JSON")
    assert calls == []


async def test_effect_and_inbox_row_commit_together(bench: Bench) -> None:
    calls: list[str] = []

    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        calls.append(body["id"])
        await conn.execute(
            "INSERT INTO effects (event_id, note) VALUES ($1, $2)", body["id"], f"try{len(calls)}"
        )
        if len(calls) == 1:
            raise ConnectionResetError("payment provider hung up after our write")

    await bench.start(handler)
    evt = bench.event()
    await bench.send(evt)

    # The first attempt wrote, then failed: its write went with its rollback.
    await eventually(lambda: bench.effects(evt["id"]), what="effect of the retry")
    assert await bench.effects(evt["id"]) == ["try2"]
    assert await bench.inbox_rows(evt["id"]) == 1
    assert len(calls) == 2


async def test_operator_always_sees_every_dead_letter_and_a_redrive_moves_each_once(
    clean_state: None, bench: Bench, http: aiohttp.ClientSession
) -> None:
    async def handler(body: dict[str, Any], conn: DbConnection) -> None:
        raise InvalidMessage("still broken")

    await bench.start(handler)
    stack = await start_stack(webhooks={"dead_letter_queues": bench.spec.name})
    try:
        sent = {await bench.send(bench.event()) for _ in range(3)}

        def listed(view: Any) -> set[str]:
            return {m["message_id"] for m in view["data"]}

        await eventually(
            lambda: admin_get(http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name),
            until=lambda v: listed(v) == sent,
            what="three dead letters",
        )
        # Looking is a read of the store: looking again at once (a second
        # operator, a refreshing dashboard) still sees all of them.
        for _ in range(15):
            view = await admin_get(
                http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name
            )
            assert listed(view) == sent

        # The handler still fails: each message is moved once and comes back,
        # not moved round and round within the same redrive.
        status, answer = await admin_post(
            http,
            stack.gateway,
            "/v1/admin/dead-letters/redrive",
            {"queue": bench.spec.name, "reason": "handler fixed"},
        )
        assert status == 200
        assert (answer["redriven"], answer["complete"]) == (3, True)
        view = await eventually(
            lambda: admin_get(http, stack.gateway, "/v1/admin/dead-letters", queue=bench.spec.name),
            until=lambda v: (
                listed(v) == sent and all(d["times_dead_lettered"] == 2 for d in v["data"])
            ),
            what="the three messages dead again",
        )
        assert all(d["redrive_count"] == 1 for d in view["data"])
    finally:
        await stack.stop()


async def test_invalid_subscription_event_is_dead_lettered_without_retries(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    sub = so.subscription(status="active")
    sub["status"] = "bogus"
    evt = so.event("customer.subscription.updated", sub)

    status, _ = await post_event(http, stack.gateway, evt)
    assert status == 200

    view = await eventually(
        lambda: admin_get(
            http, stack.gateway, "/v1/admin/dead-letters", queue=queues.SUBSCRIPTIONS_STRIPE
        ),
        until=lambda v: len(v["data"]) == 1,
        timeout=10,
        what="invalid subscription event dead-lettered",
    )
    [letter] = view["data"]
    assert letter["message_id"] == evt["id"]
    assert letter["event_type"] == "customer.subscription.updated"
    assert letter["attempts"] == 0
    assert "ValidationError" in letter["last_error"]
    assert "status" in letter["last_error"]
    # Nothing half-applied; the ledger still keeps the event as Stripe sent it.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM subscriptions.subscriptions WHERE stripe_subscription_id = $1",
            sub["id"],
        )
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM subscriptions.inbox") == 0
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", evt["id"]),
        until=lambda n: n == 1,
        what="event in the ledger",
    )
    # No retry copies are waiting either.
    for delay in env.FAST_RETRY_DELAYS_MS:
        assert await message_count(f"{queues.SUBSCRIPTIONS_STRIPE}.retry.{delay}ms") == 0
