"""Attempt outcomes written many to a transaction, on the real database: the
writes that end together share one transaction, and a write that fails takes
no other down with it (the batch is written again one by one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Counter

from services.retry.app import MIGRATIONS, SCHEMA
from services.retry.outcomes import OutcomeWriter
from shared.counting import count
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from tests.support import env


@pytest.fixture
async def pool(clean_state: None) -> AsyncIterator[asyncpg.Pool[Any]]:
    await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)
    created = await create_pool(env.DATABASE_URL, SCHEMA, min_size=1, max_size=4)
    async with created.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS outcome_probe (n int PRIMARY KEY, xid xid8)")
        await conn.execute("TRUNCATE outcome_probe")
    yield created
    async with created.acquire() as conn:
        await conn.execute("DROP TABLE outcome_probe")
    await created.close()


def _insert(n: int) -> Any:
    async def write(conn: Any) -> int:
        await conn.execute(
            "INSERT INTO outcome_probe (n, xid) VALUES ($1, pg_current_xact_id())", n
        )
        return n

    return write


async def _rows(pool: asyncpg.Pool[Any]) -> dict[int, int]:
    rows = await pool.fetch("SELECT n, xid::text::bigint AS xid FROM outcome_probe")
    return {r["n"]: r["xid"] for r in rows}


async def test_outcomes_that_end_together_share_a_transaction(pool: asyncpg.Pool[Any]) -> None:
    writer = OutcomeWriter(pool, max_batch=10, linger=0.5)
    results = await asyncio.gather(*(writer.run(_insert(n)) for n in range(4)))
    assert results == [0, 1, 2, 3]
    written = await _rows(pool)
    assert sorted(written) == [0, 1, 2, 3]
    assert len(set(written.values())) == 1, written


async def test_a_failing_outcome_fails_alone(pool: asyncpg.Pool[Any]) -> None:
    writer = OutcomeWriter(pool, max_batch=10, linger=0.5)

    async def broken(conn: Any) -> None:
        await conn.execute("INSERT INTO outcome_probe (n) VALUES (NULL)")

    results = await asyncio.gather(
        writer.run(_insert(1)), writer.run(broken), writer.run(_insert(2)), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], asyncpg.NotNullViolationError)
    written = await _rows(pool)
    # Written again one by one, each in its own transaction.
    assert sorted(written) == [1, 2]
    assert written[1] != written[2]


async def test_a_full_batch_does_not_wait_for_the_linger(pool: asyncpg.Pool[Any]) -> None:
    writer = OutcomeWriter(pool, max_batch=2, linger=30.0)
    async with asyncio.timeout(10):
        done = await asyncio.gather(writer.run(_insert(1)), writer.run(_insert(2)))
    assert list(done) == [1, 2]


async def test_a_failed_batch_counts_each_outcome_once(pool: asyncpg.Pool[Any]) -> None:
    # The batch's shared transaction fails; its good outcomes are written again
    # alone. What they count must be counted by the commits that kept them.
    registry = CollectorRegistry()
    written = Counter("probe_written", "probe", registry=registry)
    writer = OutcomeWriter(pool, max_batch=10, linger=0.5)

    def counted(n: int) -> Any:
        insert = _insert(n)

        async def write(conn: Any) -> int:
            count(written)
            return int(await insert(conn))

        return write

    async def broken(conn: Any) -> None:
        count(written)
        await conn.execute("INSERT INTO outcome_probe (n) VALUES (NULL)")

    results = await asyncio.gather(
        writer.run(counted(1)), writer.run(broken), writer.run(counted(2)), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 2
    assert sorted(await _rows(pool)) == [1, 2]
    assert registry.get_sample_value("probe_written_total") == 2
