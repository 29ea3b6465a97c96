"""Backfill from Stripe's Events API: every event the ledger lacks, published
as if Stripe had delivered it.

A job pages ``GET /v1/events`` over a window of Stripe's ``created`` (never
more than 30 days back: Stripe lists no older event), newest first with
``starting_after``, through the Stripe call policy (``shared/stripe_calls.py``:
429s and ``Retry-After`` honoured). For each page it asks the ledger which
ids it has; a missing event is published to ``stripe.events`` the way the
gateway publishes a delivery (raw event JSON, routing key = type, message id =
event id, persistent, confirmed), so it enters every consumer's normal path
and each consumer's inbox dedupes it against a late delivery.

Two backfills at once (an operator's and the schedule's, or two replicas)
publish each missing event once: an event is claimed in ``backfilled_events``
before it is published and marked published after the confirm; whoever finds
it claimed counts it as already had. A claim whose publisher died is taken
over after ``reconcile_job_stale_seconds``; until then no job that left an
event to it moves the cursor past it.

The schedule (``BackfillSchedule``) runs on every replica; a Postgres advisory
lock lets one at a time start a job, and the cursor row says when the last
one started, so jobs run once per interval across replicas. Each scheduled
job starts at the stored cursor (minus an overlap) and ends ``grace`` seconds
before now; when it succeeds the cursor moves to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.webhooks.contract import ReconcileJob
from services.webhooks.job_tasks import JobTasks
from services.webhooks.settings import WebhooksSettings
from shared import metrics
from shared.api.caller import Caller
from shared.broker.publisher import Publisher
from shared.broker.topology import STRIPE_EVENTS
from shared.clock import Clock, from_unix, to_unix
from shared.db import DbConnection
from shared.events import EVENT_ID, EVENT_TYPE, EVENT_TYPE_MAX_LENGTH
from shared.logging import get_logger, log_context
from shared.stripe_calls import StripeCalls, stripe_json

log = get_logger(__name__)

CURSOR = "events"
# pg_try_advisory_lock key of the schedule: one replica at a time.
_SCHEDULE_LOCK = "webhooks.reconcile.events"
_CLAIMS_KEPT_DAYS = 31
# At most this long between two looks at the schedule.
_MAX_TICK_SECONDS = 30.0


class BackfillFailed(RuntimeError):
    pass


def job_view(row: asyncpg.Record) -> ReconcileJob:
    return ReconcileJob(
        id=str(row["id"]),
        kind=row["kind"],
        trigger=row["trigger"],
        state=row["state"],
        since=row["since"],
        until=row["until"],
        seen=row["seen"],
        already_had=row["already_had"],
        recovered=row["recovered"],
        repair=row["repair"],
        kinds=row["kinds"],
        checked=row["checked"],
        differing=row["differing"],
        repaired=row["repaired"],
        error=row["error"],
        requested_by=row["requested_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


async def get_job(pool: asyncpg.Pool[Any], job_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM reconcile_jobs WHERE id = $1", uuid.UUID(job_id))


async def create_job(
    conn: DbConnection,
    *,
    trigger: str,
    since: datetime,
    until: datetime,
    caller: Caller | None = None,
    reason: str | None = None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO reconcile_jobs (id, trigger, since, until, requested_by, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        uuid.uuid4(),
        trigger,
        since,
        until,
        caller.user_id if caller is not None else None,
        reason,
    )
    assert row is not None
    return row  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


class Backfills:
    """Starts and runs backfill jobs in this process."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        publisher: Publisher,
        calls: StripeCalls | None,
        settings: WebhooksSettings,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._calls = calls
        self._settings = settings
        self._clock = clock
        self._jobs = JobTasks("backfill")

    @property
    def configured(self) -> bool:
        return self._calls is not None

    def window(self, since: datetime | None, cursor: datetime | None) -> Window:
        """From ``since`` (else the cursor minus the overlap, else as far back as
        Stripe lists), never beyond 30 days, to now minus the grace."""
        now = self._clock.now()
        oldest = now - timedelta(days=self._settings.reconcile_max_lookback_days)
        if since is None and cursor is not None:
            since = cursor - timedelta(seconds=self._settings.reconcile_overlap_seconds)
        start = max(since, oldest) if since is not None else oldest
        end = now - timedelta(seconds=self._settings.reconcile_grace_seconds)
        return Window(since=min(start, end), until=end)

    async def cursor(self) -> datetime | None:
        value: datetime | None = await self._pool.fetchval(
            "SELECT checked_until FROM reconcile_cursor WHERE name = $1", CURSOR
        )
        return value

    def start(self, job_id: str) -> None:
        """Run the job in the background of this process."""
        self._jobs.start(job_id, self.run(job_id))

    async def stop(self) -> None:
        await self._jobs.stop()

    async def run(self, job_id: str) -> None:
        with log_context(reconcile_job=job_id):
            row = await self._pool.fetchrow(
                "UPDATE reconcile_jobs SET state = 'running', started_at = now(),"
                " heartbeat_at = now() WHERE id = $1 AND state = 'queued' RETURNING *",
                uuid.UUID(job_id),
            )
            if row is None:
                return  # another replica took it, or it ended already
            trigger: str = row["trigger"]
            try:
                elsewhere = await self._page_through(row)
                if await self._still_publishing(elsewhere):
                    # Left to a backfill that may have died with its replica:
                    # the cursor stays, so a later run takes them over once
                    # their claims are stale instead of starting after them.
                    log.warning("backfill_cursor_held", claimed_elsewhere=len(elsewhere))
                else:
                    await self._advance_cursor(row["since"], row["until"])
            except asyncio.CancelledError:
                await self._end(job_id, "failed", "interrupted: the service stopped")
                metrics.RECONCILE_JOBS.labels(trigger, "failed").inc()
                raise
            except Exception as exc:
                log.error("backfill_failed", error=repr(exc))
                await self._end(job_id, "failed", f"{type(exc).__name__}: {exc}"[:2000])
                metrics.RECONCILE_JOBS.labels(trigger, "failed").inc()
                return
            await self._end(job_id, "succeeded", None)
            metrics.RECONCILE_JOBS.labels(trigger, "succeeded").inc()
            log.info("backfill_done", since=row["since"].isoformat())

    async def _end(self, job_id: str, state: str, error: str | None) -> None:
        # Shielded: a cancelled job still says how it ended.
        await asyncio.shield(
            self._pool.execute(
                "UPDATE reconcile_jobs SET state = $2, error = $3, finished_at = now()"
                " WHERE id = $1",
                uuid.UUID(job_id),
                state,
                error,
            )
        )

    async def _advance_cursor(self, since: datetime, until: datetime) -> None:
        """Move the cursor to ``until`` when the window left no hole behind it:
        it started at or before the cursor, or as far back as Stripe lists."""
        oldest = self._clock.now() - timedelta(days=self._settings.reconcile_max_lookback_days)
        await self._pool.execute(
            "UPDATE reconcile_cursor SET checked_until = $3, updated_at = now()"
            " WHERE name = $1 AND $2 <= checked_until AND checked_until < $3",
            CURSOR,
            since,
            until,
        )
        if since <= oldest + timedelta(minutes=5):
            # Whatever the cursor says: a cursor older than what Stripe lists
            # (the first run failed, no backfill for weeks) would otherwise
            # never be reached by a window again and stay behind for good.
            await self._pool.execute(
                "INSERT INTO reconcile_cursor AS c (name, checked_until) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET checked_until = EXCLUDED.checked_until,"
                " updated_at = now() WHERE c.checked_until < EXCLUDED.checked_until",
                CURSOR,
                until,
            )
        checked = await self.cursor()
        if checked is not None:
            metrics.RECONCILE_CHECKED_UNTIL_SECONDS.set(checked.timestamp())

    async def _still_publishing(self, event_ids: list[str]) -> bool:
        """Whether an event this job left to another backfill is not published yet."""
        if not event_ids:
            return False
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM backfilled_events"
                " WHERE event_id = ANY($1::text[]) AND state = 'publishing')",
                event_ids,
            )
        )

    async def _page_through(self, job: asyncpg.Record) -> list[str]:
        """Recover what the window lacks; the ids left to another backfill's claim."""
        elsewhere: list[str] = []
        if self._calls is None:
            raise BackfillFailed("no Stripe configured (STRIPE_SECRET_KEY)")
        calls = self._calls
        job_id: uuid.UUID = job["id"]
        params: dict[str, Any] = {
            "created": {"gte": to_unix(job["since"]), "lte": to_unix(job["until"])},
            "limit": self._settings.reconcile_page_size,
        }
        while True:
            page = stripe_json(
                await calls.call(
                    "list events",
                    lambda c: c.v1.events.list_async(params=dict(params)),  # type: ignore[arg-type]
                )
            )
            events: list[dict[str, Any]] = [e for e in page.get("data", []) if _is_event(e)]
            recovered = await self._recover(job_id, events, elsewhere)
            await self._pool.execute(
                "UPDATE reconcile_jobs SET seen = seen + $2, already_had = already_had + $3,"
                " recovered = recovered + $4, heartbeat_at = now() WHERE id = $1",
                job_id,
                len(events),
                len(events) - recovered,
                recovered,
            )
            metrics.RECONCILE_EVENTS.labels("recovered").inc(recovered)
            metrics.RECONCILE_EVENTS.labels("already_had").inc(len(events) - recovered)
            if not page.get("has_more") or not page.get("data"):
                return elsewhere
            params["starting_after"] = page["data"][-1]["id"]

    async def _recover(
        self, job_id: uuid.UUID, events: list[dict[str, Any]], elsewhere: list[str]
    ) -> int:
        """Publish the events of one page the ledger lacks; how many. Those
        another backfill claimed are added to ``elsewhere``."""
        if not events:
            return 0
        ids = [e["id"] for e in events]
        had = {
            r["id"] for r in await self._pool.fetch("SELECT id FROM events WHERE id = ANY($1)", ids)
        }
        missing = [e for e in events if e["id"] not in had]
        if not missing:
            return 0
        stale = timedelta(seconds=self._settings.reconcile_job_stale_seconds)
        claimed = {
            r["event_id"]
            for r in await self._pool.fetch(
                """
                INSERT INTO backfilled_events AS b (event_id, job_id, state, claimed_at)
                SELECT unnest($1::text[]), $2, 'publishing', now()
                ON CONFLICT (event_id) DO UPDATE SET job_id = EXCLUDED.job_id,
                    claimed_at = EXCLUDED.claimed_at
                WHERE b.state = 'publishing' AND b.claimed_at < now() - $3::interval
                RETURNING event_id
                """,
                [e["id"] for e in missing],
                job_id,
                stale,
            )
        }
        recovered = 0
        for event in missing:
            if event["id"] not in claimed:
                elsewhere.append(event["id"])  # another backfill has it
                continue
            try:
                await self._publisher.publish(
                    STRIPE_EVENTS,
                    event["type"],
                    orjson.dumps(event),
                    message_id=event["id"],
                    headers={"x-backfilled": str(job_id)},
                )
            except BaseException:
                # Unclaim what this job will not publish, so the next one does.
                unsent = [e["id"] for e in missing if e["id"] in claimed]
                await asyncio.shield(
                    self._pool.execute(
                        "DELETE FROM backfilled_events WHERE event_id = ANY($1::text[])"
                        " AND job_id = $2 AND state = 'publishing'",
                        unsent,
                        job_id,
                    )
                )
                raise
            await self._pool.execute(
                "UPDATE backfilled_events SET state = 'published', published_at = now()"
                " WHERE event_id = $1",
                event["id"],
            )
            claimed.discard(event["id"])
            recovered += 1
            log.info(
                "event_recovered",
                event_id=event["id"],
                event_type=event["type"],
                created=from_unix(int(event["created"])).isoformat(),
            )
        return recovered


def _is_event(value: Any) -> bool:
    """What the gateway would accept as a delivery; anything else is left out
    (logged), as the gateway would refuse it."""
    ok = (
        isinstance(value, dict)
        and value.get("object") == "event"
        and isinstance(value.get("id"), str)
        and EVENT_ID.fullmatch(value["id"]) is not None
        and isinstance(value.get("type"), str)
        and len(value["type"]) <= EVENT_TYPE_MAX_LENGTH
        and EVENT_TYPE.fullmatch(value["type"]) is not None
        and isinstance(value.get("created"), int)
    )
    if not ok:
        log.warning("backfill_skipped_not_an_event", value=repr(value)[:200])
    return ok


class BackfillSchedule:
    """Every ``reconcile_interval_seconds``, one backfill across all replicas."""

    def __init__(
        self, pool: asyncpg.Pool[Any], backfills: Backfills, settings: WebhooksSettings
    ) -> None:
        self._pool = pool
        self._backfills = backfills
        self._interval = settings.reconcile_interval_seconds
        self._stale = timedelta(seconds=settings.reconcile_job_stale_seconds)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="backfill-schedule")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backfill_schedule_failed", error=repr(exc))
            await asyncio.sleep(min(self._interval, _MAX_TICK_SECONDS))

    async def tick(self) -> str | None:
        """Start and run a due backfill if no other replica is; its job id."""
        await self._pool.execute(
            "UPDATE reconcile_jobs SET state = 'failed', finished_at = now(),"
            " error = 'abandoned: its replica stopped before it ended'"
            " WHERE state IN ('queued', 'running')"
            " AND COALESCE(heartbeat_at, created_at) < now() - $1::interval",
            self._stale,
        )
        # Claims older than what Stripe lists can never matter again.
        await self._pool.execute(
            "DELETE FROM backfilled_events WHERE claimed_at < now() - $1::interval",
            timedelta(days=_CLAIMS_KEPT_DAYS),
        )
        checked = await self._backfills.cursor()
        if checked is not None:
            # Every replica exports it, not only the one that ran the last job.
            metrics.RECONCILE_CHECKED_UNTIL_SECONDS.set(checked.timestamp())
        if not self._backfills.configured:
            return None
        async with self._pool.acquire() as conn:
            # A session lock, held on this connection while the job runs.
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _SCHEDULE_LOCK):
                return None
            try:
                job_id = await self._due_job(conn)
                if job_id is not None:
                    await self._backfills.run(job_id)
                return job_id
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _SCHEDULE_LOCK)

    async def _due_job(self, conn: DbConnection) -> str | None:
        async with conn.transaction():
            last = await conn.fetchrow(
                "SELECT checked_until, last_scheduled_at,"
                " last_scheduled_at > now() - $2::interval AS recent"
                " FROM reconcile_cursor WHERE name = $1",
                CURSOR,
                timedelta(seconds=self._interval),
            )
            if last is not None and last["recent"]:
                return None
            window = self._backfills.window(None, last["checked_until"] if last else None)
            job = await create_job(conn, trigger="schedule", since=window.since, until=window.until)
            if last is None:
                # No cursor yet: the row exists from now on, its start as far
                # back as this first job looks (moved on when the job succeeds).
                await conn.execute(
                    "INSERT INTO reconcile_cursor (name, checked_until, last_scheduled_at)"
                    " VALUES ($1, $2, now())",
                    CURSOR,
                    window.since,
                )
            else:
                await conn.execute(
                    "UPDATE reconcile_cursor SET last_scheduled_at = now() WHERE name = $1",
                    CURSOR,
                )
        return str(job["id"])
