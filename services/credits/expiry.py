"""The expiry sweep: grants past their expiry, and what exceeds rollover caps.

Every replica runs it on a timer. Accounts are taken with ``FOR UPDATE SKIP
LOCKED`` on their balance row, in small batches each in its own transaction:
replicas share the work without waiting for one another, an account being
spent right now is simply picked up by the next batch, and no account is
swept twice (its expired grants hold nothing once swept).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web

from services.credits import ledger
from services.credits import metrics as m
from shared import db, runtime
from shared.catalog import Catalog
from shared.clock import Clock
from shared.counting import count
from shared.logging import get_logger

log = get_logger(__name__)

BATCH = 100


async def sweep(
    pool: asyncpg.Pool[Any], clock: Clock, catalog: Catalog, *, batch: int = BATCH
) -> ledger.SweepResult:
    """Sweep until no account holds expired credits (or all left are locked)."""
    result = ledger.SweepResult()
    while True:
        async with db.transaction(pool) as conn:
            now = clock.now()
            accounts = await ledger.accounts_to_sweep(conn, now, batch)
            for account in accounts:
                credit_type = account["credit_type"]
                kind = catalog.credit_types.get(credit_type)
                await ledger.expire_account(
                    conn,
                    account["user_id"],
                    credit_type,
                    now=now,
                    rollover_cap=kind.rollover_cap if kind is not None else 0,
                    result=result,
                )
        result.accounts += len(accounts)
        if len(accounts) < batch:
            break
    m.count(m.EXPIRED, result.expired)
    m.count(m.ROLLED_OVER, result.rolled_over)
    for credit_type, amount in result.rolled_over.items():
        count(m.GRANTED.labels(credit_type, "rollover"), amount)
    return result


def scheduled(interval_seconds: float, catalog: Callable[[], Catalog]) -> runtime.CleanupCtx:
    """Run :func:`sweep` every ``interval_seconds`` while the app runs."""

    async def loop(app: web.Application) -> None:
        while True:
            try:
                done = await sweep(app[runtime.POOL], app[runtime.CLOCK], catalog())
                if done.accounts:
                    log.info(
                        "credits_swept",
                        accounts=done.accounts,
                        expired=done.expired,
                        rolled_over=done.rolled_over,
                    )
            except Exception as exc:
                log.warning("credits_sweep_failed", error=repr(exc))
            await asyncio.sleep(interval_seconds)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name="credits-expiry-sweep")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
