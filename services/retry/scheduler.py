"""The dunning scheduler: each replica claims due cases and attempts them.

Nothing waits in memory: the schedule is ``cases.next_attempt_at``, so a
restart loses nothing, and replicas share the work through the claim in
``cases.claim`` (``FOR UPDATE SKIP LOCKED`` plus a lease), so no case is
attempted by two replicas at once. At most ``DUNNING_BATCH_SIZE`` attempts
run at once per replica; as they finish, the loop claims again for the room
they left (once half of it is free), so one slow attempt does not hold the
others back. It polls every ``DUNNING_POLL_SECONDS`` and goes again at once
while it finds all it asked for.
It also repeats end actions a stopped replica left undone and refreshes the
gauges that only the database can answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from aiohttp import web

from services.retry import cases
from services.retry.attempts import Attempts
from services.retry.handlers import schedule_of
from services.retry.settings import RetrySettings
from shared import metrics, runtime
from shared.clock import Clock
from shared.logging import get_logger
from shared.waits import wait_set

log = get_logger(__name__)

_GAUGE_SECONDS = 5.0


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Scheduler:
    def __init__(
        self, pool: Any, attempts: Attempts, clock: Clock, settings: RetrySettings
    ) -> None:
        self._pool = pool
        self._attempts = attempts
        self._clock = clock
        self._settings = settings
        self._lease = timedelta(seconds=settings.dunning_lease_seconds)
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[str]] = set()
        # Claim again once this many attempts of the batch have ended.
        self._refill_at = max(1, settings.dunning_batch_size // 2)
        self._roomy = asyncio.Event()
        self._last_gauges = 0.0

    @property
    def owner(self) -> str:
        return self._attempts.owner

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._room()
            if self._stopping.is_set():
                break
            wanted = self._free()
            try:
                claimed = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A database blip must not end the loop: log, wait, go on.
                log.warning("dunning_tick_failed", error=repr(exc))
                claimed = 0
            if claimed < wanted:
                await wait_set(self._stopping, self._settings.dunning_poll_seconds)

    def _free(self) -> int:
        return self._settings.dunning_batch_size - len(self._in_flight)

    async def _room(self) -> None:
        """Wait until at least half the batch is free to claim again (or a stop)."""
        while self._free() < self._refill_at and not self._stopping.is_set():
            self._roomy.clear()
            await self._roomy.wait()

    def _ended(self, task: asyncio.Task[str]) -> None:
        self._in_flight.discard(task)
        if self._free() >= self._refill_at:
            self._roomy.set()

    async def tick(self) -> int:
        """Claim due cases for the room left and start their attempts; returns how many
        were claimed. The attempts run on, in ``_in_flight`` until they end."""
        free = self._free()
        if free <= 0:
            return 0
        now = self._clock.now()
        async with self._pool.acquire() as conn:
            claimed = await cases.claim(conn, now, self.owner, self._lease, free)
        for case in claimed:
            task = asyncio.create_task(self._attempt(case))
            self._in_flight.add(task)
            task.add_done_callback(self._ended)
        await self._end_actions(now)
        await self._gauges()
        return len(claimed)

    async def _attempt(self, claimed: cases.Claimed) -> str:
        try:
            return await self._attempts.run(claimed)
        except Exception as exc:
            # The case keeps its lease and is attempted again (same number,
            # same key) when the lease ends.
            log.error("dunning_attempt_crashed", invoice=claimed.case.invoice_id, error=repr(exc))
            return "crashed"

    async def _end_actions(self, now: Any) -> None:
        async with self._pool.acquire() as conn:
            due = await cases.end_actions_due(
                conn, now, now - self._lease, self._settings.dunning_batch_size
            )
        for case in due:
            await self._attempts.end_action(case)

    async def _gauges(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_gauges < _GAUGE_SECONDS:
            return
        self._last_gauges = loop.time()
        await refresh_gauges(self._pool, self._clock)

    async def stop_claiming(self) -> None:
        self._stopping.set()
        self._roomy.set()

    async def stop(self, grace: float) -> None:
        """Claim nothing more; attempts under way get ``grace`` seconds to finish."""
        self._stopping.set()
        self._roomy.set()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace)


async def refresh_gauges(pool: Any, clock: Clock) -> None:
    now = clock.now()
    async with pool.acquire() as conn:
        counts = {
            r["state"]: r["n"]
            for r in await conn.fetch("SELECT state, count(*) AS n FROM cases GROUP BY state")
        }
        oldest = await conn.fetchval(
            "SELECT min(next_attempt_at) FROM cases WHERE state = 'open' AND next_attempt_at <= $1",
            now,
        )
    for state in cases.STATES:
        metrics.DUNNING_CASES.labels(state).set(counts.get(state, 0))
    closed = sum(counts.get(s, 0) for s in ("recovered", "canceled", "exhausted"))
    metrics.DUNNING_RECOVERY_RATE.set(counts.get("recovered", 0) / closed if closed else 0.0)
    metrics.DUNNING_OLDEST_DUE_SECONDS.set((now - oldest).total_seconds() if oldest else 0.0)


SCHEDULER = web.AppKey("dunning_scheduler", Scheduler)


def scheduler(settings: RetrySettings) -> runtime.CleanupCtx:
    """Runs the scheduler with the app, when this replica charges (not observe-only)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        calls = app.get(runtime.STRIPE)
        if settings.dunning_observe_only or not settings.dunning_scheduler_enabled or calls is None:
            log.warning(
                "dunning_scheduler_off",
                observe_only=settings.dunning_observe_only,
                enabled=settings.dunning_scheduler_enabled,
                stripe=calls is not None,
            )
            yield
            return
        clock = app[runtime.CLOCK]
        attempts = Attempts(
            app[runtime.POOL],
            calls=calls,
            clock=clock,
            settings=settings,
            schedule=schedule_of(settings),
            owner=replica_name(),
        )
        running = Scheduler(app[runtime.POOL], attempts, clock, settings)
        app[SCHEDULER] = running
        app[runtime.SHUTDOWN].on_begin(running.stop_claiming)
        task = asyncio.create_task(running.run(), name="dunning-scheduler")
        yield
        await running.stop(app[runtime.SHUTDOWN].remaining())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
