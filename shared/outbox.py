"""The transactional outbox: domain events that are published if and only if
the state change that made them true committed.

Writing: :meth:`Outbox.emit` inserts the event into the service's ``outbox``
table with the caller's connection, inside the caller's transaction, and
notifies the relay (``NOTIFY`` is delivered at commit, and only if the
transaction commits). An event has a stable id (the AMQP ``message_id``
consumers dedupe by) and a schema version; given a ``key`` (say, the invoice
that renewed a subscription) the id is derived from it, so emitting the same
fact twice is a no-op.

Relaying: :class:`OutboxRelay` publishes pending rows to RabbitMQ with
confirms and marks them published. It wakes on the ``NOTIFY`` (milliseconds
after a commit) and also polls now and then, in case a notification was
missed while its listening connection was down. Rows are claimed with
``FOR UPDATE SKIP LOCKED``, so replicas share the work without doing it
twice. Publishing is at least once: a relay killed after the broker confirmed
but before its ``UPDATE`` committed publishes the row again, and consumers'
inboxes absorb the copy. Nothing committed is ever lost: a process killed
between commit and publish leaves the row pending for the next relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel

from shared import db, metrics
from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from shared.broker.topology import BILLING_EVENTS
from shared.clock import Clock
from shared.db import DbConnection
from shared.logging import get_logger
from shared.shutdown import OUTBOX_FINAL_DRAIN_SECONDS
from shared.waits import wait_set

log = get_logger(__name__)

CHANNEL = "outbox"
_BACKLOG_GAUGE_SECONDS = 1.0
# Stable ids for keyed events: uuid5 in this namespace of "<source>:<type>:<key>".
_ID_NAMESPACE = uuid.UUID("6f1d3a52-8c1e-4f0a-9a57-0b6f1e0c2d41")


_EMIT = (
    "WITH inserted AS (INSERT INTO outbox (id, exchange, routing_key, body)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING id)"
    " SELECT pg_notify($5, current_schema()) FROM inserted"
)


def event_id(source: str, event_type: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_ID_NAMESPACE, f"{source}:{event_type}:{key}")


class Outbox:
    """Writes domain events on one connection, inside its transaction."""

    def __init__(self, conn: DbConnection, *, source: str, clock: Clock) -> None:
        self._conn = conn
        self._source = source
        self._clock = clock

    async def emit(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        *,
        version: int,
        key: str | None = None,
        exchange: str = BILLING_EVENTS,
    ) -> uuid.UUID | None:
        """Record ``event_type`` for publishing; returns its id, or None when an
        event with the same key was already recorded."""
        if not self._conn.is_in_transaction():
            raise RuntimeError("an outbox event is written in its state change's transaction")
        new_id = event_id(self._source, event_type, key) if key else uuid.uuid4()
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data)
        body = {
            "id": str(new_id),
            "type": event_type,
            "schema_version": version,
            "source": self._source,
            "occurred_at": self._clock.now().isoformat(),
            "data": payload,
        }
        # One round trip: the notification is sent for a row inserted, not for
        # a repeat (no row comes out of the insert, so pg_notify is not called).
        inserted = await self._conn.fetch(_EMIT, new_id, exchange, event_type, body, CHANNEL)
        if not inserted:
            return None
        return new_id


class OutboxRelay:
    """Publishes a schema's pending outbox rows; one per service process."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        publisher: Publisher,
        *,
        dsn: str,
        schema: str,
        batch_size: int = 200,
        poll_interval: float = 2.0,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._dsn = dsn
        self._schema = schema
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._backlog_observed_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay:{self._schema}")

    async def stop(self, final_drain: float = OUTBOX_FINAL_DRAIN_SECONDS) -> None:
        """Stop, after one last drain so what committed goes out before shutdown.

        What the last drain cannot publish (the broker is away) stays pending
        for the next relay of this schema: another replica, or this service
        when it starts again.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(final_drain):
                published = await self.drain()
            log.info("outbox_final_drain", schema=self._schema, published=published)
        except Exception as exc:
            log.warning("outbox_final_drain_failed", schema=self._schema, error=repr(exc))
        await self._close_listener()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == self._schema:
            self._wake.set()

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(CHANNEL, self._notified)

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
                self._wake.clear()
                await self.drain()
                backoff = 0.1
                await wait_set(self._wake, self._poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A relay that dies silently loses nothing but delays
                # everything: log, back off, go on.
                log.warning("outbox_relay_failed", schema=self._schema, error=repr(exc))
                await self._close_listener()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def drain(self) -> int:
        """Publish pending rows until none is left; returns how many went out."""
        published = 0
        while True:
            sent, failed = await self._publish_batch()
            published += sent
            if failed:
                raise PublishFailed("broker_unavailable", f"{failed} outbox events not confirmed")
            if sent < self._batch_size:
                break
        # The backlog gauges, at most once a second: under load the relay
        # drains many times a second, a few events each time, and the gauges'
        # query was a round trip per drain. The poll keeps them fresh when idle.
        now = asyncio.get_running_loop().time()
        if now - self._backlog_observed_at >= _BACKLOG_GAUGE_SECONDS:
            self._backlog_observed_at = now
            await self._observe_backlog()
        return published

    async def _publish_batch(self) -> tuple[int, int]:
        async with db.transaction(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT seq, id, exchange, routing_key, body, created_at FROM outbox"
                " WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch_size,
            )
            if not rows:
                return 0, 0
            results = await asyncio.gather(
                *(
                    self._publisher.publish(
                        r["exchange"],
                        r["routing_key"],
                        orjson.dumps(r["body"]),
                        message_id=str(r["id"]),
                        headers={"x-schema-version": r["body"].get("schema_version", 1)},
                    )
                    for r in rows
                ),
                return_exceptions=True,
            )
            done = [r for r, result in zip(rows, results, strict=True) if result is None]
            if done:
                confirmed_at = await conn.fetchval(
                    "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])"
                    " RETURNING now()",
                    [r["seq"] for r in done],
                )
                for r in done:
                    metrics.OUTBOX_PUBLISHED.labels(r["routing_key"]).inc()
                    metrics.OUTBOX_RELAY_LAG_SECONDS.observe(
                        (confirmed_at - r["created_at"]).total_seconds()
                    )
            return len(done), len(rows) - len(done)

    async def _observe_backlog(self) -> None:
        row = await self._pool.fetchrow(
            "SELECT count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS age"
            " FROM outbox WHERE published_at IS NULL"
        )
        if row is not None:
            metrics.OUTBOX_PENDING.labels(self._schema).set(row["pending"])
            metrics.OUTBOX_OLDEST_PENDING_SECONDS.labels(self._schema).set(float(row["age"] or 0))


async def purge_published(pool: asyncpg.Pool[Any], older_than: timedelta) -> int:
    result = await pool.execute(
        "DELETE FROM outbox WHERE published_at < now() - $1::interval", older_than
    )
    return int(result.split()[-1])
