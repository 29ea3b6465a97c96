"""Counters bumped inside a transaction count only what committed
(``shared.counting``), checked against a real Postgres transaction, including
one that fails at its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Counter

from shared import db
from shared.counting import count, on_commit
from tests.support import env


@pytest.fixture
def counter() -> Counter:
    # A registry of its own per test: each starts from zero.
    return Counter("probe", "probe", registry=CollectorRegistry())


def _value(counter: Counter) -> float:
    (metric,) = counter.collect()
    return next(s.value for s in metric.samples if s.name == "probe_total")


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool[Any]]:
    created = await db.create_pool(env.DATABASE_URL, "public", min_size=1, max_size=2)
    async with created.acquire() as conn:
        # Checked at commit: the commit itself fails on a duplicate.
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS counting_probe (n int,"
            " UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
        )
        await conn.execute("TRUNCATE counting_probe")
    yield created
    async with created.acquire() as conn:
        await conn.execute("DROP TABLE counting_probe")
    await created.close()


def test_outside_a_transaction_a_bump_is_made_at_once(counter: Counter) -> None:
    count(counter, 3)
    assert _value(counter) == 3


def test_inside_a_scope_a_bump_waits_for_its_end(counter: Counter) -> None:
    with on_commit():
        count(counter)
        assert _value(counter) == 0
    assert _value(counter) == 1


def test_a_scope_ended_by_an_error_drops_its_bumps(counter: Counter) -> None:
    with pytest.raises(ValueError), on_commit():
        count(counter)
        raise ValueError("rolled back")
    assert _value(counter) == 0


def test_an_inner_scope_counts_only_if_the_outer_one_ends_well(counter: Counter) -> None:
    with pytest.raises(ValueError), on_commit():
        with on_commit():
            count(counter)
        assert _value(counter) == 0
        raise ValueError("outer rolled back")
    assert _value(counter) == 0

    with on_commit():
        with pytest.raises(ValueError), on_commit():
            count(counter, 5)
            raise ValueError("savepoint rolled back")
        count(counter)
    assert _value(counter) == 1


async def test_a_task_started_in_a_scope_counts_on_its_own(counter: Counter) -> None:
    # A task outlives the scope it was started in: its bumps are its own.
    with on_commit():
        later = asyncio.create_task(asyncio.sleep(0.01))
        child = asyncio.create_task(_count_after(later, counter))
    await child
    assert _value(counter) == 1


async def _count_after(first: asyncio.Task[None], counter: Counter) -> None:
    await first
    count(counter)


async def test_a_committed_transaction_counts(pool: asyncpg.Pool[Any], counter: Counter) -> None:
    async with db.transaction(pool) as conn:
        await conn.execute("INSERT INTO counting_probe VALUES (1)")
        count(counter)
        assert _value(counter) == 0
    assert _value(counter) == 1


async def test_a_transaction_failing_at_commit_counts_nothing(
    pool: asyncpg.Pool[Any], counter: Counter
) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction(pool) as conn:
            await conn.execute("INSERT INTO counting_probe VALUES (1), (1)")
            count(counter)
    assert _value(counter) == 0
    assert await pool.fetchval("SELECT count(*) FROM counting_probe") == 0
