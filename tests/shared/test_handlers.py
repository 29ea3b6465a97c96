"""The typed handler registry (``shared/broker/handlers.py``) and what the
consumer base hands a handler: the event decoded once into the handler's
pydantic model, and a context with the inbox transaction's connection, the
injected clock and an outbox bound to that same transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import BaseModel, ConfigDict, Field

from shared.broker.consumer import Consumer
from shared.broker.handlers import ANY_TYPE, Context, Handlers
from shared.broker.publisher import Publisher
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import SettableClock
from shared.db import create_pool
from shared.events import StripeEvent
from shared.migrations import SHARED_MIGRATIONS, migrate
from tests.support import env
from tests.support.amqp import message_count, publish_raw
from tests.support.policies import queue_policies
from tests.support.stack import delete_queues, queue_family
from tests.support.waiting import eventually

# --- the registry on its own --------------------------------------------------


class A(BaseModel):
    pass


class B(BaseModel):
    pass


async def _noop(_: Any, __: Context) -> None:
    return None


def test_an_exact_type_wins_over_a_pattern_registered_first() -> None:
    handlers = Handlers()
    handlers.on("invoice.*", model=A)(_noop)
    handlers.on("invoice.paid", model=B)(_noop)
    paid = handlers.lookup("invoice.paid")
    other = handlers.lookup("invoice.voided")
    assert paid is not None and paid.model is B
    assert other is not None and other.model is A


def test_patterns_match_whole_types_and_unknown_types_have_no_handler() -> None:
    handlers = Handlers()
    handlers.on("customer.subscription.*", model=A)(_noop)
    assert handlers.lookup("customer.subscription.updated") is not None
    assert handlers.lookup("customer.updated") is None
    assert handlers.lookup("xcustomer.subscription.updated") is None
    assert handlers.event_types == ("customer.subscription.*",)


def test_the_catch_all_takes_what_nothing_else_does() -> None:
    handlers = Handlers()
    handlers.on("invoice.paid", model=B)(_noop)
    handlers.on(ANY_TYPE, model=A)(_noop)
    anything = handlers.lookup("charge.refunded")
    assert anything is not None and anything.model is A


def test_one_handler_per_event_type() -> None:
    handlers = Handlers()
    handlers.on("invoice.paid", "invoice.payment_failed", model=A)(_noop)
    with pytest.raises(ValueError, match=r"invoice\.payment_failed already has a handler"):
        handlers.on("invoice.payment_failed", model=B)(_noop)


def test_registering_returns_the_function_unchanged() -> None:
    handlers = Handlers()
    assert handlers.on("invoice.paid", model=A)(_noop) is _noop


# --- through the consumer base ------------------------------------------------


class _Thing(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(pattern=r"^thing_")
    amount: int


class ThingEvent(StripeEvent):
    """A Stripe event whose object is a thing (the handler's model)."""

    def thing(self) -> _Thing:
        return _Thing.model_validate(self.data.object)


@dataclass
class Seen:
    events: list[Any] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    in_transaction: list[bool] = field(default_factory=list)


@dataclass
class Rig:
    spec: ConsumerQueue
    routing_key: str
    pool: asyncpg.Pool
    seen: Seen

    async def send(self, evt: dict[str, Any]) -> None:
        await publish_raw(STRIPE_EVENTS, self.routing_key, orjson.dumps(evt), message_id=evt["id"])

    def event(self, amount: int) -> dict[str, Any]:
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": self.routing_key,
            "created": int(time.time()),
            "data": {"object": {"id": f"thing_{uuid.uuid4().hex[:8]}", "amount": amount}},
        }


CLOCK_AT = datetime(2030, 5, 17, 9, 30, tzinfo=UTC)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    suffix = uuid.uuid4().hex[:10]
    schema = f"handlers_{suffix}"
    routing_key = f"test.handlers_{suffix}.thing"
    spec = ConsumerQueue(
        name=f"test.handlers.{suffix}",
        bindings=(Binding(STRIPE_EVENTS, routing_key),),
        retry_delays_ms=tuple(env.FAST_RETRY_DELAYS_MS),
    )
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id text, amount int);\n")
    admin = await asyncpg.connect(env.DATABASE_URL)
    await migrate(admin, schema, tmp_path, shared=SHARED_MIGRATIONS)
    pool = await create_pool(env.DATABASE_URL, schema, min_size=1, max_size=4)
    publisher = Publisher(env.AMQP_URL, name="test-handlers", confirm_timeout=2.0)
    await publisher.start(wait=5.0)
    connection: AbstractRobustConnection = await aio_pika.connect_robust(env.AMQP_URL)
    seen = Seen()
    handlers = Handlers()

    @handlers.on(routing_key, model=ThingEvent)
    async def apply(event: ThingEvent, ctx: Context) -> None:
        seen.events.append(event)
        seen.times.append(ctx.clock.now())
        seen.in_transaction.append(ctx.conn.is_in_transaction())
        thing = event.thing()
        await ctx.conn.execute("INSERT INTO things VALUES ($1, $2)", thing.id, thing.amount)
        await ctx.outbox.emit("thing.recorded", {"thing": thing.id}, version=1, key=thing.id)
        if thing.amount < 0:
            raise RuntimeError("negative amounts are a bug")

    consumer = Consumer(
        queue=spec,
        pool=pool,
        publisher=publisher,
        handlers=handlers,
        source="test",
        prefetch=4,
        clock=SettableClock(CLOCK_AT),
    )
    try:
        async with queue_policies(spec):
            await consumer.start(connection)
            yield Rig(spec, routing_key, pool, seen)
    finally:
        await consumer.stop(grace=2.0)
        await connection.close()
        await publisher.close()
        await pool.close()
        await delete_queues(queue_family(spec.name, tuple(env.FAST_RETRY_DELAYS_MS)))
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_a_handler_gets_its_model_and_a_context_of_the_inbox_transaction(
    rig: Rig,
) -> None:
    evt = rig.event(2500)
    await rig.send(evt)
    await eventually(lambda: rig.pool.fetchval("SELECT count(*) FROM things"), what="the effect")

    [event] = rig.seen.events
    assert isinstance(event, ThingEvent)
    assert (event.id, event.thing().amount) == (evt["id"], 2500)
    assert rig.seen.times == [CLOCK_AT]  # the injected clock, not the wall clock
    assert rig.seen.in_transaction == [True]
    # The outbox row was written in the same transaction as the effect and the
    # inbox row, with the injected clock's time.
    row = await rig.pool.fetchrow("SELECT body FROM outbox")
    assert row["body"]["type"] == "thing.recorded"
    assert datetime.fromisoformat(row["body"]["occurred_at"]) == CLOCK_AT
    assert await rig.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", evt["id"]) == 1


async def test_a_failing_handler_leaves_no_effect_no_outbox_row_and_no_inbox_row(
    rig: Rig,
) -> None:
    evt = rig.event(-1)
    await rig.send(evt)
    await eventually(
        lambda: message_count(rig.spec.dead_letter_queue),
        until=lambda n: n == 1,
        timeout=15,
        what="the failing message dead-lettered after its retries",
    )
    assert len(rig.seen.events) == 1 + len(env.FAST_RETRY_DELAYS_MS)
    for table in ("things", "outbox", "inbox"):
        assert await rig.pool.fetchval(f"SELECT count(*) FROM {table}") == 0  # noqa: S608


async def test_a_message_that_does_not_fit_the_model_never_reaches_the_handler(
    rig: Rig,
) -> None:
    evt = rig.event(10)
    evt["data"]["object"] = "not an object"
    await rig.send(evt)
    await eventually(
        lambda: message_count(rig.spec.dead_letter_queue),
        until=lambda n: n == 1,
        what="the invalid message dead-lettered at once",
    )
    assert rig.seen.events == []
