"""Dead letters an operator can trust: taken out of ``<queue>.dlq`` into the
webhooks service's store, listed from Postgres, redriven once each even by
redrives running at once, discarded with a reason in the audit log, counted
in the metrics.

The dead letters here are put into a dead-letter queue of the test's own the
way the consumer base puts them there (body, message id and its ``x-*``
headers); tests/spine/test_consumer_failures.py follows real failing
consumers all the way.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest

from shared.broker.topology import QUORUM
from tests.gateway.helpers import admin, assert_error, metric
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.amqp import message_count, publish_raw, take_all
from tests.support.db_faults import refusing
from tests.support.gateway_client import admin_get, admin_post
from tests.support.stack import Stack, delete_queues, start_stack
from tests.support.tcp_proxy import TcpProxy, via_proxy
from tests.support.waiting import eventually


async def put_dead_letter(
    queue: str, *, failed_at: str | None = None, message_id: str | None = None
) -> str:
    """A message as the consumer base dead-letters it, into ``queue.dlq``."""
    event_id = message_id or so.new_id("evt")
    body = {"id": event_id, "object": "event", "type": "invoice.paid", "created": 1}
    await publish_raw(
        "",
        f"{queue}.dlq",
        orjson.dumps(body),
        message_id=event_id,
        headers={
            "x-attempt": 3,
            "x-last-error": "RuntimeError: ledger upstream exploded",
            "x-failed-at": failed_at or datetime.now(UTC).isoformat(),
            "x-origin-queue": queue,
            "x-original-exchange": "stripe.events",
            "x-original-routing-key": "invoice.paid",
        },
    )
    return event_id


async def declare_queue(queue: str) -> None:
    connection = await aio_pika.connect(env.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)


@dataclass
class Rig:
    stack: Stack
    queue: str
    http: aiohttp.ClientSession

    @property
    def webhooks(self) -> str:
        return self.stack.apps["webhooks"].url

    async def dead_letter(self, failed_at: str | None = None, message_id: str | None = None) -> str:
        return await put_dead_letter(self.queue, failed_at=failed_at, message_id=message_id)

    async def listed(self, **params: str) -> list[dict[str, Any]]:
        page = await admin_get(
            http=self.http,
            gateway=self.stack.gateway,
            path="/v1/admin/dead-letters",
            queue=self.queue,
            limit="200",
            **params,
        )
        return list(page["data"])


@pytest.fixture
async def rig(clean_state: None, http: aiohttp.ClientSession) -> AsyncIterator[Rig]:
    queue = f"test.dead-letters.{uuid.uuid4().hex[:10]}"
    # The consumer queue the letters go back to; nobody consumes it here, so
    # what a redrive sent can be counted in it.
    await declare_queue(queue)
    stack = await start_stack(
        webhooks={
            "dead_letter_queues": queue,
            "reconcile_interval_seconds": 0,
            "dead_letter_metrics_seconds": 0.2,
        }
    )
    running = Rig(stack, queue, http)
    try:
        yield running
    finally:
        await stack.stop()
        await delete_queues([queue, f"{queue}.dlq"])


async def test_dead_letters_are_stored_and_listed_without_being_consumed(rig: Rig) -> None:
    sent = [await rig.dead_letter() for _ in range(3)]

    letters = await eventually(rig.listed, until=lambda d: len(d) == 3, what="three letters")
    assert sorted(d["message_id"] for d in letters) == sorted(sent)
    # In the order they were recorded (the recorder takes several at once, so
    # not quite in the order they were sent).
    assert [d["id"] for d in letters] == sorted(d["id"] for d in letters)
    first = letters[0]
    assert first["queue"] == rig.queue
    assert first["state"] == "dead"
    assert first["attempts"] == 3
    assert first["last_error"] == "RuntimeError: ledger upstream exploded"
    assert first["original_routing_key"] == "invoice.paid"
    assert first["times_dead_lettered"] == 1
    assert first["body"]["id"] == first["message_id"]
    # Out of RabbitMQ: the store holds them, and looking changes nothing.
    assert await message_count(f"{rig.queue}.dlq") == 0
    for _ in range(5):
        assert await rig.listed() == letters

    # Paging and filters.
    page = await admin_get(
        rig.http, rig.stack.gateway, "/v1/admin/dead-letters", queue=rig.queue, limit="2"
    )
    order = [d["message_id"] for d in letters]
    assert [d["message_id"] for d in page["data"]] == order[:2] and page["has_more"]
    rest = await admin_get(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters",
        queue=rig.queue,
        cursor=page["next_cursor"],
    )
    assert [d["message_id"] for d in rest["data"]] == order[2:]
    assert await rig.listed(event_type="invoice.payment_failed") == []

    summary = await admin_get(rig.http, rig.stack.gateway, "/v1/admin/dead-letters/queues")
    [queue_view] = summary["queues"]
    assert queue_view["queue"] == rig.queue
    assert queue_view["dead_letter_queue"] == f"{rig.queue}.dlq"
    assert queue_view["dead"] == 3
    assert queue_view["oldest_first_seen_at"] == first["first_seen_at"]

    # The gauges: how many wait, and for how long the oldest has.
    labels = {"queue": rig.queue}
    await eventually(
        lambda: metric(rig.http, rig.webhooks, "dead_letters", labels),
        until=lambda n: n == 3,
        what="dead_letters gauge",
    )
    await eventually(
        lambda: metric(rig.http, rig.webhooks, "dead_letters_oldest_age_seconds", labels),
        until=lambda age: age > 0,
        what="age of the oldest dead letter",
    )


async def test_the_same_copy_twice_is_one_dead_lettering_a_new_failure_another(
    rig: Rig,
) -> None:
    failed_at = datetime.now(UTC).isoformat()
    event_id = await rig.dead_letter(failed_at=failed_at)
    # The recorder stored it, then its ack was lost: the broker sends it again.
    await rig.dead_letter(failed_at=failed_at, message_id=event_id)
    [letter] = await eventually(rig.listed, what="the letter")
    await eventually(
        lambda: message_count(f"{rig.queue}.dlq"), until=lambda n: n == 0, what="both taken"
    )
    assert (await rig.listed())[0]["times_dead_lettered"] == 1

    # It failed again later (after a redrive, say): same row, counted.
    await rig.dead_letter(message_id=event_id)
    [again] = await eventually(
        rig.listed, until=lambda d: d and d[0]["times_dead_lettered"] == 2, what="second failure"
    )
    assert again["id"] == letter["id"]
    assert again["first_seen_at"] == letter["first_seen_at"]
    assert again["last_seen_at"] > letter["last_seen_at"]


async def test_letters_listed_while_two_redrives_run_are_each_redriven_once(rig: Rig) -> None:
    sent = [await rig.dead_letter() for _ in range(40)]
    await eventually(rig.listed, until=lambda d: len(d) == 40, what="forty letters")

    stop = asyncio.Event()

    async def keep_listing() -> int:
        looks = 0
        while not stop.is_set():
            listed = await rig.listed()
            assert len(listed) <= 40
            looks += 1
        return looks

    lister = asyncio.create_task(keep_listing())
    first, second = await asyncio.gather(
        admin_post(
            rig.http,
            rig.stack.gateway,
            "/v1/admin/dead-letters/redrive",
            {"queue": rig.queue, "reason": "handler fixed in 1.4.2"},
        ),
        admin_post(
            rig.http,
            rig.stack.gateway,
            "/v1/admin/dead-letters/redrive",
            {"all": True, "reason": "handler fixed in 1.4.2"},
        ),
    )
    stop.set()
    assert await lister >= 1
    assert first[0] == second[0] == 200, (first, second)
    ids_first, ids_second = set(first[1]["ids"]), set(second[1]["ids"])
    assert not ids_first & ids_second
    assert first[1]["redriven"] + second[1]["redriven"] == 40

    # Each message is back in its queue exactly once, with a fresh attempt count.
    await eventually(
        lambda: message_count(rig.queue), until=lambda n: n >= 40, what="forty redriven"
    )
    await asyncio.sleep(0.2)  # a second copy, were there one, would land by now
    messages = await take_all(rig.queue, limit=500)
    assert sorted(m.message_id or "" for m in messages) == sorted(sent)
    assert all((m.headers or {}).get("x-attempt") == 0 for m in messages)

    assert await rig.listed() == []
    redriven = await rig.listed(state="redriven")
    assert len(redriven) == 40
    assert all(d["redrive_count"] == 1 for d in redriven)

    # Nothing left to send: a third redrive sends nothing.
    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"all": True, "reason": "once more"},
    )
    assert (status, answer) == (200, {"redriven": 0, "ids": [], "complete": True})


async def test_redrive_one_by_id_or_by_message_id(rig: Rig) -> None:
    sent = [await rig.dead_letter() for _ in range(3)]
    letters = await eventually(rig.listed, until=lambda d: len(d) == 3, what="three letters")
    letter_of = {d["message_id"]: d["id"] for d in letters}

    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"ids": [letter_of[sent[1]]], "reason": "just this one"},
    )
    assert (status, answer["ids"]) == (200, [letter_of[sent[1]]])
    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"message_ids": [sent[2]], "reason": "and this one"},
    )
    assert (status, answer["ids"]) == (200, [letter_of[sent[2]]])
    assert [d["message_id"] for d in await rig.listed()] == [sent[0]]
    await eventually(lambda: message_count(rig.queue), until=lambda n: n == 2, what="two back")


async def test_discard_takes_a_reason_and_is_audited(rig: Rig) -> None:
    kept, dropped = await rig.dead_letter(), await rig.dead_letter()
    letters = await eventually(rig.listed, until=lambda d: len(d) == 2, what="two letters")
    target = next(d for d in letters if d["message_id"] == dropped)
    path = f"/dead-letters/{target['id']}/discard"

    status, answer, _ = await admin(rig.http, rig.stack.gateway, "POST", path, data=b"{}")
    assert_error(status, answer, 422, "validation_failed", "reason")

    reason = "test event sent by a load test, never a real payment"
    status, answer, _ = await admin(
        rig.http, rig.stack.gateway, "POST", path, data=orjson.dumps({"reason": reason})
    )
    assert status == 200, answer
    assert answer["state"] == "discarded"
    assert answer["discard_reason"] == reason
    assert answer["discarded_at"] is not None

    status, audit, _ = await admin(
        rig.http, rig.stack.gateway, "GET", "/audit", params={"target": str(target["id"])}
    )
    assert status == 200
    [entry] = audit["data"]
    assert entry["service"] == "webhooks"
    assert entry["action"] == "dead_letters.discard"
    assert entry["reason"] == reason
    assert entry["actor_role"] == "admin"
    assert entry["details"] == {"queue": rig.queue, "message_id": dropped}

    # Once discarded it waits no more: not listed, not redriven, not counted.
    assert [d["message_id"] for d in await rig.listed()] == [kept]
    assert [d["id"] for d in await rig.listed(state="discarded")] == [target["id"]]
    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"all": True, "reason": "redrive what is left"},
    )
    assert (status, answer["redriven"]) == (200, 1)
    await eventually(lambda: message_count(rig.queue), until=lambda n: n == 1, what="one back")
    assert [m.message_id for m in await take_all(rig.queue)] == [kept]
    await eventually(
        lambda: metric(rig.http, rig.webhooks, "dead_letters", {"queue": rig.queue}),
        until=lambda n: n == 0,
        what="dead_letters gauge back to 0",
    )

    status, answer, _ = await admin(
        rig.http, rig.stack.gateway, "POST", path, data=orjson.dumps({"reason": reason})
    )
    assert_error(status, answer, 409, "dead_letter_not_waiting")
    status, answer, _ = await admin(
        rig.http,
        rig.stack.gateway,
        "POST",
        "/dead-letters/999999999/discard",
        data=orjson.dumps({"reason": reason}),
    )
    assert_error(status, answer, 404, "not_found")


async def test_a_letter_waits_unacked_while_the_store_is_away_then_is_stored_once(
    clean_state: None, database_proxy: TcpProxy, db: asyncpg.Connection
) -> None:
    queue = f"test.dead-letters.{uuid.uuid4().hex[:10]}"
    await declare_queue(queue)
    stack = await start_stack(
        webhooks={
            "dead_letter_queues": queue,
            "reconcile_interval_seconds": 0,
            "database_url": via_proxy(env.DATABASE_URL, database_proxy),
        }
    )

    async def stored() -> list[asyncpg.Record]:
        return await db.fetch(
            "SELECT message_id, times_dead_lettered, headers->>'x-delivery-count' AS deliveries"
            " FROM webhooks.dead_letters WHERE queue = $1",
            queue,
        )

    try:
        database_proxy.refuse()
        event_id = await put_dead_letter(queue)
        # Taken from the queue (held, unacked), not stored, and not handed back:
        # each return would count against the queue's delivery limit.
        await eventually(
            lambda: message_count(f"{queue}.dlq"), until=lambda n: n == 0, what="taken"
        )
        await asyncio.sleep(1.5)
        assert await stored() == []
        assert await message_count(f"{queue}.dlq") == 0

        database_proxy.restore()
        rows = await eventually(stored, what="stored once the database is back")
        assert [(r["message_id"], r["times_dead_lettered"]) for r in rows] == [(event_id, 1)]
        # Delivered once: held all along, never returned to the queue (the
        # broker counts returns in x-delivery-count).
        assert rows[0]["deliveries"] in (None, "0")
    finally:
        database_proxy.restore()
        await stack.stop()
        await delete_queues([queue, f"{queue}.dlq"])


async def test_a_letter_id_no_letter_can_have_is_a_422_not_a_500(rig: Rig) -> None:
    for body in (
        {"ids": [2**63], "reason": "fat-fingered id"},
        {"ids": [-(2**63) - 1], "reason": "fat-fingered id"},
    ):
        status, answer = await admin_post(
            rig.http, rig.stack.gateway, "/v1/admin/dead-letters/redrive", body
        )
        assert_error(status, answer, 422, "validation_failed")
        assert [d["field"] for d in answer["error"]["details"]] == ["ids.0"], answer


async def test_a_cursor_beyond_any_letter_id_is_a_422_not_a_500(rig: Rig) -> None:
    forged = base64.urlsafe_b64encode(orjson.dumps([2**63])).decode().rstrip("=")
    status, answer, _ = await admin(
        rig.http, rig.stack.gateway, "GET", "/dead-letters", params={"cursor": forged}
    )
    assert_error(status, answer, 422, "validation_failed")
    assert [d["field"] for d in answer["error"]["details"]] == ["cursor"], answer


async def test_a_letter_whose_queue_is_gone_does_not_hold_back_the_others(
    rig: Rig, db: asyncpg.Connection
) -> None:
    # A letter of a consumer queue a later release removed: no queue takes it back.
    await db.execute(
        "INSERT INTO webhooks.dead_letters (queue, letter_key, message_id, body, death_mark,"
        " first_seen_at, last_seen_at) VALUES ('gone.stripe-events', 'evt_gone', 'evt_gone',"
        " '{}'::bytea, 'x', now() - interval '1 hour', now() - interval '1 hour')"
    )
    sent = [await rig.dead_letter() for _ in range(2)]
    await eventually(rig.listed, until=lambda d: len(d) == 2, what="two letters")

    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"all": True, "reason": "handler fixed"},
    )

    assert status == 200, answer
    assert (answer["redriven"], answer["complete"]) == (2, False), answer
    await eventually(lambda: message_count(rig.queue), until=lambda n: n == 2, what="both back")
    gone = await db.fetchrow(
        "SELECT state, redrive_count FROM webhooks.dead_letters WHERE letter_key = 'evt_gone'"
    )
    assert (gone["state"], gone["redrive_count"]) == ("dead", 0)
    assert sent


async def test_a_redrive_that_cannot_be_audited_redrives_nothing(
    rig: Rig, db: asyncpg.Connection
) -> None:
    # Every staff write is audited: when the entry cannot be written, no
    # letter may have gone back to its queue either.
    for _ in range(2):
        await rig.dead_letter()
    await eventually(rig.listed, until=lambda d: len(d) == 2, what="two letters")
    request = {"queue": rig.queue, "all": True, "reason": "upstream fixed"}

    async with refusing(db, "webhooks.audit_log", "INSERT"):
        status, answer = await admin_post(
            rig.http, rig.stack.gateway, "/v1/admin/dead-letters/redrive", request
        )

    assert status >= 500 and set(answer) == {"error"}, answer
    assert await message_count(rig.queue) == 0
    assert [d["state"] for d in await rig.listed()] == ["dead", "dead"]

    # Once the entry can be written, the redrive goes ahead, audited.
    status, answer = await admin_post(
        rig.http, rig.stack.gateway, "/v1/admin/dead-letters/redrive", request
    )
    assert (status, answer["redriven"]) == (200, 2), answer
    status, audit, _ = await admin(
        rig.http, rig.stack.gateway, "GET", "/audit", params={"target": rig.queue}
    )
    assert status == 200, audit
    [entry] = audit["data"]
    assert entry["action"] == "dead_letters.redrive"
    assert entry["details"]["redriven"] == sorted(answer["ids"])


@dataclass
class OnePrefetch:
    """A recorder taking one letter at a time from a queue of the test's own:
    a letter it holds for ever holds every letter behind it."""

    stack: Stack
    queue: str
    http: aiohttp.ClientSession
    db: asyncpg.Connection

    @property
    def webhooks(self) -> str:
        return self.stack.apps["webhooks"].url

    async def put(self, body: bytes, message_id: str, **headers: Any) -> None:
        await publish_raw(
            "",
            f"{self.queue}.dlq",
            body,
            message_id=message_id,
            headers={
                "x-attempt": 3,
                "x-last-error": "RuntimeError: ledger upstream exploded",
                "x-failed-at": datetime.now(UTC).isoformat(),
                "x-origin-queue": self.queue,
                "x-original-routing-key": "invoice.paid",
                **headers,
            },
        )

    async def stored(self) -> dict[str, asyncpg.Record]:
        rows = await self.db.fetch(
            "SELECT * FROM webhooks.dead_letters WHERE queue = $1", self.queue
        )
        return {r["message_id"]: r for r in rows}


@pytest.fixture
async def one_prefetch(
    clean_state: None, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> AsyncIterator[OnePrefetch]:
    queue = f"test.dead-letters.{uuid.uuid4().hex[:10]}"
    await declare_queue(queue)
    stack = await start_stack(
        webhooks={
            "dead_letter_queues": queue,
            "dead_letter_prefetch": 1,
            "reconcile_interval_seconds": 0,
        }
    )
    try:
        yield OnePrefetch(stack, queue, http, db)
    finally:
        await stack.stop()
        await delete_queues([queue, f"{queue}.dlq", f"{queue}.dlq.parked"])


# Letters the table refuses as they came: name -> (body, headers over the
# consumer base's), each followed by a normal letter.
UNFIT: dict[str, tuple[bytes, dict[str, Any]]] = {
    "nul_in_the_event_type": (b'{"type": "invoice.paid\\u0000"}', {}),
    "nul_in_the_last_error": (b'{"type": "invoice.paid"}', {"x-last-error": "Boom: \x00"}),
    "attempts_beyond_an_integer": (b'{"type": "invoice.paid"}', {"x-attempt": 2**40}),
    "nul_in_the_failure_time": (b'{"type": "invoice.paid"}', {"x-failed-at": "2026\x00"}),
    "nul_in_the_routing_key": (
        b'{"type": "invoice.paid"}',
        {"x-original-routing-key": "invoice.\x00paid"},
    ),
}


@pytest.mark.parametrize("case", UNFIT, ids=list(UNFIT))
async def test_a_letter_the_table_refuses_is_stored_fitted_and_the_next_one_as_it_came(
    one_prefetch: OnePrefetch, case: str
) -> None:
    rig = one_prefetch
    body, headers = UNFIT[case]
    unfit, normal = so.new_id("evt"), so.new_id("evt")
    await rig.put(body, unfit, **headers)
    await rig.put(orjson.dumps({"id": normal, "type": "invoice.paid"}), normal)

    rows = await eventually(rig.stored, until=lambda r: len(r) == 2, what="both stored")

    assert await message_count(f"{rig.queue}.dlq") == 0
    fitted = rows[unfit]
    assert fitted["state"] == "dead"
    assert fitted["unfit_reason"], dict(fitted)
    assert fitted["body"] == body  # whole: a redrive sends what the consumer failed on
    assert "\x00" not in "".join(
        str(fitted[c]) for c in ("event_type", "last_error", "routing_key", "death_mark")
    )
    assert 0 <= fitted["attempts"] < 2**31
    assert fitted["raw_headers"] and not fitted["raw_headers_truncated"]
    # The normal letter is stored as before, nothing of the fitted form on it.
    kept = rows[normal]
    assert (kept["unfit_reason"], kept["raw_headers"]) == (None, None)
    assert (kept["event_type"], kept["attempts"]) == ("invoice.paid", 3)
    assert kept["last_error"] == "RuntimeError: ledger upstream exploded"

    # The operator sees it, and why.
    listed = await admin_get(rig.http, rig.stack.gateway, "/v1/admin/dead-letters", queue=rig.queue)
    by_id = {d["message_id"]: d for d in listed["data"]}
    assert by_id[unfit]["unfit_reason"] == fitted["unfit_reason"]
    assert by_id[normal]["unfit_reason"] is None
    assert (
        await metric(rig.http, rig.webhooks, "dead_letters_fitted_total", {"queue": rig.queue}) == 1
    )
    assert (
        await metric(rig.http, rig.webhooks, "dead_letters_recorded_total", {"queue": rig.queue})
        == 2
    )


async def test_a_fitted_letter_is_redriven_with_its_body_whole(
    one_prefetch: OnePrefetch,
) -> None:
    rig = one_prefetch
    unfit = so.new_id("evt")
    body = b'{"type": "invoice.paid\\u0000"}'
    await rig.put(body, unfit, **{"x-last-error": "Boom: \x00"})
    [row] = (await eventually(rig.stored, what="stored")).values()

    status, answer = await admin_post(
        rig.http,
        rig.stack.gateway,
        "/v1/admin/dead-letters/redrive",
        {"ids": [row["id"]], "reason": "handler fixed"},
    )

    assert (status, answer["redriven"]) == (200, 1), answer
    [message] = await eventually(
        lambda: take_all(rig.queue), until=lambda m: len(m) == 1, what="redriven"
    )
    assert (message.body, message.message_id) == (body, unfit)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{not json",
        b'["invoice.paid", 1]',
        b'{"type": "invoice.paid", "pad": "' + b"x" * (24 * 1024**2) + b'"}',
    ],
    ids=["not_json", "not_an_object", "24_mib"],
)
async def test_a_letter_whose_body_is_no_event_is_stored_as_it_came(
    one_prefetch: OnePrefetch, body: bytes
) -> None:
    rig = one_prefetch
    odd, normal = so.new_id("evt"), so.new_id("evt")
    await rig.put(body, odd)
    await rig.put(orjson.dumps({"id": normal, "type": "invoice.paid"}), normal)

    rows = await eventually(rig.stored, until=lambda r: len(r) == 2, what="both stored")

    assert rows[odd]["body"] == body
    assert rows[odd]["unfit_reason"] is None


async def test_a_letter_that_fits_in_no_form_is_parked_and_the_next_one_stored(
    one_prefetch: OnePrefetch,
) -> None:
    rig = one_prefetch
    parked, normal = f"evt_park_{uuid.uuid4().hex[:8]}", so.new_id("evt")
    # The table refuses this one letter whatever form it takes.
    await rig.db.execute(
        "CREATE OR REPLACE FUNCTION public.test_refuse_parked() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN IF NEW.message_id LIKE 'evt_park_%' THEN"
        " RAISE EXCEPTION 'test: this letter refused'; END IF; RETURN NEW; END $$"
    )
    await rig.db.execute(
        "CREATE TRIGGER test_refuse_parked BEFORE INSERT ON webhooks.dead_letters"
        " FOR EACH ROW EXECUTE FUNCTION public.test_refuse_parked()"
    )
    try:
        await rig.put(b'{"type": "invoice.paid"}', parked)
        await rig.put(orjson.dumps({"id": normal, "type": "invoice.paid"}), normal)

        rows = await eventually(rig.stored, what="the next letter stored")
        [message] = await eventually(
            lambda: take_all(f"{rig.queue}.dlq.parked"),
            until=lambda m: len(m) == 1,
            what="parked",
        )
    finally:
        await rig.db.execute("DROP TRIGGER IF EXISTS test_refuse_parked ON webhooks.dead_letters")

    assert list(rows) == [normal]
    assert (message.message_id, message.body) == (parked, b'{"type": "invoice.paid"}')
    headers = message.headers or {}
    assert "this letter refused" in str(headers["x-parked-reason"])
    assert headers["x-last-error"] == "RuntimeError: ledger upstream exploded"
    assert await message_count(f"{rig.queue}.dlq") == 0
    assert (
        await metric(rig.http, rig.webhooks, "dead_letters_parked_total", {"queue": rig.queue}) == 1
    )
